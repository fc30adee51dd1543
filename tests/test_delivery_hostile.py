"""Hostile and broken deliveries (issue 24), through the real importers: each bad value is an error row
for its image naming the field, or the correct label; a file is refused whole, by name, only when it
can't be read as its format; nothing kills the stage. And image bombs refused from the header, with
the peak memory measured."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import pyarrow as pa
import pytest
from PIL import Image

from raylib import images
from raylib.formats import deliveries, coco, voc
from raylib.formats.deliveries import import_voc
from raylib.formats.json_deliveries import import_coco, import_labelstudio
from tests.test_annotations import CLASSES, SELECTED, box, coco_doc, ls_region, ls_task, voc_xml, write

HUGE = 10**400  # 401 digits: float() of it raises OverflowError


def coco_image(image_id, file_name, width=100, height=80) -> dict:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def ann(ann_id, image_id, bbox, category_id=1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def errors_of(delivery) -> dict[str, str]:
    return dict(delivery.errors)


# --------------------------------------------------------------------------------- 1. duplicate ids


def test_coco_duplicate_image_id_is_an_error_for_the_images_not_an_empty_label(tmp_path):
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg"), coco_image(1, "zzz.jpg"),
                                         coco_image(2, "2007_000018.jpg")],
                                        [ann(1, 1, [1, 1, 5, 5]), ann(2, 2, [2, 2, 5, 5])]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == [{"image_id": "2007_000018", "objects": [box(0, 2, 2, 7, 7)]}]
    assert "duplicate image id 1" in errors_of(delivery)["2007_000017"]

    # Both images selected: neither gets the box, both are errors.
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg"), coco_image(1, "2007_000018.jpg")],
                                        [ann(1, 1, [1, 1, 5, 5])]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.num_rows == 0
    errors = errors_of(delivery)
    assert "duplicate image id 1" in errors["2007_000017"] and "duplicate image id 1" in errors["2007_000018"]


def test_coco_duplicate_category_id_refuses_the_file_naming_the_id(tmp_path):
    write(tmp_path / "bad.json", coco_doc([coco_image(1, "2007_000017.jpg")], [ann(1, 1, [1, 1, 5, 5], 1)],
                                          categories=[{"id": 1, "name": "dog"}, {"id": 1, "name": "cat"}]))
    write(tmp_path / "good.json", coco_doc([coco_image(1, "2007_000018.jpg")], [ann(1, 1, [1, 1, 5, 5], 2)]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000018"]  # the other file is still read
    ((key, reason),) = delivery.errors
    assert key == f"<{tmp_path / 'bad.json'}>" and "category id 1 is listed twice" in reason
    assert str(tmp_path / "bad.json") in reason


# ------------------------------------------------------------------------- 2. non-finite, unbounded


@pytest.mark.parametrize("bbox, expected", [
    ([-5000, 0, 1e39, 10], "outside the 100x80 image"),
    ([0, 0, float("inf"), 10], "bbox[2] is inf, not a finite number"),
    ([0, 0, float("nan"), 10], "bbox[2] is nan, not a finite number"),
    ([50, 10, 52, 10], "outside the 100x80 image"),  # x2 = 102: up to 101 would be clipped
    ([HUGE, 0, 5, 5], "bbox[0] is a huge integer, not a finite number"),
    ("1234", "bbox is '1234'; it must be a list of 4 numbers"),
    ([1, 2, 3], "must be a list of 4 numbers"),
    ([1, "2", 3, 4], "bbox[1] is '2', not a number"),
    ([1, True, 3, 4], "bbox[1] is True, not a number"),
])
def test_coco_bad_boxes_are_errors_for_their_image(tmp_path, bbox, expected):
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg"), coco_image(2, "2007_000018.jpg")],
                                        [ann(7, 1, bbox), ann(8, 2, [0, 0, 4, 4])]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000018"]
    reason = errors_of(delivery)["2007_000017"]
    assert expected in reason and "annotation 7" in reason and "a.json" in reason


def test_coco_box_one_pixel_outside_is_clipped_as_the_voc_reader_does(tmp_path):
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg")], [ann(1, 1, [-0.5, 70, 100.5, 11])]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == [{"image_id": "2007_000017", "objects": [box(0, 0, 70, 100, 80)]}]


def test_coco_without_a_size_still_refuses_boxes_beyond_any_image(tmp_path):
    write(tmp_path / "a.json", coco_doc([{"id": 1, "file_name": "2007_000017.jpg"}], [ann(1, 1, [0, 0, 1e39, 5])]))
    assert "outside any image" in errors_of(import_coco(str(tmp_path), SELECTED, CLASSES))["2007_000017"]


def test_coco_box_is_checked_against_the_image_header_not_the_stated_size(tmp_path):
    image = tmp_path / "pool" / "x.png"
    image.parent.mkdir()
    Image.new("RGB", (100, 80)).save(image)
    selected = {"x": str(image)}
    write(tmp_path / "in" / "a.json", coco_doc([coco_image(1, "x.png", 1000, 1000)], [ann(1, 1, [500, 500, 10, 10])]))
    delivery = import_coco(str(tmp_path / "in"), selected, CLASSES)
    assert "outside the 100x80 image" in errors_of(delivery)["x"]
    write(tmp_path / "in" / "a.json", coco_doc([{"id": 1, "file_name": "x.png"}], [ann(1, 1, [90, 70, 20, 20])]))
    assert "outside the 100x80 image" in errors_of(import_coco(str(tmp_path / "in"), selected, CLASSES))["x"]


def test_coco_box_is_checked_against_the_size_scoring_read_without_opening_the_image(tmp_path):
    # The oracle's selection carries the sizes scoring read (image_status); there is no image file here.
    selected = pa.table({"image_id": ["x"], "uri": [str(tmp_path / "nowhere" / "x.png")],
                         "width": pa.array([100], pa.int32()), "height": pa.array([80], pa.int32())})
    write(tmp_path / "in" / "a.json", coco_doc([coco_image(1, "x.png", 1000, 1000)], [ann(1, 1, [500, 500, 10, 10])]))
    assert "outside the 100x80 image" in errors_of(import_coco(str(tmp_path / "in"), selected, CLASSES))["x"]


def test_labelstudio_nan_size_and_outside_boxes_are_errors(tmp_path):
    region = ls_region("dog", 5, 10, 50, 20)
    tasks = [
        ls_task(1, {"image_id": "2007_000017"}, {"result": [{**region, "original_width": float("nan")}]}),
        ls_task(2, {"image_id": "2007_000018"}, {"result": [ls_region("dog", -5000, 0, 5100, 10)]}),
        ls_task(3, {"image_id": "gone"}, {"result": [ls_region("dog", 10, 10, HUGE, 10)]}),
        ls_task(4, {"image_id": "cam2/y.jpg"}, {"result": [region]}),
    ]
    write(tmp_path / "export.json", json.dumps(tasks))  # json writes NaN as NaN, which json reads back
    delivery = import_labelstudio(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.to_pylist() == [{"image_id": "cam2/y.jpg", "objects": [box(1, 10, 10, 110, 30)]}]
    errors = errors_of(delivery)
    assert "original width is nan, not a finite number" in errors["2007_000017"]
    assert "outside the 200x100 image" in errors["2007_000018"]
    assert "width is a huge integer, not a finite number" in errors["gone"]


def test_voc_size_beyond_float32_is_an_error(tmp_path):
    xml = voc_xml("2007_000017.jpg").replace(b"<width>100</width>", b"<width>1e39</width>")
    with pytest.raises(voc.VocError, match="larger than 1000000 px a side"):
        voc.read_voc(xml, name="a.xml")


# --------------------------------------------------------------------------------- 3. silent changes


@pytest.mark.parametrize("extra, difficult", [
    ({"difficult": "0"}, False), ({"iscrowd": "false"}, False), ({"difficult": "1"}, True),
    ({"difficult": 1}, True), ({"iscrowd": True}, True), ({"difficult": None}, False), ({}, False),
])
def test_coco_flags_are_read_as_written(tmp_path, extra, difficult):
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg")], [ann(1, 1, [1, 1, 5, 5], **extra)]))
    (row,) = import_coco(str(tmp_path), SELECTED, CLASSES).labels.to_pylist()
    assert row["objects"][0]["difficult"] is difficult


@pytest.mark.parametrize("extra", [{"difficult": "yes please"}, {"difficult": 2}, {"iscrowd": [1]},
                                   {"difficult": 1.0}])
def test_coco_unclear_flags_are_errors(tmp_path, extra):
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg")], [ann(1, 1, [1, 1, 5, 5], **extra)]))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.num_rows == 0 and "expected 0 or 1" in errors_of(delivery)["2007_000017"]


def test_voc_unclear_difficult_is_an_error():
    obj = b"<object><name>cat</name><difficult>maybe</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>" \
          b"<xmax>5</xmax><ymax>5</ymax></bndbox></object>"
    with pytest.raises(voc.VocError, match="<difficult> is 'maybe'; expected 0 or 1"):
        voc.read_voc(voc_xml("a.jpg").replace(b"</annotation>", obj + b"</annotation>"), name="a.xml")


def test_coco_without_annotations_is_refused_not_all_empty(tmp_path):
    write(tmp_path / "a.json", json.dumps({"images": [coco_image(1, "2007_000017.jpg")],
                                           "categories": [{"id": 1, "name": "cat"}]}))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.num_rows == 0 and "2007_000017" in delivery.missing
    ((key, reason),) = delivery.errors
    assert key == f"<{tmp_path / 'a.json'}>" and "no 'annotations' list" in reason


def test_labelstudio_tasks_are_matched_by_full_uri_not_base_name(tmp_path):
    selected = {"a": "s3://ours/pool/a.jpg", "b": "https://cdn.example.com/pool/b.jpg", "c": "/data/pool/c.jpg",
                "d": "s3://ours/pool/d.jpg", "e": "s3://ours/pool/e.jpg"}
    done = {"result": [ls_region("cat", 10, 10, 10, 10)]}
    tasks = [
        ls_task(1, {"image": "s3://someone-else/pool/a.jpg"}, done),  # same key, other bucket
        ls_task(2, {"image": "https://other.example.com/pool/b.jpg"}, done),  # same path, other host
        ls_task(3, {"image": "/data/local-files/?d=elsewhere/c.jpg"}, done),  # same base name, other folder
        ls_task(4, {"image": "s3://someone-else/pool/d.jpg", "image_id": "d"}, done),  # our id, their bucket
        ls_task(5, {"image": "s3://ours/pool/e.jpg"}, done),  # ours
        ls_task(6, {"image": "/data/local-files/?d=data/pool/c.jpg"}, {"result": []}),  # ours, local files
    ]
    write(tmp_path / "export.json", json.dumps(tasks))
    delivery = import_labelstudio(str(tmp_path), selected, CLASSES, sizes={})  # no S3 here to read headers from
    assert delivery.labels.column("image_id").to_pylist() == ["c", "e"]
    assert delivery.missing == ["a", "b"]
    assert list(errors_of(delivery)) == ["d"] and "another bucket, host or folder" in errors_of(delivery)["d"]

    # With Label Studio's document root, a local-files path is exact under it.
    write(tmp_path / "export.json", json.dumps([ls_task(1, {"image": "/data/local-files/?d=pool/c.jpg"}, done)]))
    assert import_labelstudio(str(tmp_path), selected, CLASSES, "/data", sizes={}).labels.num_rows == 1
    assert import_labelstudio(str(tmp_path), selected, CLASSES, "/other", sizes={}).labels.num_rows == 0


# ------------------------------------------------------------------- 4-7. one file kills the stage


def test_huge_integers_are_errors_for_their_image_not_overflow(tmp_path):
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg", width=HUGE), coco_image(2, "2007_000018.jpg")],
                                        [ann(1, 2, [1, 1, HUGE, 5])]))
    errors = errors_of(import_coco(str(tmp_path), SELECTED, CLASSES))
    assert "width is a huge integer" in errors["2007_000017"] and "bbox[2] is a huge integer" in errors["2007_000018"]


def test_deeply_nested_json_refuses_that_file_only(tmp_path):
    write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000)
    write(tmp_path / "good.json", coco_doc([coco_image(1, "2007_000017.jpg")], []))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000017"]
    assert errors_of(delivery)[f"<{tmp_path / 'deep.json'}>"].endswith("is nested too deeply to be an annotation export")


def test_big_json_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(deliveries, "MAX_JSON_BYTES", 1000)
    write(tmp_path / "big.json", coco_doc([coco_image(i, f"{i}.jpg") for i in range(100)], []))
    delivery = import_coco(str(tmp_path), SELECTED, CLASSES)
    assert "larger than 0 MiB; not an annotation export" in errors_of(delivery)[f"<{tmp_path / 'big.json'}>"]


def test_cp1252_reviewed_empty_uses_the_good_lines_and_names_the_bad_ones(tmp_path):
    write(tmp_path / "reviewed_empty.txt", "2007_000017\ncaf\u00e9.jpg\ngone\n".encode("cp1252"))
    delivery = import_voc(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000017", "gone"]
    ((key, reason),) = delivery.errors
    assert key.endswith("reviewed_empty.txt>") and "line(s) 2 of" in reason and "save the file as UTF-8" in reason


@pytest.mark.parametrize("bad_task", [
    ls_task(1, {"image_id": "2007_000017"}, {"result": [{**ls_region("cat", 1, 1, 5, 5), "value": {
        **ls_region("cat", 1, 1, 5, 5)["value"], "rotation": [1]}}]}),
    {"id": 1, "data": {"image_id": "2007_000017"}, "annotations": 5},
    ls_task(1, {"image_id": "2007_000017"}, {"result": [5]}),
    ls_task(1, {"image_id": "2007_000017"}, {"result": {"a": 1}}),
    ls_task(1, {"image_id": "2007_000017"}, {"result": [], "was_cancelled": "no"}),
    ls_task(1, {"image_id": "2007_000017"}, {"result": [{"type": "rectanglelabels", "value": "x"}]}),
])
def test_one_malformed_labelstudio_task_costs_its_image_only(tmp_path, bad_task):
    good = ls_task(2, {"image_id": "2007_000018"}, {"result": [ls_region("cat", 10, 10, 10, 10)]})
    write(tmp_path / "export.json", json.dumps([bad_task, good, "junk", {"data": 5}]))
    delivery = import_labelstudio(str(tmp_path), SELECTED, CLASSES)
    assert delivery.labels.column("image_id").to_pylist() == ["2007_000018"]
    errors = errors_of(delivery)
    assert "task 1" in errors["2007_000017"] and "export.json" in errors["2007_000017"]
    assert set(errors) == {"2007_000017", "<task #2>", "<task 3>"}  # tasks whose image can't be told


def test_object_cap_per_image(tmp_path, monkeypatch):
    monkeypatch.setattr(coco, "MAX_OBJECTS", 3)
    write(tmp_path / "a.json", coco_doc([coco_image(1, "2007_000017.jpg")], [ann(i, 1, [1, 1, 5, 5]) for i in range(4)]))
    assert "more than 3 boxes" in errors_of(import_coco(str(tmp_path), SELECTED, CLASSES))["2007_000017"]


# ---------------------------------------------------------------------------------------- 8-9. bombs


def png_idat_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real bomb: a 1-bit PNG whose IDAT holds every row (zeros), 400 MP in ~50 KB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    rows = (b"\0" * (1 + (width + 7) // 8)) * 1000
    idat = b"".join(compressor.compress(rows) for _ in range(height // 1000)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def ico_bomb(frame: bytes) -> bytes:
    """An icon whose directory says 16x16 and whose one frame is `frame` (a big PNG)."""
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(frame), 6 + 16)
    return b"\0\0\1\0" + struct.pack("<H", 1) + entry + frame


def webp_canvas_bomb(side: int = 16_383) -> bytes:
    """An animated WebP whose VP8X header says side x side (WebP's largest), frames 64x64: Pillow
    creates its animation decoder (the canvas) inside Image.open."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "WEBP", save_all=True, duration=10,
                                    append_images=[Image.new("RGB", (64, 64), (255, 0, 0))])
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:27] = data[27:30] = (side - 1).to_bytes(3, "little")
    return bytes(data)


