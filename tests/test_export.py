"""Pre-annotation export: one VOC XML per selected image with every kept detection and its
confidence; COCO JSON alongside; ids that would escape the output folder are refused."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from raylib import schemas, storage
from raylib.export import export_preannotations
from raylib.voc import read_voc

CLASSES = ["cat", "dog"]


def _write(tmp_path, ids_selected, detections):
    manifest = str(tmp_path / "pool.parquet")
    ids = sorted({d[0] for d in detections} | set(ids_selected))
    storage.write_table(schemas.check(pa.table({
        "image_id": ids, "uri": [f"/data/{i}.jpg" for i in ids],
        "width": pa.array([200] * len(ids), pa.int32()), "height": pa.array([100] * len(ids), pa.int32()),
    }), schemas.POOL, "pool"), manifest)
    det = pa.table({
        "round": pa.array([0] * len(detections), pa.int16()),
        "image_id": [d[0] for d in detections], "class_id": pa.array([d[1] for d in detections], pa.int16()),
        "cls_conf": pa.array([d[2] for d in detections], pa.float32()),
        "loc_conf": pa.array([d[3] for d in detections], pa.float32()),
        "score": pa.array([d[2] * d[3] for d in detections], pa.float32()),
        **{name: pa.array([d[4][i] for d in detections], pa.float32()) for i, name in enumerate(schemas.BOX)},
    })
    storage.write_table(schemas.check(det, schemas.DETECTIONS, "detections"), str(tmp_path / "det" / "part-0.parquet"))
    sel = pa.table({"round": pa.array([0] * len(ids_selected), pa.int16()), "image_id": ids_selected,
                    "class_id": pa.array([0] * len(ids_selected), pa.int16()),
                    "score": pa.array([0.3] * len(ids_selected), pa.float32()),
                    "rank": pa.array(range(len(ids_selected)), pa.int32())})
    storage.write_table(schemas.check(sel, schemas.SELECTION, "selection"), str(tmp_path / "sel.parquet"))
    return manifest


def test_xml_per_selected_image_with_confidences(tmp_path):
    detections = [("a", 0, 0.9, 0.8, (10, 10, 50, 40)), ("a", 1, 0.5, 0.6, (60, 20, 120, 90)),
                  ("b", 1, 0.7, 0.7, (0, 0, 30, 30)), ("not_selected", 0, 0.9, 0.9, (1, 1, 5, 5))]
    manifest = _write(tmp_path, ["a", "b", "empty"], detections)
    out = str(tmp_path / "pre")
    n = export_preannotations(str(tmp_path / "sel.parquet"), str(tmp_path / "det"), manifest, CLASSES, out, 0)
    assert n == 3 and sorted(os.listdir(out)) == ["a.xml", "b.xml", "empty.xml", "preannotations_coco.json"]
    a = read_voc(os.path.join(out, "a.xml"))
    assert (a.width, a.height, a.filename) == (200, 100, "a.jpg")
    assert [(o.name, round(o.confidence, 3)) for o in a.objects] == [("cat", 0.72), ("dog", 0.3)]
    assert (a.objects[1].x1, a.objects[1].y2) == (60, 90)
    assert read_voc(os.path.join(out, "empty.xml")).objects == []
    coco = json.load(open(os.path.join(out, "preannotations_coco.json")))
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3
    assert {c["name"] for c in coco["categories"]} == set(CLASSES)
    assert sorted(round(a["score"], 3) for a in coco["annotations"]) == [0.3, 0.49, 0.72]


@pytest.mark.parametrize("bad_id", ["../escape", "/abs/path", "a/../../b", "c:\\x", "ok/\x00nul"])
def test_ids_that_escape_the_output_folder_are_refused(tmp_path, bad_id):
    manifest = _write(tmp_path, ["fine/img", bad_id], [("fine/img", 0, 0.9, 0.9, (1, 1, 9, 9))])
    out = tmp_path / "pre"
    n = export_preannotations(str(tmp_path / "sel.parquet"), str(tmp_path / "det"), manifest, CLASSES, str(out), 0)
    assert n == 1 and (out / "fine" / "img.xml").exists()
    skipped = json.load(open(out / "skipped.json"))
    assert list(skipped) == [bad_id]
    written = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files}
    assert all(path.startswith(("pre/", "det/", "pool.parquet", "sel.parquet")) for path in written), written
