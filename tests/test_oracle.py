"""The oracle stage with annotators (`loop.oracle=external`) in each delivery format: a delivery of
the ground truth gives the labels the simulated oracle gives, an image not delivered keeps the round
waiting (with how many are missing) until the annotators mark the delivery complete, and then stays
in the pool. Deliveries are written by hand, as each tool exports them."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
from PIL import Image

from raylib import oracle, schemas, storage
from raylib.config import LoopConfig
from raylib.paths import RoundPaths
from raylib.dataset import Dataset
from tests.helpers import labelled_ids

CLASSES = ["cat", "dog"]
# Ground truth: image -> [(class name, xmin, ymin, xmax, ymax)] in VOC's 1-based pixels; image c is empty.
TRUTH = {"a": [("cat", 11, 21, 40, 50)], "b": [("dog", 1, 1, 100, 80), ("cat", 31, 11, 60, 30)], "c": []}
WIDTH, HEIGHT = 100, 80


def voc_file(image_id: str) -> bytes:
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for name, x1, y1, x2, y2 in TRUTH[image_id])
    return (f"<annotation><filename>{image_id}.jpg</filename><size><width>{WIDTH}</width><height>{HEIGHT}"
            f"</height><depth>3</depth></size>{objects}</annotation>").encode()


def deliver(fmt: str, labels_in, image_ids: list[str]) -> None:
    """What each tool exports for `image_ids` (CVAT/any VOC tool; COCO; Label Studio's JSON export)."""
    if fmt == "voc":
        for image_id in image_ids:
            storage.write_bytes(str(labels_in / "Annotations" / f"{image_id}.xml"), voc_file(image_id))
    elif fmt == "coco":  # bbox: [x, y, w, h] from the 0-based pixel edge
        images = [{"id": i + 1, "file_name": f"{image_id}.jpg", "width": WIDTH, "height": HEIGHT}
                  for i, image_id in enumerate(image_ids)]
        anns = [{"id": len(image_ids) * 10 + j, "image_id": i + 1, "category_id": CLASSES.index(name) + 1,
                 "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "iscrowd": 0}
                for i, image_id in enumerate(image_ids) for j, (name, x1, y1, x2, y2) in enumerate(TRUTH[image_id])]
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
        storage.write_text(str(labels_in / "instances_default.json"),
                           json.dumps({"images": images, "annotations": anns, "categories": categories}))
    else:  # Label Studio: percent of the original size; images served as local files (document root /)
        tasks = [{"id": i + 1, "data": {"image": local_files_url(labels_in, image_id), "image_id": image_id},
                  "annotations": [{"id": 100 + i, "was_cancelled": False, "result": [
                      {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
                       "original_width": WIDTH, "original_height": HEIGHT,
                       "value": {"x": 100 * (x1 - 1) / WIDTH, "y": 100 * (y1 - 1) / HEIGHT,
                                 "width": 100 * (x2 - x1 + 1) / WIDTH, "height": 100 * (y2 - y1 + 1) / HEIGHT,
                                 "rotation": 0, "rectanglelabels": [name]}}
                      for name, x1, y1, x2, y2 in TRUTH[image_id]]}]}
                 for i, image_id in enumerate(image_ids)]
        storage.write_text(str(labels_in / "project-1-at-2026.json"), json.dumps(tasks))


def pool_image(labels_in, image_id: str):
    """Where the round0 fixture's pool keeps `image_id` (next to the delivery folder)."""
    return labels_in.parent / "pool" / f"{image_id}.jpg"


def local_files_url(labels_in, image_id: str) -> str:
    return "/data/local-files/?d=" + str(pool_image(labels_in, image_id)).lstrip("/")


@pytest.fixture()
def round0(tmp_path):
    """A run after round 0's export: ground truth in a VOC root, the selection (a, b, c), the round's
    unlabelled pool (with d, not selected), and a labelled set of one image."""
    voc_root = tmp_path / "data"
    for image_id in TRUTH:
        storage.write_bytes(str(voc_root / "Annotations" / f"{image_id}.xml"), voc_file(image_id))
    ds = Dataset(voc_root=str(voc_root), pool_manifest="", test_manifest="", class_names=CLASSES)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    ids = ["a", "b", "c", "d"]
    # Real images: the importers check boxes against each image's header.
    uris = [pool_image(tmp_path / "delivered", i) for i in ids]
    uris[0].parent.mkdir()
    for uri in uris:
        Image.new("RGB", (WIDTH, HEIGHT)).save(uri)
    storage.write_table(schemas.check(pa.table({"image_id": ids, "uri": [str(u) for u in uris]}),
                                      schemas.POOL, "pool"), rp.unlabelled)
    selection = pa.table({"round": pa.array([0] * 3, pa.int16()), "image_id": ["a", "b", "c"],
                          "class_id": pa.array([0, 1, 0], pa.int16()), "score": pa.array([0.3] * 3, pa.float32()),
                          "rank": pa.array([0, 1, 2], pa.int32())})
    storage.write_table(schemas.check(selection, schemas.SELECTION, "selection"), rp.selection)
    seed = pa.table({"image_id": ["s"], "split": ["train"], "round_added": pa.array([0], pa.int16()),
                     "objects": pa.array([[]], pa.list_(schemas.OBJECT))})
    labels_uri = str(tmp_path / "labels_seed.parquet")
    storage.write_table(schemas.check(seed, schemas.LABELS, "labels"), labels_uri)
    return ds, rp, labels_uri


def new_labels(rp: RoundPaths) -> dict[str, list[dict]]:
    table = storage.read_table(rp.labels).to_pylist()
    return {row["image_id"]: row["objects"] for row in table if row["round_added"] == 1}


def simulated_truth(round0, tmp_path) -> dict[str, list[dict]]:
    """What the simulated oracle labels for round 0's selection (a copy of the round): the ground truth a
    delivery must come back to."""
    ds, rp, labels_uri = round0
    simulated_rp = RoundPaths(str(tmp_path / "simulated"), 0)
    for name in ("unlabelled", "selection"):
        storage.write_bytes(getattr(simulated_rp, name), storage.read_bytes(getattr(rp, name)))
    oracle.label_selection(simulated_rp, ds, LoopConfig(oracle="simulate"), 0, labels_uri)
    return new_labels(simulated_rp)


@pytest.mark.parametrize("fmt", ["voc", "coco", "labelstudio"])
def test_delivery_in_each_format_waits_for_the_missing_image_then_labels_as_the_ground_truth(round0, tmp_path, fmt):
    ds, rp, labels_uri = round0
    truth = simulated_truth(round0, tmp_path)
    assert sorted(truth) == ["a", "b", "c"] and truth["c"] == []

    labels_in = tmp_path / "delivered"
    loop = LoopConfig(oracle="external", labels_in=str(labels_in), labels_format=fmt)
    deliver(fmt, labels_in, ["a", "c"])  # b not delivered yet; c reviewed and empty
    with pytest.raises(oracle.LabelsPending, match="2 of 3 selected images labelled, 1 missing"):
        oracle.label_selection(rp, ds, loop, 0, labels_uri)
    assert not storage.exists(rp.labels)
    assert json.loads(storage.read_text(rp.oracle_errors)) == {"b": "not delivered yet"}

    storage.write_text(str(labels_in / "_complete" / "round=00"), "")  # the annotators: done, b skipped
    summary = oracle.label_selection(rp, ds, loop, 0, labels_uri)
    assert summary == {"n_selected": 3, "n_labelled": 2, "n_missing": 1}
    ours = new_labels(rp)
    assert ours == {"a": truth["a"], "c": []}  # b stays in the pool: not in the labelled set
    assert "b" not in labelled_ids(rp.labels)


def hostile(fmt: str, labels_in) -> None:
    """Next to a good delivery of a: b with a hostile entry, a task of another bucket for a's base name,
    a 100,000-deep JSON file, and c reviewed empty in a cp1252 reviewed_empty.txt with a bad line."""
    if fmt == "coco":
        document = {"images": [{"id": 7, "file_name": "b.jpg", "width": WIDTH, "height": HEIGHT}],
                    "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [-5000, 0, 1e39, 10]}],
                    "categories": [{"id": 1, "name": "cat"}]}
    else:
        region = {"type": "rectanglelabels", "original_width": WIDTH, "original_height": HEIGHT,
                  "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": [1], "rectanglelabels": ["cat"]}}
        document = [{"id": 7, "data": {"image": local_files_url(labels_in, "b"), "image_id": "b"},
                     "annotations": [{"result": [region]}]},
                    {"id": 8, "data": {"image": "s3://someone-else/pool/a.jpg"},
                     "annotations": [{"result": [{**region, "value": {**region["value"], "rotation": 0}}]}]}]
    storage.write_text(str(labels_in / "hostile.json"), json.dumps(document))
    storage.write_text(str(labels_in / "deep.json"), "[" * 100_000 + "]" * 100_000)
    storage.write_bytes(str(labels_in / "reviewed_empty.txt"), "c\ncaf\u00e9.jpg\n".encode("cp1252"))


@pytest.mark.parametrize("fmt", ["coco", "labelstudio"])
def test_hostile_entries_cost_their_images_only(round0, tmp_path, fmt):
    ds, rp, labels_uri = round0
    truth = simulated_truth(round0, tmp_path)

    labels_in = tmp_path / "delivered"
    deliver(fmt, labels_in, ["a"])
    hostile(fmt, labels_in)
    storage.write_text(str(labels_in / "_complete" / "round=00"), "")
    loop = LoopConfig(oracle="external", labels_in=str(labels_in), labels_format=fmt)
    oracle.label_selection(rp, ds, loop, 0, labels_uri)
    assert new_labels(rp) == {"a": truth["a"], "c": []}  # the good ones, committed with their labels
    assert "b" not in labelled_ids(rp.labels)  # the bad one stays in the pool, with its reason
    errors = json.loads(storage.read_text(rp.oracle_errors))
    assert ("outside the 100x80 image" if fmt == "coco" else "rotation is a list, not a number") in errors["b"]
    assert "hostile.json" in errors["b"]
    assert "nested too deeply" in errors[f"<{labels_in / 'deep.json'}>"]
    assert "line(s) 2 of" in errors[f"<{labels_in / 'reviewed_empty.txt'}>"]


def test_oracle_under_ray_answers_in_a_task_as_in_process(round0, tmp_path, ray_session):
    """With Ray running, the oracle's work is one task (runtime.in_task): the driver gets its counts, a
    pending delivery still stops the round with the message, and the labelled set is the in-process one."""
    ds, rp, labels_uri = round0
    labels_in = tmp_path / "delivered"
    loop = LoopConfig(oracle="external", labels_in=str(labels_in), labels_format="voc")
    deliver("voc", labels_in, ["a", "c"])
    with pytest.raises(oracle.LabelsPending, match="2 of 3 selected images labelled, 1 missing") as pending:
        oracle.label_selection(rp, ds, loop, 0, labels_uri)
    assert "Traceback" not in str(pending.value)
    deliver("voc", labels_in, ["b"])
    assert oracle.label_selection(rp, ds, loop, 0, labels_uri) == {"n_selected": 3, "n_labelled": 3, "n_missing": 0}
    in_task = storage.read_table(rp.labels)

    ray_session.shutdown()
    try:
        in_process_rp = RoundPaths(str(tmp_path / "in_process"), 0)
        for name in ("unlabelled", "selection"):
            storage.write_bytes(getattr(in_process_rp, name), storage.read_bytes(getattr(rp, name)))
        oracle.label_selection(in_process_rp, ds, loop, 0, labels_uri)
        assert storage.read_table(in_process_rp.labels).equals(in_task)
    finally:
        ray_session.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert in_task.column("image_id").to_pylist() == ["s", "a", "b", "c"]  # the seed set first, kept as it was
