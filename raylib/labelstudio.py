"""Pre-annotations as Label Studio tasks with predictions (import them into a project whose labelling
config has `<Image name="image" value="$image"/>` and `<RectangleLabels name="label" toName="image">`
with the class names as labels). Boxes are percentages of the image, as Label Studio stores them.

`data.image` is the image's URI from the pool manifest: an `s3://` URI is served by a Label Studio
project with that bucket as cloud storage; a local path needs Label Studio's local-files serving.
"""
from __future__ import annotations

import pandas as pd

FROM_NAME, TO_NAME = "label", "image"


def detections_to_tasks(images: list[dict], detections: pd.DataFrame, class_names: list[str],
                        model_version: str) -> list[dict]:
    """One task per image (dicts with image_id, uri, width, height) with one prediction holding its
    detections (columns image_id, class_id, score, x1, y1, x2, y2), most confident first. An image
    without a known size gets no boxes: percentages need the size."""
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    tasks = []
    for image in images:
        width, height = int(image["width"] or 0), int(image["height"] or 0)
        rows = by_image.get(image["image_id"])
        results = []
        if rows is not None and width > 0 and height > 0:
            for n, row in enumerate(rows.sort_values("score", ascending=False).itertuples(index=False)):
                results.append({
                    "id": f"{n}", "type": "rectanglelabels", "from_name": FROM_NAME, "to_name": TO_NAME,
                    "original_width": width, "original_height": height, "image_rotation": 0,
                    "score": float(row.score),
                    "value": {"x": 100.0 * row.x1 / width, "y": 100.0 * row.y1 / height,
                              "width": 100.0 * (row.x2 - row.x1) / width, "height": 100.0 * (row.y2 - row.y1) / height,
                              "rotation": 0, "rectanglelabels": [class_names[int(row.class_id)]]},
                })
        scores = [r["score"] for r in results]
        tasks.append({
            "data": {TO_NAME: image["uri"], "image_id": image["image_id"]},
            # The task's score is its least confident box: Label Studio can sort the queue by it.
            "predictions": [{"model_version": model_version, "score": min(scores) if scores else 0.0,
                             "result": results}],
        })
    return tasks
