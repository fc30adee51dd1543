"""COCO import/export: round trip with the labels table, dangling ids, pre-annotation export."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from raylib import schemas
from raylib.formats import coco
from raylib.formats.coco import coco_to_labels
from tests.helpers import labels_to_coco

CLASSES = ["cat", "dog", "bird"]
OBJECTS = pa.list_(schemas.OBJECT)


def labels_table() -> pa.Table:
    return pa.table(
        {
            "image_id": ["a/1.jpg", "b.jpg", "empty.jpg"],
            "objects": pa.array(
                [
                    [{"class_id": 1, "x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 80.0, "difficult": False},
                     {"class_id": 2, "x1": 0.5, "y1": 1.5, "x2": 3.5, "y2": 9.5, "difficult": True}],
                    [{"class_id": 0, "x1": 5.0, "y1": 5.0, "x2": 6.0, "y2": 7.0, "difficult": False}],
                    [],
                ],
                OBJECTS,
            ),
        }
    )


def test_labels_to_coco_values():
    coco = labels_to_coco(labels_table(), CLASSES, sizes={"a/1.jpg": (640, 480)})
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    assert coco["images"][0] == {"id": 1, "file_name": "a/1.jpg", "width": 640, "height": 480}
    assert "width" not in coco["images"][1]  # no size known
    first = coco["annotations"][0]
    assert first["image_id"] == 1 and first["category_id"] == 2
    assert first["bbox"] == [10.0, 20.0, 40.0, 60.0] and first["area"] == 2400.0
    assert [a["difficult"] for a in coco["annotations"]] == [0, 1, 0]
    assert len({a["id"] for a in coco["annotations"]}) == 3
    json.dumps(coco)  # plain JSON types only


def test_round_trip_labels_coco_labels():
    table = labels_table()
    back, errors = coco_to_labels(json.loads(json.dumps(labels_to_coco(table, CLASSES))), CLASSES)
    assert errors == []
    assert back.schema.field("objects").type == OBJECTS
    assert back.to_pylist() == table.to_pylist()


def test_categories_are_matched_by_name_not_id():
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg"}],
        "categories": [{"id": 40, "name": "bird"}, {"id": 3, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 40, "bbox": [1, 2, 3, 4]},
                        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1]}],
    }
    table, errors = coco_to_labels(coco, CLASSES)
    assert errors == []
    assert [o["class_id"] for o in table.to_pylist()[0]["objects"]] == [2, 0]
    assert table.to_pylist()[0]["objects"][0]["x2"] == 4.0


def test_dangling_ids_are_errors_not_crashes():
    coco = {
        "images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": "badcat.jpg"},
                   {"id": 3, "file_name": "../escape.jpg"}, {"id": 4, "file_name": "badbox.jpg"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 9, "name": "zebra"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]},
            {"id": 11, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]},  # no such image
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [0, 0, 5, 5]},  # no such category
            {"id": 13, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5]},  # category not configured
            {"id": 14, "image_id": 4, "category_id": 1, "bbox": [0, 0, 0, 5]},  # empty box
        ],
    }
    table, errors = coco_to_labels(coco, CLASSES)
    assert table.column("image_id").to_pylist() == ["ok.jpg"]
    by_id = dict(errors)
    assert set(by_id) == {"<annotation 11>", "badcat.jpg", "../escape.jpg", "badbox.jpg"}
    assert "99" in by_id["<annotation 11>"]
    assert "category_id 5" in by_id["badcat.jpg"]  # the first problem of the image is reported once
    assert "empty" in by_id["badbox.jpg"]
    assert len(errors) == 4


def test_preannotations_carry_scores_and_join_into_one_coco_document():
    # head + each part's images and annotations + tail, as export.py joins them
    boxes = np.array([[1.0, 1.0, 4.0, 5.0], [2.0, 2.0, 3.0, 9.0], [0.0, 0.0, 100.0, 50.0]])
    text = (coco.preannotation_head(CLASSES, {"round": 0})
            + coco.preannotation_images(1, ["a.jpg", "b.jpg"], np.array([100, 10]), np.array([50, 10]))
            + coco.IMAGES_TO_ANNOTATIONS
            + coco.preannotation_annotations(1, np.array([2, 2, 1]), np.array([0, 2, 1]), boxes,
                                             np.array([0.9, 0.25, 0.5]))
            + coco.TAIL)
    document = json.loads(text)
    assert [im["id"] for im in document["images"]] == [1, 2]
    anns = document["annotations"]
    assert [(a["image_id"], a["category_id"], a["score"]) for a in anns] == [(2, 1, 0.9), (2, 3, 0.25), (1, 2, 0.5)]
    assert anns[0]["bbox"] == [1.0, 1.0, 3.0, 4.0] and anns[0]["area"] == 12.0


@pytest.mark.parametrize("image_id, uri, expected", [
    ("2007_000017", "s3://b/VOC/JPEGImages/2007_000017.jpg", "2007_000017.jpg"),  # VOC id: no extension
    ("cam1/0001.JPG", "/pool/cam1/0001.JPG", "cam1/0001.JPG"),  # folder id: already the relative path
    ("cam1/0001.jpg", "/pool/cam1/0001.JPG", "cam1/0001.jpg"),  # extension compared without case
    ("a.b", "/pool/a.b.png", "a.b.png"),
    ("noext", "/pool/noext", "noext"),
    ("x", None, "x"),
])
def test_file_name(image_id, uri, expected):
    from raylib.formats.coco import file_name

    assert file_name(image_id, uri) == expected


def test_file_names_map_back_to_image_ids_and_other_images_are_ignored():
    coco = {
        "images": [{"id": 1, "file_name": "2007_000017.jpg"}, {"id": 2, "file_name": "other_round.jpg"},
                   {"id": 3, "file_name": "empty.jpg"}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
                        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4]}],  # ignored, not an error
    }
    table, errors = coco_to_labels(coco, CLASSES, image_ids={"2007_000017.jpg": "2007_000017", "empty.jpg": "empty"})
    assert errors == []
    assert table.to_pylist() == [
        {"image_id": "2007_000017",
         "objects": [{"class_id": 1, "x1": 1.0, "y1": 2.0, "x2": 4.0, "y2": 6.0, "difficult": False}]},
        {"image_id": "empty", "objects": []},
    ]
