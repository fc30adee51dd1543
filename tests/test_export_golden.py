"""The export writes the same bytes as the export before its vectorised rewrite.

`tests/data/export_golden/` holds the files the earlier export (one image at a time, pandas) wrote for
the inputs `write_inputs` makes (see its README for the commit); this test runs today's export on the
same inputs and compares every file byte for byte, except the export time (`<analysis_time>` in the
XML, `date_created` in the COCO file), which is masked. The CVAT zip is compared member by member (its
compressed bytes are not part of the format). Inputs: three scoring parts, an image selected twice,
float boxes and scores, a tie in score, an image without detections, one without a known size, an
id that escapes the folder, XML-escaped and non-ASCII ids, two file names with the same CVAT item,
and images outside the Label Studio document root.
"""
from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raylib import schemas, storage
from raylib.export import export_preannotations

GOLDEN = Path(__file__).parent / "data" / "export_golden"
CLASSES = ["cat", "dog", "a&b <bird>"]
DOCUMENT_ROOT = "/pool"
ROUND = 2
# image_id -> (part, uri, (width, height) or None, number of detections)
IMAGES = {
    "2007_000017": (0, "s3://bucket/VOC2007/JPEGImages/2007_000017.jpg", (500, 375), 4),
    "2007_000032": (0, "s3://bucket/VOC2007/JPEGImages/2007_000032.jpg", (353, 500), 0),
    "cam1/x.png": (0, "/pool/cam1/x.png", (200, 100), 3),
    "dup.jpg": (0, "/pool/dup.jpg", (64, 48), 1),
    "dup.png": (0, "/pool/dup.png", (64, 48), 2),
    "../escape": (1, "/pool/escape.jpg", (10, 10), 1),
    "tie": (1, "/pool/tie.jpg", (300, 200), 3),
    "a&b <c>": (1, "/pool/a&b <c>.jpg", (640, 480), 2),
    "ünï/çödé.jpg": (1, "/pool/ünï/çödé.jpg", (640, 480), 1),
    "unsized": (2, "/pool/unsized.jpg", None, 2),
    "outside/root.jpg": (2, "/elsewhere/outside/root.jpg", (100, 100), 2),
    "not_selected": (2, "/pool/not_selected.jpg", (100, 100), 3),
    "cam2/z.jpeg": (2, "/pool/cam2/z.jpeg", (1024, 768), 10),
}
SELECTED = ["tie", "2007_000017", "cam1/x.png", "2007_000032", "dup.jpg", "dup.png", "../escape", "a&b <c>",
            "ünï/çödé.jpg", "unsized", "outside/root.jpg", "cam2/z.jpeg", "tie"]  # "tie" for two classes


