"""Importers of annotators' deliveries (VOC, COCO, Label Studio), reviewed-empty ids and the
delivery-complete check. Deliveries are written by hand here as the tools write them."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from PIL import Image

from raylib import schemas
from raylib.formats import deliveries, json_deliveries
from raylib.oracle import check_delivery, delivery_marker
from raylib.formats.json_deliveries import import_coco, import_labelstudio
from raylib.formats.deliveries import (import_delivery,
                                import_voc, name_index)

CLASSES = ["cat", "dog"]
# A round's selection: image_id -> uri. VOC-style ids (no extension) and folder-pool ids (relative paths).
SELECTED = {"2007_000017": "/voc/JPEGImages/2007_000017.jpg", "2007_000018": "/voc/JPEGImages/2007_000018.jpg",
            "cam1/x.png": "/pool/cam1/x.png", "cam2/y.jpg": "/pool/cam2/y.jpg", "gone": "/voc/JPEGImages/gone.jpg"}


def box(class_id, x1, y1, x2, y2, difficult=False) -> dict:
    return {"class_id": class_id, "x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2),
            "difficult": difficult}


def voc_xml(filename: str, objects: str = "") -> bytes:
    return (f"<annotation><filename>{filename}</filename><size><width>100</width><height>80</height>"
            f"<depth>3</depth></size>{objects}</annotation>").encode()


def voc_obj(name: str, xmin, ymin, xmax, ymax, difficult: int = 0) -> str:
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def write(path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def test_name_index():
    index = name_index({"2007_000017": "/v/JPEGImages/2007_000017.jpg", "cam1/x.png": "/p/cam1/x.png",
                        "cam2/x.png": "/p/cam2/x.png"})
    assert index == {
        "2007_000017": "2007_000017", "2007_000017.jpg": "2007_000017",
        "cam1/x.png": "cam1/x.png", "cam1/x": "cam1/x.png",
        "cam2/x.png": "cam2/x.png", "cam2/x": "cam2/x.png",
        # 'x.png' and 'x' name two images: left out rather than guessed
    }


# ---------------------------------------------------------------------------------------------- VOC


def test_voc_delivery(tmp_path):
    ann = tmp_path / "Annotations"
    write(ann / "2007_000017.xml", voc_xml("2007_000017.jpg", voc_obj("dog", 11, 21, 30, 40, 1) + voc_obj("cat", 1, 1, 100, 80)))
    write(ann / "cam1" / "x.xml", voc_xml("cam1/x.png", voc_obj("cat", 5, 5, 9.5, 9)))  # CVAT's item: no extension
    write(ann / "2007_000018.xml", voc_xml("2007_000018.jpg", voc_obj("zebra", 1, 1, 5, 5)))
    write(ann / "not_selected.xml", voc_xml("not_selected.jpg"))
    # Label Studio's VOC export drops images without boxes: the annotator lists them instead.
    write(tmp_path / "reviewed_empty.txt", "# reviewed, nothing there\ncam2/y.jpg\n\n")

    delivery = import_voc(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.schema.field("objects").type == pa.list_(schemas.OBJECT)
    assert delivery.labels.to_pylist() == [
        {"image_id": "2007_000017", "objects": [box(1, 10, 20, 30, 40, True), box(0, 0, 0, 100, 80)]},
        {"image_id": "cam1/x.png", "objects": [box(0, 4, 4, 9.5, 9)]},
        {"image_id": "cam2/y.jpg", "objects": []},
    ]
    (error,) = delivery.errors
    assert error[0] == "2007_000018" and "zebra" in error[1] and "2007_000018.xml" in error[1]
    assert delivery.missing == ["gone"]


def test_voc_hostile_file_costs_one_image(tmp_path):
    evil = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;</annotation>'
    write(tmp_path / "Annotations" / "2007_000017.xml", evil)
    write(tmp_path / "Annotations" / "2007_000018.xml", voc_xml("2007_000018.jpg"))
    delivery = import_voc(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000018"]
    assert [e[0] for e in delivery.errors] == ["2007_000017"] and "refused" in delivery.errors[0][1]


def test_reviewed_empty_but_delivered_with_boxes_is_an_error(tmp_path):
    write(tmp_path / "Annotations" / "2007_000017.xml", voc_xml("2007_000017.jpg", voc_obj("dog", 1, 1, 5, 5)))
    write(tmp_path / "Annotations" / "2007_000018.xml", voc_xml("2007_000018.jpg"))
    write(tmp_path / "reviewed_empty.txt", "2007_000017.jpg\n2007_000018\nunknown.jpg\n")  # file names work too
    delivery = import_voc(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == [{"image_id": "2007_000018", "objects": []}]
    assert [e[0] for e in delivery.errors] == ["2007_000017"] and "reviewed_empty.txt" in delivery.errors[0][1]
    assert delivery.missing == ["cam1/x.png", "cam2/y.jpg", "gone"]
    assert deliveries.reviewed_empty(str(tmp_path), SELECTED) == ({"2007_000017", "2007_000018"}, ["unknown.jpg"], [])


def _voc_delivery_of_every_kind(tmp_path) -> dict[str, str]:
    """A delivery with usable files (by id and by CVAT item), an unknown class, a malformed file, a
    missing image and a reviewed-empty one, over a selection larger than a chunk; returns the selection."""
    selected = {f"img{n:03d}": f"/voc/JPEGImages/img{n:03d}.jpg" for n in range(23)}
    selected.update({"cam1/x.png": "/pool/cam1/x.png", "cam2/y.jpg": "/pool/cam2/y.jpg", "gone": "/voc/gone.jpg"})
    ann = tmp_path / "Annotations"
    for n in range(23):
        write(ann / f"img{n:03d}.xml", voc_xml(f"img{n:03d}.jpg", voc_obj("cat", 1 + n, 2, 30, 40) +
                                                 voc_obj("dog", 5, 5, 9.5 + n, 9, difficult=n % 2) * (n % 3)))
    write(ann / "img007.xml", voc_xml("img007.jpg", voc_obj("zebra", 1, 1, 5, 5)))
    write(ann / "img011.xml", b"<annotation><size>")
    write(ann / "cam1" / "x.xml", voc_xml("cam1/x.png", voc_obj("cat", 5, 5, 9.5, 9)))
    write(ann / "img013.xml", voc_xml("img013.jpg"))
    write(tmp_path / "reviewed_empty.txt", "cam2/y.jpg\nimg013\n")
    return selected


def test_voc_chunks_in_ray_tasks_give_the_same_delivery_as_one_process(ray_session, tmp_path, monkeypatch):
    """Chunks of 4 files, each parsed in a Ray task (the threshold lowered to force it), merged in
    selection order: the same labels, errors and missing images as parsing them here; a selection
    given as an (image_id, uri) table is the same selection."""
    selected = _voc_delivery_of_every_kind(tmp_path)
    in_process = import_voc(str(tmp_path), selected, CLASSES)
    monkeypatch.setattr(deliveries, "TASK_CHUNK", 4)
    monkeypatch.setattr(deliveries, "TASK_MIN_IMAGES", 1)
    driver, parse = os.getpid(), deliveries.parse_voc_chunk

    def parse_elsewhere(*args):  # shipped to the tasks by value; raises if a chunk is parsed here
        assert os.getpid() != driver, "a chunk was parsed in the driver"
        return parse(*args)

    monkeypatch.setattr(deliveries, "parse_voc_chunk", parse_elsewhere)
    table = pa.table({"image_id": list(selected)[::-1], "uri": list(selected.values())[::-1]})
    in_tasks = import_voc(str(tmp_path), table, CLASSES)
    monkeypatch.undo()

    assert in_tasks.labels.equals(in_process.labels) and in_tasks.labels.num_rows == 23 - 2 + 2
    assert in_tasks.errors == in_process.errors and [e[0] for e in in_tasks.errors] == ["img007", "img011"]
    assert in_tasks.missing == in_process.missing == ["gone"]
    assert in_process.labels.column("image_id").to_pylist()[:3] == ["cam1/x.png", "cam2/y.jpg", "img000"]
    assert in_process.labels.to_pylist()[3]["objects"] == [box(0, 1, 1, 30, 40), box(1, 4, 4, 10.5, 9, True)]


# --------------------------------------------------------------------------------------------- COCO


def coco_doc(images, anns, categories=({"id": 1, "name": "cat"}, {"id": 2, "name": "dog"})) -> str:
    return json.dumps({"images": images, "annotations": anns, "categories": list(categories)})


def test_coco_delivery(tmp_path):
    # CVAT's COCO export: base names as file_name, its own ids; an image from another round; an empty image.
    write(tmp_path / "annotations" / "instances_default.json", coco_doc(
        [{"id": 1, "file_name": "2007_000017.jpg", "width": 100, "height": 80},
         {"id": 2, "file_name": "y.jpg", "width": 100, "height": 80},
         {"id": 3, "file_name": "older_round.jpg", "width": 100, "height": 80},
         {"id": 4, "file_name": "cam1/x.png", "width": 100, "height": 80}],
        [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.5, 20, 30, 40], "iscrowd": 0},
         {"id": 2, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0},
         {"id": 3, "image_id": 4, "category_id": 2, "bbox": [0, 0, 0, 5], "iscrowd": 0}]))
    write(tmp_path / "broken.json", "{not json")
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == [
        {"image_id": "2007_000017", "objects": [box(1, 10.5, 20, 40.5, 60)]},
        {"image_id": "cam2/y.jpg", "objects": []},
    ]
    assert sorted(e[0] for e in delivery.errors) == [f"<{tmp_path / 'broken.json'}>", "cam1/x.png"]
    assert delivery.missing == ["2007_000018", "gone"]


def test_coco_same_image_twice_with_different_labels(tmp_path):
    image = {"id": 1, "file_name": "2007_000017.jpg"}
    write(tmp_path / "a.json", coco_doc([image], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]))
    write(tmp_path / "b.json", coco_doc([image], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]))
    write(tmp_path / "c.json", coco_doc([{"id": 5, "file_name": "2007_000018.jpg"}], []))
    assert import_coco(str(tmp_path), SELECTED, CLASSES).labels.num_rows == 2  # identical twice: fine
    write(tmp_path / "b.json", coco_doc([image], [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2]}]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000018"]
    assert [e[0] for e in delivery.errors] == ["2007_000017"] and "twice" in delivery.errors[0][1]


# ------------------------------------------------------------------------------------- Label Studio


def ls_region(label, x, y, w, h, rotation=0, width=200, height=100) -> dict:
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": width,
            "original_height": height, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                                                 "rectanglelabels": [label]}}


def ls_task(task_id, data, *annotations_) -> dict:
    return {"id": task_id, "data": data, "annotations": list(annotations_), "predictions": []}


def test_labelstudio_delivery(tmp_path):
    tasks = [
        ls_task(1, {"image": "/data/local-files/?d=voc/JPEGImages/2007_000017.jpg", "image_id": "2007_000017"},
                {"id": 10, "result": [ls_region("dog", 5, 10, 50, 20)], "was_cancelled": False,
                 "updated_at": "2026-01-01T10:00:00Z"},
                {"id": 11, "result": [ls_region("cat", 10, 10, 10, 10)], "was_cancelled": False,
                 "updated_at": "2026-01-02T10:00:00Z"}),  # the later annotation counts
        ls_task(2, {"image": "/data/local-files/?d=pool/cam1/x.png"},  # no image_id: matched by URL
                {"id": 12, "result": [], "was_cancelled": False}),  # reviewed: nothing there
        ls_task(3, {"image": "/data/local-files/?d=pool/cam2/y.jpg", "image_id": "cam2/y.jpg"},
                {"id": 13, "result": [], "was_cancelled": True}),  # skipped: not labelled yet
        ls_task(4, {"image": "/data/local-files/?d=voc/JPEGImages/2007_000018.jpg", "image_id": "2007_000018"},
                {"id": 14, "result": [ls_region("dog", 1, 1, 5, 5, rotation=30)]}),
        ls_task(5, {"image": "s3://b/older.jpg", "image_id": "older"}, {"id": 15, "result": []}),
    ]
    write(tmp_path / "project-1-at-2026.json", json.dumps(tasks))
    delivery = import_labelstudio(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == [
        {"image_id": "2007_000017", "objects": [box(0, 20, 10, 40, 20)]},  # percent of 200 x 100
        {"image_id": "cam1/x.png", "objects": []},
    ]
    assert [e[0] for e in delivery.errors] == ["2007_000018"] and "rotated" in delivery.errors[0][1]
    assert delivery.missing == ["cam2/y.jpg", "gone"]


def test_import_delivery_dispatches_and_refuses_unknown_formats(tmp_path):
    write(tmp_path / "Annotations" / "gone.xml", voc_xml("gone.jpg"))
    assert import_delivery("voc", str(tmp_path), SELECTED, CLASSES).labels.column("image_id").to_pylist() == ["gone"]
    with pytest.raises(ValueError, match="'yolo' is not one of voc, coco, labelstudio"):
        import_delivery("yolo", str(tmp_path), SELECTED, CLASSES)


# ------------------------------------------------------------------------------------- completeness


def test_waits_until_every_image_is_labelled_or_the_delivery_is_marked(tmp_path):
    write(tmp_path / "Annotations" / "2007_000017.xml", voc_xml("2007_000017.jpg"))
    write(tmp_path / "Annotations" / "2007_000018.xml", b"<annotation>")
    delivery = import_voc(str(tmp_path), SELECTED, CLASSES)

    status = check_delivery(delivery, str(tmp_path), 2, len(SELECTED))
    assert not status.complete and not status.marked
    assert (status.n_labelled, status.n_invalid, status.n_missing) == (1, 1, 3)
    assert status.message.startswith("round 2: waiting for labels: 1 of 5 selected images labelled, 3 missing, "
                                     "1 delivered but invalid")
    assert delivery_marker(str(tmp_path), 2) in status.message

    assert check_delivery(delivery, str(tmp_path), 2, len(SELECTED), accept_partial=True).complete

    write(tmp_path / "_complete" / "round=02", "")
    status = check_delivery(delivery, str(tmp_path), 2, len(SELECTED))
    assert status.complete and status.marked and "the rest stays in the pool" in status.message
    assert not check_delivery(delivery, str(tmp_path), 3, len(SELECTED)).complete  # the marker is per round


def test_complete_without_marker_when_everything_is_labelled(tmp_path):
    for image_id in SELECTED:
        write(tmp_path / "Annotations" / f"{image_id}.xml", voc_xml(image_id))
    status = check_delivery(import_voc(str(tmp_path), SELECTED, CLASSES), str(tmp_path), 0, len(SELECTED))
    assert status.complete and not status.marked and (status.n_labelled, status.n_missing) == (5, 0)


# ------------------------------------------- round trip: our export, "annotators" accept it, our import

EXPECTED = [  # tests.test_export.DETECTIONS of the selected images, most confident first; boxes are whole pixels
    {"image_id": "a", "objects": [box(0, 10, 10, 50, 40), box(1, 60, 20, 120, 90)]},
    {"image_id": "b", "objects": [box(1, 0, 0, 30, 30)]},
    {"image_id": "empty", "objects": []},
]
ROUND_TRIP_SELECTED = {"a": "/data/a.jpg", "b": "/data/b.jpg", "empty": "/data/empty.jpg"}


@pytest.fixture
def exported(tmp_path):
    from raylib.export import export_preannotations
    from tests.test_export import DETECTIONS, _write

    manifest = _write(tmp_path, list(ROUND_TRIP_SELECTED), DETECTIONS)
    out = tmp_path / "pre"
    export_preannotations(str(tmp_path / "sel.parquet"), str(tmp_path / "det"), manifest, CLASSES, str(out), 0)
    return out


def test_round_trip_voc(exported, tmp_path):
    for image_id in ROUND_TRIP_SELECTED:
        write(tmp_path / "in" / "Annotations" / f"{image_id}.xml", (exported / f"{image_id}.xml").read_bytes())
    assert import_voc(str(tmp_path / "in"), ROUND_TRIP_SELECTED, CLASSES).labels.to_pylist() == EXPECTED


def test_round_trip_cvat_zip(exported, tmp_path):
    import zipfile

    with zipfile.ZipFile(exported / "preannotations_cvat_voc.zip") as archive:
        archive.extractall(tmp_path / "in")  # CVAT's VOC export has the same layout
    delivery = import_voc(str(tmp_path / "in"), ROUND_TRIP_SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == EXPECTED and delivery.missing == [] and delivery.errors == []


def test_round_trip_coco(exported, tmp_path):
    write(tmp_path / "in" / "result.json", (exported / "preannotations_coco.json").read_bytes())
    assert import_coco(str(tmp_path / "in"), ROUND_TRIP_SELECTED, CLASSES).labels.to_pylist() == EXPECTED


def test_round_trip_labelstudio(exported, tmp_path):
    tasks = json.loads((exported / "preannotations_labelstudio.json").read_text())
    for n, task in enumerate(tasks):  # the annotator submits the predictions unchanged
        task["id"] = n + 1
        task["annotations"] = [{"id": n + 1, "result": task["predictions"][0]["result"], "was_cancelled": False}]
    write(tmp_path / "in" / "export.json", json.dumps(tasks))
    rows = import_labelstudio(str(tmp_path / "in"), ROUND_TRIP_SELECTED, CLASSES).labels.to_pylist()
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in EXPECTED]
    for row, expected in zip(rows, EXPECTED):
        assert [o["class_id"] for o in row["objects"]] == [o["class_id"] for o in expected["objects"]]
        for got, want in zip(row["objects"], expected["objects"]):
            assert [got[k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(
                [want[k] for k in ("x1", "y1", "x2", "y2")], abs=1e-3)  # percent and back, in float32


def _json_delivery_of_every_kind(tmp_path) -> dict[str, str]:
    """Selected images on disk (sizes from their headers), COCO files with: a box outside its image's real
    size, an image delivered twice alike and one twice differently (in two files), an unreadable file."""
    selected = {}
    for n in range(9):
        image = tmp_path / "pool" / f"img{n}.png"
        image.parent.mkdir(exist_ok=True)
        Image.new("RGB", (100, 80)).save(image)
        selected[f"img{n}"] = str(image)
    selected["gone"] = str(tmp_path / "pool" / "gone.png")  # nothing delivered; no file either
    images = [{"id": n, "file_name": f"img{n}.png", "width": 1000, "height": 1000} for n in range(8)]
    anns = [{"id": n, "image_id": n, "category_id": 1 + n % 2, "bbox": [n, n, 10, 10], "iscrowd": 0} for n in range(8)]
    anns[3]["bbox"] = [500, 500, 10, 10]  # inside the stated 1000x1000, outside the real 100x80
    write(tmp_path / "in" / "a.json", coco_doc(images[:6], anns[:6]))
    again = [{**anns[4]}, {**anns[5], "category_id": 1 + (1 + 5) % 2}]  # img4 the same, img5 another class
    write(tmp_path / "in" / "b.json", coco_doc(images[4:8], again + anns[6:8]))
    write(tmp_path / "in" / "c.json", "{not json")
    return selected


def test_json_deliveries_in_ray_tasks_give_the_same_delivery_as_one_process(ray_session, tmp_path, monkeypatch):
    """One Ray task per COCO file and per chunk of 3 image headers (the threshold lowered to force it):
    the same labels, errors and missing images as parsing them here."""
    selected = _json_delivery_of_every_kind(tmp_path)
    in_process = import_coco(str(tmp_path / "in"), selected, CLASSES)
    monkeypatch.setattr(deliveries, "TASK_CHUNK", 3)
    monkeypatch.setattr(deliveries, "TASK_MIN_IMAGES", 1)
    driver, parse, sizes = os.getpid(), json_deliveries.parse_json_file, json_deliveries._header_sizes_chunk

    def elsewhere(fn):  # shipped to the tasks by value; raises if the work is done here
        def run(*args):
            assert os.getpid() != driver, f"{fn.__name__} ran in the driver"
            return fn(*args)
        return run

    monkeypatch.setattr(json_deliveries, "parse_json_file", elsewhere(parse))
    monkeypatch.setattr(json_deliveries, "_header_sizes_chunk", elsewhere(sizes))
    table = pa.table({"image_id": list(selected)[::-1], "uri": list(selected.values())[::-1]})
    in_tasks = import_coco(str(tmp_path / "in"), table, CLASSES)
    monkeypatch.undo()

    assert in_tasks.labels.equals(in_process.labels)
    assert in_process.labels.column("image_id").to_pylist() == ["img0", "img1", "img2", "img4", "img6", "img7"]
    assert in_process.labels.to_pylist()[0]["objects"] == [box(0, 0, 0, 10, 10)]
    assert sorted(in_tasks.errors) == sorted(in_process.errors)
    reasons = dict(in_process.errors)
    assert sorted(reasons) == [f"<{tmp_path / 'in' / 'c.json'}>", "img3", "img5"]
    assert "outside the 100x80 image" in reasons["img3"] and "twice with different labels" in reasons["img5"]
    assert in_tasks.missing == in_process.missing == ["gone", "img8"]
