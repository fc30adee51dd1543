"""Pre-annotation export: one VOC XML per selected image with every kept detection and its
confidence; COCO JSON alongside; ids that would escape the output folder are refused."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from PIL import Image

from raylib import schemas, storage
from raylib.export import MARKER, export_preannotations
from raylib.formats.voc import read_voc

CLASSES = ["cat", "dog"]
EXPORT_FILES = ["preannotations_coco.json", "preannotations_labelstudio.json", "label_config.xml",
                "selected_uris.txt", "preannotations_cvat_voc.zip"]


def _read_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def _write(tmp_path, ids_selected, detections, sizes=True, uris=None):
    """Scoring's outputs (image_status/ and detections/, in two parts as a scoring run writes them:
    each image's status and detections in the part of the same name) and the selection of a hand-made
    round; returns the image_status folder."""
    ids = sorted({d[0] for d in detections} | set(ids_selected))
    uris = uris or {i: f"/data/{i}.jpg" for i in ids}
    part_of = {image_id: int(n >= len(ids) // 2) for n, image_id in enumerate(ids)}
    for part in (0, 1):
        mine = [i for i in ids if part_of[i] == part]
        dets = [d for d in detections if part_of[d[0]] == part]
        status = pa.table({
            "round": pa.array([0] * len(mine), pa.int16()), "image_id": mine, "status": ["ok"] * len(mine),
            "error": pa.array([None] * len(mine), pa.string()),
            "n_detections": pa.array([sum(d[0] == i for d in dets) for i in mine], pa.int32()),
            "width": pa.array([200 if sizes else None] * len(mine), pa.int32()),
            "height": pa.array([100 if sizes else None] * len(mine), pa.int32()), "uri": [uris[i] for i in mine]})
        storage.write_table(schemas.check(status, schemas.IMAGE_STATUS, "image_status"),
                            str(tmp_path / "status" / f"part-{part:05d}.parquet"))
        det = pa.table({
            "round": pa.array([0] * len(dets), pa.int16()),
            "image_id": pa.array([d[0] for d in dets], pa.string()),
            "class_id": pa.array([d[1] for d in dets], pa.int16()),
            "cls_conf": pa.array([d[2] for d in dets], pa.float32()),
            "loc_conf": pa.array([d[3] for d in dets], pa.float32()),
            "score": pa.array([d[2] * d[3] for d in dets], pa.float32()),
            **{name: pa.array([d[4][i] for d in dets], pa.float32()) for i, name in enumerate(schemas.BOX)},
        })
        storage.write_table(schemas.check(det, schemas.DETECTIONS, "detections"),
                            str(tmp_path / "det" / f"part-{part:05d}.parquet"))
    sel = pa.table({"round": pa.array([0] * len(ids_selected), pa.int16()), "image_id": ids_selected,
                    "class_id": pa.array([0] * len(ids_selected), pa.int16()),
                    "score": pa.array([0.3] * len(ids_selected), pa.float32()),
                    "rank": pa.array(range(len(ids_selected)), pa.int32())})
    storage.write_table(schemas.check(sel, schemas.SELECTION, "selection"), str(tmp_path / "sel.parquet"))
    return str(tmp_path / "status")


def _export(tmp_path, status, out) -> int:
    return export_preannotations(str(tmp_path / "sel.parquet"), str(tmp_path / "det"), status, CLASSES,
                                 str(out), 0)


DETECTIONS = [("a", 0, 0.9, 0.8, (10, 10, 50, 40)), ("a", 1, 0.5, 0.6, (60, 20, 120, 90)),
              ("b", 1, 0.7, 0.7, (0, 0, 30, 30)), ("not_selected", 0, 0.9, 0.9, (1, 1, 5, 5))]


def test_xml_per_selected_image_with_confidences(tmp_path):
    manifest = _write(tmp_path, ["a", "b", "empty"], DETECTIONS)
    out = str(tmp_path / "pre")
    n = _export(tmp_path, manifest, out)
    assert n == 3
    assert sorted(os.listdir(out)) == sorted([MARKER, "a.xml", "b.xml", "empty.xml", *EXPORT_FILES])
    a = read_voc(os.path.join(out, "a.xml"))
    assert (a.width, a.height, a.filename) == (200, 100, "a.jpg")
    # Every kept detection of the image, most confident first, confidence = cls_conf x loc_conf.
    assert [(o.name, round(o.confidence, 3)) for o in a.objects] == [("cat", 0.72), ("dog", 0.3)]
    assert (a.objects[1].x1, a.objects[1].y1, a.objects[1].x2, a.objects[1].y2) == (60, 20, 120, 90)
    assert [round(o.confidence, 3) for o in read_voc(os.path.join(out, "b.xml")).objects] == [0.49]
    assert read_voc(os.path.join(out, "empty.xml")).objects == []
    coco = _read_json(os.path.join(out, "preannotations_coco.json"))
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3
    assert {c["name"] for c in coco["categories"]} == set(CLASSES)
    assert sorted(round(a["score"], 3) for a in coco["annotations"]) == [0.3, 0.49, 0.72]
    image_of = {image["id"]: image["file_name"] for image in coco["images"]}
    assert all(image_of[a["image_id"]] in ("a.jpg", "b.jpg") for a in coco["annotations"])
    assert coco["images"][0] == {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in coco["annotations"])
    # Label Studio: one task per image, boxes in percent of the 200 x 100 image, most confident first.
    tasks = {t["data"]["image_id"]: t for t in _read_json(os.path.join(out, "preannotations_labelstudio.json"))}
    assert set(tasks) == {"a", "b", "empty"}
    assert tasks["a"]["data"]["image"] == "/data/local-files/?d=data/a.jpg"  # document root "/"
    (prediction,) = tasks["a"]["predictions"]
    assert [(r["value"]["rectanglelabels"], round(r["score"], 3)) for r in prediction["result"]] == [
        (["cat"], 0.72), (["dog"], 0.3)]
    dog = prediction["result"][1]
    assert [round(dog["value"][k], 4) for k in ("x", "y", "width", "height")] == [30.0, 20.0, 30.0, 70.0]
    assert (dog["original_width"], dog["original_height"], dog["from_name"], dog["to_name"]) == (200, 100, "label", "image")
    assert round(prediction["score"], 3) == 0.3 and tasks["empty"]["predictions"][0]["result"] == []


def test_sizes_come_from_the_image_header_when_scoring_could_not_read_them(tmp_path):
    Image.new("RGB", (160, 120)).save(tmp_path / "a.png")
    manifest = _write(tmp_path, ["a"], DETECTIONS[:2], sizes=False, uris={"a": str(tmp_path / "a.png")})
    _export(tmp_path, manifest, tmp_path / "pre")
    a = read_voc(str(tmp_path / "pre" / "a.xml"))
    assert (a.width, a.height, a.filename) == (160, 120, "a.png")


def test_rerun_clears_an_earlier_export_but_refuses_a_foreign_folder(tmp_path):
    manifest = _write(tmp_path, ["a"], DETECTIONS)
    out = tmp_path / "pre"
    _export(tmp_path, manifest, out)
    (out / "stale.xml").write_text("<annotation/>")  # left by an export of another selection
    _export(tmp_path, manifest, out)
    assert not (out / "stale.xml").exists() and (out / "a.xml").exists()
    foreign = tmp_path / "Annotations"
    foreign.mkdir()
    (foreign / "000001.xml").write_text("<annotation/>")
    with pytest.raises(ValueError, match="refusing to clear it"):
        _export(tmp_path, manifest, foreign)
    assert (foreign / "000001.xml").exists()


def test_rerun_after_a_kill_while_the_marker_was_written(tmp_path):
    # storage.write_text writes a temporary sibling, then renames it: a SIGKILL between the two left
    # only `<MARKER>.tmp-<hex>` in the folder, and the resumed loop refused its own folder.
    manifest = _write(tmp_path, ["a"], DETECTIONS)
    out = tmp_path / "pre"
    out.mkdir()
    (out / f"{MARKER}.tmp-0123abcd").write_text("raylib pre-annotation export\n")
    assert _export(tmp_path, manifest, out) == 1
    assert sorted(os.listdir(out)) == sorted([MARKER, "a.xml", *EXPORT_FILES])


@pytest.mark.parametrize("bad_id", ["../escape", "/abs/path", "a/../../b", "c:\\x", "ok/\x00nul", "", "a//b"])
def test_ids_that_escape_the_output_folder_are_refused(tmp_path, bad_id):
    manifest = _write(tmp_path, ["fine/img", bad_id], [("fine/img", 0, 0.9, 0.9, (1, 1, 9, 9))])
    out = tmp_path / "pre"
    n = _export(tmp_path, manifest, out)
    assert n == 1 and (out / "fine" / "img.xml").exists()
    skipped = _read_json(out / "skipped.json")
    assert list(skipped) == [bad_id]
    written = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files}
    assert all(path.startswith(("pre/", "det/", "status/", "sel.parquet")) for path in written), written
    assert len(_read_json(out / "preannotations_coco.json")["images"]) == 1


@pytest.mark.s3
def test_export_to_s3(s3_bucket, tmp_path):
    manifest = _write(tmp_path, ["a", "b"], DETECTIONS)
    out = f"{s3_bucket}/run/round=00/preannotations"
    assert _export(tmp_path, manifest, out) == 2
    a = read_voc(storage.read_bytes(f"{out}/a.xml"))
    assert [o.name for o in a.objects] == ["cat", "dog"]
    assert json.loads(storage.read_text(f"{out}/preannotations_coco.json"))["annotations"]


def test_label_studio_tasks_need_the_image_size_for_boxes():
    import numpy as np

    from raylib.formats.labelstudio import preannotation_tasks

    text = preannotation_tasks([0, 1], ["s3://b/sized.jpg", "s3://b/unsized.jpg"], ["sized", "unsized"],
                               np.array([100, 0]), np.array([50, 0]), np.array([0, 1, 2]), np.array([1, 0]),
                               np.array([[10.0, 5.0, 60.0, 55.0], [1.0, 1.0, 2.0, 2.0]]), np.array([0.5, 0.6]),
                               CLASSES, "v1")
    sized, unsized = json.loads(b"[" + text + b"]")
    (box,) = sized["predictions"][0]["result"]
    assert box["value"] == {"x": 10.0, "y": 10.0, "width": 50.0, "height": 100.0, "rotation": 0,
                            "rectanglelabels": ["dog"]}
    assert sized["predictions"][0]["model_version"] == "v1" and sized["data"]["image"] == "s3://b/sized.jpg"
    assert unsized["predictions"][0]["result"] == []


# ------------------------------------------------------------- the files other tools and libraries read

FOLDER_DETECTIONS = [("cam1/x.png", 0, 0.9, 0.8, (10.4, 10, 50, 40.6)), ("cam1/x.png", 1, 0.5, 0.6, (60, 20, 120, 90))]


def _export_folder_pool(tmp_path, **kwargs):
    """A folder pool: ids are relative paths with their extension, images under /pool/."""
    ids = ["cam1/x.png", "cam2/empty.jpg"]
    manifest = _write(tmp_path, ids, FOLDER_DETECTIONS, uris={i: f"/pool/{i}" for i in ids})
    out = tmp_path / "pre"
    export_preannotations(str(tmp_path / "sel.parquet"), str(tmp_path / "det"), manifest, CLASSES, str(out), 3,
                          **kwargs)
    return out


def test_coco_has_real_file_names_and_sizes_and_pycocotools_reads_it(tmp_path):
    from pycocotools.coco import COCO

    out = _export_folder_pool(tmp_path)
    api = COCO(str(out / "preannotations_coco.json"))
    images = {im["file_name"]: im for im in api.loadImgs(api.getImgIds())}
    assert set(images) == {"cam1/x.png", "cam2/empty.jpg"}
    assert (images["cam1/x.png"]["width"], images["cam1/x.png"]["height"]) == (200, 100)
    anns = api.loadAnns(api.getAnnIds(imgIds=[images["cam1/x.png"]["id"]]))
    names = {c["id"]: c["name"] for c in api.loadCats(api.getCatIds())}
    got = sorted((names[a["category_id"]], [round(v, 2) for v in a["bbox"]]) for a in anns)
    assert got == [("cat", [10.4, 10.0, 39.6, 30.6]), ("dog", [60.0, 20.0, 60.0, 70.0])]  # COCO: no rounding
    assert api.getAnnIds(imgIds=[images["cam2/empty.jpg"]["id"]]) == []


def test_voc_files_of_a_folder_pool_read_by_yolox(tmp_path):
    from yolox.evaluators.voc_eval import parse_rec

    out = _export_folder_pool(tmp_path)
    path = out / "cam1" / "x.png.xml"  # <image_id>.xml, as before
    assert read_voc(str(path)).filename == "cam1/x.png"
    assert sorted((o["name"], o["bbox"], o["difficult"]) for o in parse_rec(str(path))) == [
        ("cat", [11, 11, 50, 41], 0), ("dog", [61, 21, 120, 90], 0)]  # to_voc_box: round, +1 on xmin/ymin


def test_cvat_zip_and_selected_uris(tmp_path):
    import zipfile

    out = _export_folder_pool(tmp_path)
    assert (out / "selected_uris.txt").read_text() == "/pool/cam1/x.png\n/pool/cam2/empty.jpg\n"
    with zipfile.ZipFile(out / "preannotations_cvat_voc.zip") as archive:
        assert sorted(archive.namelist()) == ["Annotations/cam1/x.xml", "Annotations/cam2/empty.xml",
                                              "ImageSets/Main/default.txt", "labelmap.txt"]
        assert archive.read("ImageSets/Main/default.txt").decode() == "cam1/x\ncam2/empty\n"
        assert archive.read("labelmap.txt").decode() == "# label:color_rgb:parts:actions\ncat:::\ndog:::\n"
        # CVAT matches <filename> (and the item id) to the task's frame names
        assert archive.read("Annotations/cam1/x.xml") == (out / "cam1" / "x.png.xml").read_bytes()
        assert read_voc(archive.read("Annotations/cam2/empty.xml")).filename == "cam2/empty.jpg"


def test_label_studio_config_and_urls_under_a_document_root(tmp_path):
    out = _export_folder_pool(tmp_path, labelstudio_document_root="/pool")
    tasks = _read_json(out / "preannotations_labelstudio.json")
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=cam1/x.png",
                                                   "/data/local-files/?d=cam2/empty.jpg"]
    assert (out / "label_config.xml").read_text() == (
        '<View>\n  <Image name="image" value="$image"/>\n  <RectangleLabels name="label" toName="image">\n'
        '    <Label value="cat"/>\n    <Label value="dog"/>\n  </RectangleLabels>\n</View>\n')


def test_images_outside_the_label_studio_root_are_reported(tmp_path):
    out = _export_folder_pool(tmp_path, labelstudio_document_root="/elsewhere")
    assert _read_json(out / "preannotations_labelstudio.json") == []
    skipped = _read_json(out / "skipped.json")
    assert set(skipped) == {"cam1/x.png", "cam2/empty.jpg"} and "document root" in skipped["cam1/x.png"]
    assert (out / "cam1" / "x.png.xml").exists()  # the other formats are still written


def test_label_studio_tasks_match_its_documented_import_format(tmp_path):
    # Label Studio's converter does not install from this machine's package index: check the
    # documented task format (labelstud.io/guide/tasks, /guide/predictions) field by field instead.
    out = _export_folder_pool(tmp_path)
    (task, empty) = _read_json(out / "preannotations_labelstudio.json")
    assert set(task) == {"data", "predictions"} and isinstance(task["data"]["image"], str)
    (prediction,) = task["predictions"]
    assert set(prediction) == {"model_version", "score", "result"} and prediction["model_version"] == "raylib round 3"
    for region in prediction["result"]:
        assert set(region) == {"id", "type", "from_name", "to_name", "original_width", "original_height",
                               "image_rotation", "score", "value"}
        assert (region["type"], region["from_name"], region["to_name"]) == ("rectanglelabels", "label", "image")
        assert set(region["value"]) == {"x", "y", "width", "height", "rotation", "rectanglelabels"}
        assert all(0 <= region["value"][k] <= 100 for k in ("x", "y", "width", "height"))
    assert empty["predictions"][0]["result"] == []


@pytest.mark.parametrize("uri, root, url", [
    ("s3://bucket/a b.jpg", None, "s3://bucket/a b.jpg"),
    ("/data/x/a b.jpg", None, "/data/local-files/?d=data/x/a%20b.jpg"),
    ("/data/x/a.jpg", "/data", "/data/local-files/?d=x/a.jpg"),
    ("/data/x/a.jpg", "/data/", "/data/local-files/?d=x/a.jpg"),
])
def test_label_studio_image_url(uri, root, url):
    from raylib.formats.labelstudio import image_url

    assert image_url(uri, root) == url


def test_label_studio_image_url_refuses_paths_outside_the_root():
    from raylib.formats.labelstudio import image_url

    with pytest.raises(ValueError, match="not under the Label Studio document root"):
        image_url("/data2/a.jpg", "/data")


def test_ray_tasks_export_the_same_files_as_one_process(ray_session, tmp_path, monkeypatch):
    """With Ray running, each scoring part is exported by its own task and the pieces are merged:
    the same XML files, COCO images and annotations (ids renumbered across parts), Label Studio
    tasks, URI list and CVAT zip as the in-process export."""
    import zipfile

    import ray

    from raylib import export

    status = _write(tmp_path, ["a", "b", "empty"], DETECTIONS)
    assert ray.is_initialized()
    monkeypatch.setattr(export, "MIN_IMAGES_FOR_TASKS", 0)  # tasks even for three images
    _export(tmp_path, status, tmp_path / "with_ray")
    ray_out = tmp_path / "with_ray"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as without Ray: parts in this process
    _export(tmp_path, status, tmp_path / "inline")
    inline = tmp_path / "inline"
    assert sorted(os.listdir(ray_out)) == sorted(os.listdir(inline))
    for name in ("a.xml", "b.xml", "empty.xml"):
        assert read_voc(str(ray_out / name)) == read_voc(str(inline / name))
    ours, theirs = _read_json(ray_out / EXPORT_FILES[0]), _read_json(inline / EXPORT_FILES[0])
    assert (ours["images"], ours["annotations"]) == (theirs["images"], theirs["annotations"])
    assert [im["id"] for im in ours["images"]] == [1, 2, 3]  # a, b from part 0 and 1: renumbered
    assert _read_json(ray_out / EXPORT_FILES[1]) == _read_json(inline / EXPORT_FILES[1])
    assert (ray_out / "selected_uris.txt").read_text() == (inline / "selected_uris.txt").read_text()
    with zipfile.ZipFile(ray_out / EXPORT_FILES[4]) as a, zipfile.ZipFile(inline / EXPORT_FILES[4]) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        assert a.read("ImageSets/Main/default.txt") == b.read("ImageSets/Main/default.txt") == b"a\nb\nempty\n"


def test_a_large_export_writes_coco_label_studio_and_cvat_files_per_part(tmp_path, monkeypatch):
    """Above SPLIT_FILES_ABOVE images, the single-file formats are written per scoring part: each a
    whole file, COCO ids unique across them, and the URI list still one file."""
    import zipfile

    from raylib import export, paths

    monkeypatch.setattr(export, "SPLIT_FILES_ABOVE", 2)
    status = _write(tmp_path, ["a", "b", "empty"], DETECTIONS)
    out = tmp_path / "pre"
    assert _export(tmp_path, status, out) == 3
    per_part = [paths.export_part_name(name, part) for part in (0, 1)
                for name in (paths.COCO_FILE, paths.LABELSTUDIO_FILE, paths.CVAT_ZIP_FILE)]
    assert sorted(os.listdir(out)) == sorted([MARKER, "a.xml", "b.xml", "empty.xml", paths.LABEL_CONFIG_FILE,
                                              paths.SELECTED_URIS_FILE, *per_part])
    assert per_part[0] == "preannotations_coco-part-00000.json"
    documents = [_read_json(out / paths.export_part_name(paths.COCO_FILE, part)) for part in (0, 1)]
    assert [[im["id"] for im in d["images"]] for d in documents] == [[1, 2], [3]]  # a, b | empty
    assert [[a["id"] for a in d["annotations"]] for d in documents] == [[1, 2, 3], []]
    tasks = [_read_json(out / paths.export_part_name(paths.LABELSTUDIO_FILE, part)) for part in (0, 1)]
    assert [[t["data"]["image_id"] for t in part] for part in tasks] == [["a", "b"], ["empty"]]
    with zipfile.ZipFile(out / paths.export_part_name(paths.CVAT_ZIP_FILE, 1)) as archive:
        assert archive.testzip() is None
        assert archive.read("ImageSets/Main/default.txt") == b"empty\n"
        assert archive.read("Annotations/empty.xml") == (out / "empty.xml").read_bytes()
    assert (out / paths.SELECTED_URIS_FILE).read_text() == "/data/a.jpg\n/data/b.jpg\n/data/empty.jpg\n"