def write_inputs(root: Path) -> dict[str, str]:
    """Scoring's image_status/ and detections/ parts and a selection, as a round writes them; returns
    the export's arguments."""
    rng = np.random.default_rng(23)
    for part in range(3):
        ids = [i for i, (p, *_rest) in IMAGES.items() if p == part]
        status = pa.table({
            "round": pa.array([ROUND] * len(ids), pa.int16()), "image_id": ids, "status": ["ok"] * len(ids),
            "error": pa.array([None] * len(ids), pa.string()),
            "n_detections": pa.array([IMAGES[i][3] for i in ids], pa.int32()),
            "width": pa.array([IMAGES[i][2][0] if IMAGES[i][2] else None for i in ids], pa.int32()),
            "height": pa.array([IMAGES[i][2][1] if IMAGES[i][2] else None for i in ids], pa.int32()),
            "uri": [IMAGES[i][1] for i in ids]})
        storage.write_table(schemas.check(status, schemas.IMAGE_STATUS, "image_status"),
                            str(root / "status" / f"part-{part:05d}.parquet"))
        rows = []
        for image_id in ids:
            width, height = IMAGES[image_id][2] or (400, 300)
            for _ in range(IMAGES[image_id][3]):
                x1, x2 = sorted(rng.uniform(-5, width + 5, 2))
                y1, y2 = sorted(rng.uniform(-5, height + 5, 2))
                rows.append((image_id, int(rng.integers(len(CLASSES))), rng.uniform(0.05, 1), rng.uniform(0.2, 1),
                             (x1, y1, x2, y2)))
        rows = [rows[i] for i in rng.permutation(len(rows))]  # detections in no particular order
        if image_id == "cam2/z.jpeg":
            rows.append((image_id, 1, 0.0, 0.5, (1.5, 2.5, 3.5, 4.5)))  # a zero score
        for n, row in enumerate(rows):  # three boxes of "tie" with the same score
            if row[0] == "tie":
                rows[n] = (row[0], row[1], 0.5, 0.5, row[4])
        detections = pa.table({
            "round": pa.array([ROUND] * len(rows), pa.int16()),
            "image_id": pa.array([r[0] for r in rows], pa.string()),
            "class_id": pa.array([r[1] for r in rows], pa.int16()),
            "cls_conf": pa.array([r[2] for r in rows], pa.float32()),
            "loc_conf": pa.array([r[3] for r in rows], pa.float32()),
            "score": pa.array([r[2] * r[3] for r in rows], pa.float32()),
            **{name: pa.array([r[4][i] for r in rows], pa.float32()) for i, name in enumerate(schemas.BOX)},
        })
        storage.write_table(schemas.check(detections, schemas.DETECTIONS, "detections"),
                            str(root / "det" / f"part-{part:05d}.parquet"))
    selection = pa.table({"round": pa.array([ROUND] * len(SELECTED), pa.int16()), "image_id": SELECTED,
                          "class_id": pa.array([n % len(CLASSES) for n in range(len(SELECTED))], pa.int16()),
                          "score": pa.array([0.5] * len(SELECTED), pa.float32()),
                          "rank": pa.array(range(len(SELECTED)), pa.int32())})
    storage.write_table(schemas.check(selection, schemas.SELECTION, "selection"), str(root / "sel.parquet"))
    return {"selection_uri": str(root / "sel.parquet"), "detections_uri": str(root / "det"),
            "status_uri": str(root / "status")}


def run_export(root: Path, out: Path) -> int:
    return export_preannotations(**write_inputs(root), class_names=CLASSES, out_dir=str(out), round_idx=ROUND,
                                 labelstudio_document_root=DOCUMENT_ROOT)


def _masked(data: bytes) -> bytes:
    data = re.sub(rb"<analysis_time>[^<]*</analysis_time>", b"<analysis_time>-</analysis_time>", data)
    return re.sub(rb'"date_created": "[^"]*"', b'"date_created": "-"', data)


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "README.md"}


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return [(name, _masked(archive.read(name))) for name in archive.namelist()]


def _assert_same_export(ours: Path, golden: Path) -> None:
    got, want = _files(ours), _files(golden)
    assert sorted(got) == sorted(want)
    for name, path in want.items():
        if name.endswith(".zip"):
            assert _members(got[name]) == _members(path), name
        else:
            assert _masked(got[name].read_bytes()) == _masked(path.read_bytes()), name


def test_export_matches_the_files_of_the_export_before_the_rewrite(tmp_path):
    assert run_export(tmp_path / "inputs", tmp_path / "out") == 11
    _assert_same_export(tmp_path / "out", GOLDEN)


def test_ray_tasks_write_the_same_bytes(ray_session, tmp_path, monkeypatch):
    from raylib import export

    monkeypatch.setattr(export, "MIN_IMAGES_FOR_TASKS", 0)  # a task per part even for a dozen images
    run_export(tmp_path / "inputs", tmp_path / "out")
    _assert_same_export(tmp_path / "out", GOLDEN)


if __name__ == "__main__":  # python tests/test_export_golden.py <folder>: write the golden files (see README)
    if len(sys.argv) != 2:
        pytest.exit("usage: python tests/test_export_golden.py <empty folder>")
    target = Path(sys.argv[1])
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print(run_export(Path(scratch), target), "XML files written to", target)
