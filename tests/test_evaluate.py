"""The evaluate stage: metrics JSON of a model on one split; undecodable images counted, not fatal.
The metric itself is tested in test_metrics.py."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pyarrow as pa
import torch

from raylib import schemas, storage
from raylib.config import EvalConfig, ModelConfig
from raylib.evaluate import evaluate_split, on_device
from raylib.model import build_model, save_weights


def test_evaluate_split_writes_metrics_and_counts_undecodable_images(tmp_path):
    ids, uris, objects = [], [], []
    for i in range(3):
        image = np.full((64, 80, 3), 90, np.uint8)
        cv2.rectangle(image, (10, 10), (40, 50), (0, 0, 255), -1)
        uri = str(tmp_path / f"im{i}.jpg")
        cv2.imwrite(uri, image)
        ids.append(f"im{i}")
        uris.append(uri)
        objects.append([{"class_id": 0, "x1": 10.0, "y1": 10.0, "x2": 40.0, "y2": 50.0, "difficult": False}])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ids.append("broken")
    uris.append(str(tmp_path / "broken.jpg"))
    objects.append([{"class_id": 1, "x1": 1.0, "y1": 1.0, "x2": 9.0, "y2": 9.0, "difficult": False}])
    storage.write_table(pa.table({"image_id": ids, "uri": uris}), str(tmp_path / "pool.parquet"))
    labels = pa.table({"image_id": ids + ["other"], "split": ["test"] * 4 + ["train"],
                       "round_added": pa.array([0] * 5, pa.int16()),
                       "objects": pa.array(objects + [[]], pa.list_(schemas.OBJECT))})
    storage.write_table(schemas.check(labels, schemas.LABELS, "labels"), str(tmp_path / "labels.parquet"))
    save_weights(build_model("nano", 2), str(tmp_path / "model.pt"), "nano", ["red", "blue"])

    out = str(tmp_path / "metrics.json")
    metrics = evaluate_split(EvalConfig(), ModelConfig(size="nano", input_size=64), str(tmp_path / "model.pt"),
                             str(tmp_path / "labels.parquet"), str(tmp_path / "pool.parquet"), "test", out,
                             ["red", "blue"], max_pixels=1_000_000)
    assert json.loads(storage.read_text(out)) == metrics
    assert metrics["split"] == "test" and metrics["weights"] == str(tmp_path / "model.pt")
    assert metrics["n_images"] == 3 and metrics["n_failed"] == 1 and metrics["failed_images"] == ["broken"]
    # The broken image's object is left out with it: "blue" has no ground truth left -> undefined.
    assert metrics["n_gt_per_class"] == {"red": 3, "blue": 0}
    assert metrics["ap50_per_class"]["blue"] is None
    assert 0.0 <= metrics["ap50_per_class"]["red"] <= 1.0 and metrics["map50"] == metrics["ap50_per_class"]["red"]


def _where(tag: str) -> tuple[str, int, int]:
    return tag, os.getpid(), torch.get_num_threads()


def test_on_device_runs_each_split_in_its_own_ray_task_with_its_cpus_as_threads(ray_session):
    # The driver gets results only: the work runs in Ray workers (not this process), in call order,
    # each with eval.num_cpus torch threads (Ray's default in a worker would be floor(num_cpus)).
    results = on_device(EvalConfig(num_cpus=2), [(_where, ("perf_test",)), (_where, ("test",)), (_where, ("val",))])
    assert [tag for tag, _, _ in results] == ["perf_test", "test", "val"]
    assert all(pid != os.getpid() for _, pid, _ in results)
    assert {threads for _, _, threads in results} == {2}
    results = on_device(EvalConfig(num_cpus=0.5), [(_where, ("perf_test",))])
    assert results[0][2] == 1