# Runs in a fresh interpreter: ru_maxrss is the process's peak, so the decode's own peak is measured.
_MEASURE = """
import resource, sys
from raylib import images
data = open(sys.argv[1], 'rb').read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for call in (lambda: images.decode_image(data, 'bomb'), lambda: images.header_size(data, 'bomb'),
             lambda: images.probe(data, 'bomb', 40_000_000)):
    try:
        call()
        print('decoded')
    except images.ImageError as exc:
        print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("kind", ["png", "ico", "webp"])
def test_bombs_are_refused_from_the_header_with_peak_memory_measured(tmp_path, kind):
    data = {"png": png_idat_bomb, "ico": lambda: ico_bomb(png_idat_bomb()), "webp": webp_canvas_bomb}[kind]()
    assert len(data) < 100_000
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    *messages, peak_mb = out
    if kind in ("png", "webp"):
        assert "(400 MP), over the limit of 40 MP" in messages[0] or "(268 MP), over the limit" in messages[0]
        assert messages[1] == "decoded" and "over the limit" in messages[2]  # header_size: the size, no pixels
    else:
        assert all("ICO frame 0 is 20000x20000" in m and "refused before decoding" in m for m in messages)
    assert int(peak_mb) < 50  # decoding it would take 400 MB


def test_small_icons_still_decode():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buffer, "ICO", sizes=[(32, 32), (16, 16)])
    assert images.decode_image(buffer.getvalue(), "favicon.ico").shape == (32, 32, 3)


def test_image_reads_are_capped(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"\0" * 5000)
    with pytest.raises(images.ImageError, match="'big.jpg' is larger than 0 MiB; not read"):
        images.read_image_bytes(str(tmp_path / "big.jpg"), "big.jpg", max_bytes=4096)
    assert len(images.read_image_bytes(str(tmp_path / "big.jpg"), "big.jpg", max_bytes=5000)) == 5000
