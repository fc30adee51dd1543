"""VOC AP50 per class and mAP50 (seed 3.3, eq. 3.4-3.5), and the model run that produces detections.

Definition (Pascal VOC 2010+, all-point interpolation):
  * per class, detections are ranked by score (highest first; ties keep their input order);
  * a detection is a true positive when its best-overlapping ground-truth box of the same class in the
    same image has IoU >= 0.5 and was not matched before; a second detection of the same object is a
    false positive (duplicate);
  * `difficult` ground truth is ignored: a detection whose best match is a difficult box is neither TP
    nor FP, and difficult boxes don't count in recall (VOC's rule);
  * AP = sum_n (R_{n+1} - R_n) * P_interp(R_{n+1}), P_interp(R) = max_{R' >= R} P(R') (area under the
    interpolated precision/recall curve, computed by `yolox.evaluators.voc_eval.voc_ap`);
  * mAP50 = the mean of AP over classes that have at least one non-difficult ground-truth box. A class
    without ground truth has AP `None` ("undefined", written as JSON null) and is left out of the mean:
    its AP would be 0 or 1 by convention only, and either would move mAP for no reason.

Boxes are continuous pixel coordinates: IoU = intersection / union of (x2 - x1) * (y2 - y1) areas, without
VOC's "+1 pixel" convention (our boxes are floats end to end, see raylib/voc.py). At IoU 0.5 the
difference is immaterial for objects larger than a few pixels.

Score of a detection for ranking = objectness x class probability, as YOLOX ranks them.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from yolox.evaluators.voc_eval import voc_ap

from raylib import schemas, storage
from raylib.config import Config
from raylib.model import ImageDetections, decode, letterbox, load_model, to_input

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
# YOLOX's own VOC evaluation settings (exps/example/yolox_voc: test_conf 0.01, nmsthre 0.65).
EVAL_CANDIDATE_CONF = 0.01
EVAL_NMS_THRESHOLD = 0.65
EVAL_MAX_DETECTIONS = 100
MAX_FAILED_LISTED = 20  # failed image ids written to the metrics JSON (the count is always complete)

DETECTION_COLUMNS = ["image_id", "class_id", "score", "x1", "y1", "x2", "y2"]
GROUND_TRUTH_COLUMNS = ["image_id", "class_id", "x1", "y1", "x2", "y2", "difficult"]


# ------------------------------------------------------------------------------------------ metric


def ap50_per_class(detections: pd.DataFrame, ground_truth: pd.DataFrame, num_classes: int,
                   iou_threshold: float = IOU_THRESHOLD) -> dict:
    """VOC AP per class at IoU >= `iou_threshold` (see the module docstring for the exact rule).

    detections: image_id, class_id, score, x1, y1, x2, y2 (one row per detection).
    ground_truth: image_id, class_id, x1, y1, x2, y2, difficult (one row per object).
    Returns {"ap50": [AP or None per class], "map50": float (NaN if no class has ground truth),
    "n_gt": [non-difficult ground-truth boxes per class]}.
    """
    _require_columns(detections, DETECTION_COLUMNS, "detections")
    _require_columns(ground_truth, GROUND_TRUTH_COLUMNS, "ground_truth")
    bad = ground_truth[(ground_truth["class_id"] < 0) | (ground_truth["class_id"] >= num_classes)]
    if len(bad):
        raise ValueError(f"ground truth has class ids outside [0, {num_classes}): {sorted(set(bad['class_id']))[:5]}")
    ap50: list[float | None] = []
    n_gt: list[int] = []
    for class_id in range(num_classes):
        gt = ground_truth[ground_truth["class_id"] == class_id]
        dets = detections[detections["class_id"] == class_id]
        n_positive = int((~gt["difficult"].astype(bool)).sum())
        n_gt.append(n_positive)
        if n_positive == 0:
            ap50.append(None)
            continue
        is_tp = match_detections(dets, gt, iou_threshold)
        ap50.append(average_precision(is_tp, n_positive))
    defined = [ap for ap in ap50 if ap is not None]
    return {"ap50": ap50, "map50": float(np.mean(defined)) if defined else math.nan, "n_gt": n_gt}


def match_detections(detections: pd.DataFrame, ground_truth: pd.DataFrame,
                     iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Greedy VOC matching of one class: returns a bool TP flag per counted detection, in rank order.

    Detections matched to a difficult box are dropped from the result (neither TP nor FP).
    """
    order = np.argsort(-detections["score"].to_numpy(dtype=np.float64), kind="stable")
    image_ids = detections["image_id"].to_numpy()[order]
    boxes = detections[list(schemas.BOX)].to_numpy(dtype=np.float64)[order]

    by_image: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for image_id, group in ground_truth.groupby("image_id", sort=False):
        by_image[image_id] = (
            group[list(schemas.BOX)].to_numpy(dtype=np.float64),
            group["difficult"].to_numpy(dtype=bool),
            np.zeros(len(group), dtype=bool),  # matched already
        )
    flags: list[bool] = []
    for image_id, box in zip(image_ids, boxes):
        if image_id not in by_image:
            flags.append(False)
            continue
        gt_boxes, difficult, matched = by_image[image_id]
        overlaps = box_iou(box, gt_boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] < iou_threshold:
            flags.append(False)
        elif difficult[best]:
            continue  # ignored, as in VOC
        elif not matched[best]:
            matched[best] = True
            flags.append(True)
        else:
            flags.append(False)  # duplicate detection of an object already found
    return np.asarray(flags, dtype=bool)


