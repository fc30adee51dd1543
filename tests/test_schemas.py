"""Arrow schemas: every contract survives Parquet; `check` refuses what doesn't fit and casts what does."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylib import schemas
from raylib.schemas import SchemaError, check

OBJ = {"class_id": 3, "x1": 1.5, "y1": 2.0, "x2": 10.0, "y2": 20.25, "difficult": True}

ROWS = {
    "POOL": [{"image_id": "a/1.jpg", "uri": "s3://b/a/1.jpg", "width": 640, "height": None}],
    "DETECTIONS": [
        {"round": 2, "image_id": "a", "class_id": 1, "cls_conf": 0.5, "loc_conf": 0.25, "score": 0.125,
         "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "class_probs": [0.5, 0.25]},
        {"round": 2, "image_id": "b", "class_id": 0, "cls_conf": 0.75, "loc_conf": 1.0, "score": 0.75,
         "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0, "class_probs": None},
    ],
    "IMAGE_STATUS": [
        {"round": 0, "image_id": "a", "status": "ok", "error": None, "n_detections": 3,
         "width": 500, "height": 375, "uri": "s3://b/a.jpg"},
        {"round": 0, "image_id": "b", "status": "error", "error": "truncated JPEG", "n_detections": 0,
         "width": None, "height": None, "uri": "s3://b/b.jpg"},
    ],
    "SELECTION": [{"round": 1, "image_id": "a", "class_id": 4, "score": 0.5, "rank": 0}],
    "LABELS": [
        {"image_id": "a", "split": "train", "round_added": 0, "objects": [OBJ, {**OBJ, "class_id": 0}]},
        {"image_id": "b", "split": "test", "round_added": 3, "objects": []},
    ],
    "THRESHOLDS": [{"round": 1, "class_id": 0, "threshold": None, "n_candidates": 0}],
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_schema_round_trips_through_parquet(tmp_path, name):
    schema = getattr(schemas, name)
    table = pa.Table.from_pylist(ROWS[name], schema=schema)
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema.equals(schema), (back.schema, schema)
    assert check(back, schema, name).to_pylist() == ROWS[name]


def test_check_rejects_extra_columns():
    table = pa.Table.from_pylist(ROWS["POOL"], schema=schemas.POOL).append_column("path", pa.array(["x"]))
    with pytest.raises(SchemaError, match=r"pool: unexpected column\(s\) \['path'\]"):
        check(table, schemas.POOL, "pool")


def test_check_rejects_missing_required_column():
    table = pa.table({"image_id": ["a"], "width": pa.array([1], pa.int32())})
    with pytest.raises(SchemaError, match="missing required column 'uri'"):
        check(table, schemas.POOL, "pool")


def test_check_rejects_nulls_in_required_columns():
    table = pa.table({"image_id": ["a", None], "uri": ["x", "y"]})
    with pytest.raises(SchemaError, match="'image_id' has 1 null"):
        check(table, schemas.POOL, "pool")


def test_check_adds_missing_nullable_columns_as_nulls():
    table = pa.table({"image_id": ["a"], "uri": ["x"]})
    checked = check(table, schemas.POOL, "pool")
    assert checked.schema.equals(schemas.POOL)
    assert checked.to_pylist() == [{"image_id": "a", "uri": "x", "width": None, "height": None}]


def test_check_casts_compatible_types():
    row = ROWS["SELECTION"][0]
    table = pa.table(
        {"round": pa.array([1], pa.int64()), "image_id": pa.array(["a"], pa.large_string()),
         "class_id": pa.array([4], pa.int32()), "score": pa.array([0.5], pa.float64()),
         "rank": pa.array([0], pa.int64())}
    )
    checked = check(table, schemas.SELECTION, "selection")
    assert checked.schema.equals(schemas.SELECTION)
    assert checked.to_pylist() == [row]


def test_check_refuses_incompatible_types_naming_the_column():
    table = pa.table({"image_id": ["a"], "uri": ["x"], "width": ["wide"]})
    with pytest.raises(SchemaError, match="column 'width' has type string"):
        check(table, schemas.POOL, "pool")


def test_check_refuses_a_lossy_cast():
    table = pa.table({"image_id": ["a"], "uri": ["x"], "width": pa.array([2**40], pa.int64())})
    with pytest.raises(SchemaError, match="'width'"):
        check(table, schemas.POOL, "pool")


def test_empty_tables_have_the_schema():
    for name in ROWS:
        schema = getattr(schemas, name)
        assert schemas.empty(schema).schema.equals(schema) and schemas.empty(schema).num_rows == 0