def average_precision(is_tp: np.ndarray, n_positive: int) -> float:
    """All-point interpolated AP (eq. 3.4-3.5) of ranked TP flags against `n_positive` objects."""
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    recall = tp / n_positive
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return float(voc_ap(recall, precision, use_07_metric=False))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box against [n, 4] boxes, continuous coordinates (no +1)."""
    ix1 = np.maximum(boxes[:, 0], box[0])
    iy1 = np.maximum(boxes[:, 1], box[1])
    ix2 = np.minimum(boxes[:, 2], box[2])
    iy2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.finfo(np.float64).eps)


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {columns}")


def labels_to_ground_truth(labels: pa.Table) -> pd.DataFrame:
    """LABELS rows (image_id, objects list) -> one ground-truth row per object.

    Images without objects produce no rows; their detections are all false positives."""
    image_ids, objects = labels.column("image_id").to_pylist(), labels.column("objects").to_pylist()
    rows = [{"image_id": image_id, **obj} for image_id, objs in zip(image_ids, objects) for obj in objs or []]
    frame = pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)
    return frame.astype({"class_id": np.int64, "x1": np.float64, "y1": np.float64, "x2": np.float64,
                         "y2": np.float64, "difficult": bool})


# ------------------------------------------------------------------------------------ model run


def read_image(uri: str) -> np.ndarray:
    """Decode an image file (local path or s3://) into BGR uint8 HWC, as stored (EXIF orientation
    ignored, so pixel coordinates match annotations made on the stored pixels). Raises ValueError."""
    data = np.frombuffer(storage.read_bytes(uri), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise ValueError(f"image '{uri}' could not be decoded (not an image, or truncated)")
    return image


def _read_or_none(uri: str) -> np.ndarray | None:
    try:
        return read_image(uri)
    except (OSError, ValueError, cv2.error) as exc:
        log.warning("%s; counted as failed, skipped", exc)
        return None


@torch.no_grad()
def predict(model: torch.nn.Module, images: Sequence[np.ndarray], input_size: int,
            device: torch.device | str = "cpu") -> list[ImageDetections]:
    """Run `model` (eval mode) on BGR images letterboxed to `input_size`; boxes in original pixels."""
    if not images:
        return []
    canvases, ratios = zip(*(letterbox(image, input_size) for image in images))
    batch = to_input(torch.from_numpy(np.stack(canvases)).to(device))
    outputs = model(batch)
    return decode(outputs, list(ratios), [image.shape[:2] for image in images],
                  candidate_conf=EVAL_CANDIDATE_CONF, nms_threshold=EVAL_NMS_THRESHOLD,
                  max_detections=EVAL_MAX_DETECTIONS)


def detect_images(model: torch.nn.Module, items: Iterable[tuple[str, str]], input_size: int,
                  batch_size: int = 16, device: torch.device | str = "cpu",
                  read_threads: int = 4) -> tuple[pd.DataFrame, list[str]]:
    """Detections of every (image_id, uri) in `items`, reading the next batch while one is computed.

    Returns (detections frame with DETECTION_COLUMNS, ids of images that failed to decode)."""
    was_training = model.training
    model.eval()
    frames: list[pd.DataFrame] = []
    failed: list[str] = []
    batches = _chunks(list(items), batch_size)
    with ThreadPoolExecutor(max_workers=read_threads) as pool:
        pending = [pool.submit(_read_or_none, uri) for _, uri in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            images = [future.result() for future in pending]
            if index + 1 < len(batches):
                pending = [pool.submit(_read_or_none, uri) for _, uri in batches[index + 1]]
            ok = [(image_id, image) for (image_id, _), image in zip(batch, images) if image is not None]
            failed += [image_id for (image_id, _), image in zip(batch, images) if image is None]
            results = predict(model, [image for _, image in ok], input_size, device)
            frames += [_frame(image_id, dets) for (image_id, _), dets in zip(ok, results)]
    model.train(was_training)
    detections = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DETECTION_COLUMNS)
    return detections, failed


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _frame(image_id: str, dets: ImageDetections) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [image_id] * len(dets.class_id),
        "class_id": dets.class_id.astype(np.int64),
        "score": (dets.cls_conf * dets.loc_conf).astype(np.float64),
        "x1": dets.boxes[:, 0], "y1": dets.boxes[:, 1], "x2": dets.boxes[:, 2], "y2": dets.boxes[:, 3],
    })


# ------------------------------------------------------------------------------------ the stage


def split_items(labels_uri: str, manifest_uri: str, split: str) -> tuple[pa.Table, list[tuple[str, str]], list[str]]:
    """Labels of `split` and their (image_id, uri) from the manifest; ids missing from the manifest."""
    labels = schemas.check(storage.read_table(labels_uri), schemas.LABELS, f"labels '{labels_uri}'")
    labels = labels.filter(pc.equal(labels.column("split"), split))
    ids = labels.column("image_id").to_pylist()
    uris = manifest_uris(manifest_uri, ids)
    missing = [image_id for image_id in ids if image_id not in uris]
    return labels, [(image_id, uris[image_id]) for image_id in ids if image_id in uris], missing


def manifest_uris(manifest_uri: str, image_ids: list[str]) -> dict[str, str]:
    """image_id -> uri for `image_ids`, reading only matching rows of the (possibly huge) manifest."""
    if not image_ids:
        return {}
    fs, path = storage.resolve(manifest_uri)
    table = pq.read_table(path, filesystem=fs, columns=["image_id", "uri"],
                          filters=pc.field("image_id").isin(pa.array(sorted(set(image_ids)), pa.string())))
    return dict(zip(table.column("image_id").to_pylist(), table.column("uri").to_pylist()))


def evaluate_split(cfg: Config, weights_uri: str, labels_uri: str, manifest_uri: str, split: str,
                   out_uri: str, class_names: list[str]) -> dict:
    """AP50 of `weights_uri` on the labelled images of `split`; writes and returns the metrics JSON.

    Images that can't be read or decoded (and labelled ids missing from the manifest) are counted in
    `n_failed`, listed (first 20) in `failed_images`, and their ground truth is left out: the metric
    describes the model on the images it could see. On a GPU cluster (`train.use_gpu` with Ray up) the
    model runs in a Ray task holding one GPU; otherwise in this process.
    """
    labels, items, missing = split_items(labels_uri, manifest_uri, split)
    if missing:
        log.warning("%d %s image(s) are not in manifest %s, e.g. %s; counted as failed",
                    len(missing), split, manifest_uri, missing[:3])
    detections, unreadable = _run_detection(cfg, weights_uri, items, len(class_names))
    failed = missing + unreadable
    if failed:
        labels = labels.filter(pc.invert(pc.is_in(labels.column("image_id"), pa.array(failed, pa.string()))))
    result = ap50_per_class(detections, labels_to_ground_truth(labels), len(class_names))
    metrics = {
        "map50": None if math.isnan(result["map50"]) else result["map50"],
        "ap50_per_class": dict(zip(class_names, result["ap50"])),
        "n_gt_per_class": dict(zip(class_names, result["n_gt"])),
        "n_images": len(items) - len(unreadable),  # images the model ran on
        "n_failed": len(failed),
        "failed_images": failed[:MAX_FAILED_LISTED],
        "n_detections": len(detections),
        "split": split,
        "weights": weights_uri,
    }
    storage.write_text(out_uri, json.dumps(metrics, indent=2))
    return metrics


def _run_detection(cfg: Config, weights_uri: str, items: list[tuple[str, str]],
                   num_classes: int) -> tuple[pd.DataFrame, list[str]]:
    import ray

    if cfg.train.use_gpu and ray.is_initialized():
        task = ray.remote(num_gpus=1, num_cpus=1)(_detect_with_weights)
        return ray.get(task.remote(cfg, weights_uri, items, num_classes))
    return _detect_with_weights(cfg, weights_uri, items, num_classes)


def _detect_with_weights(cfg: Config, weights_uri: str, items: list[tuple[str, str]],
                         num_classes: int) -> tuple[pd.DataFrame, list[str]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg.model.size, num_classes, weights_uri).to(device).eval()
    return detect_images(model, items, cfg.model.input_size, cfg.score.batch_size, device)


def perf_test_labels(cfg: Config, voc_root: str, test_manifest: str, class_names: list[str]) -> str:
    """Ground truth of the fixed performance test set (`split` perf_test), written once under the run
    root (the same file the loop writes), from the VOC annotations of the test manifest's images."""
    from raylib import pool, voc

    uri = storage.join(cfg.run_root, "labels_perf_test.parquet")
    if storage.exists(uri):
        return uri
    ids = [i for batch in pool.iter_manifest(test_manifest, 65536) for i in batch.column("image_id").to_pylist()]
    table, errors = voc.read_voc_labels(voc_root, ids, class_names)
    for image_id, message in errors:
        log.warning("performance test image %s left out: %s", image_id, message)
    n = table.num_rows
    labels = pa.table({"image_id": table.column("image_id"), "split": pa.array(["perf_test"] * n, pa.string()),
                       "round_added": pa.array([0] * n, pa.int16()), "objects": table.column("objects")})
    storage.write_table(schemas.check(labels, schemas.LABELS, "perf_test labels"), uri)
    return uri
