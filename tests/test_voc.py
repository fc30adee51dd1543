"""VOC XML: round trip, real-world quirks, hostile and broken files, label tables."""
from __future__ import annotations

import time

import pytest

from raylib.formats import voc
from raylib.formats.voc import VocAnnotation, VocError, VocObject, read_voc, read_voc_labels, write_voc


def xml(objects: str = "", size: str = "<size><width>100</width><height>80</height><depth>3</depth></size>") -> bytes:
    return f"<annotation><filename>a.jpg</filename>{size}{objects}</annotation>".encode()


def obj(name: str = "dog", box: tuple = (10, 20, 50, 60), extra: str = "") -> str:
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name>{extra}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_with_confidence_and_difficult():
    ann = VocAnnotation(
        filename="2007_000017.jpg", width=480, height=364, depth=3,
        objects=[
            VocObject("horse", 123, 83, 429, 351, confidence=0.852),
            VocObject("person", 166.5, 63.25, 286, 204, difficult=True),
        ],
    )
    data = write_voc(ann, analysis_time="2021-11-27T13:41:49.897255")
    text = data.decode()
    assert "<confidence>85.2</confidence>" in text  # percent, one decimal (figure 6.3)
    assert "<analysis_time>2021-11-27T13:41:49.897255</analysis_time>" in text
    assert text.count("<confidence>") == 1 and text.count("<difficult>") == 2  # difficult always written
    # 1-based: pixel edge 123 is the 124th pixel's left side; x2 = 429 is the 429th pixel's right side
    assert "<xmin>124</xmin>" in text and "<xmax>429</xmax>" in text
    # 166.5 rounds half to even (166), 63.25 to 63: then +1
    assert "<xmin>167</xmin>" in text and "<ymin>64</ymin>" in text

    back = read_voc(data)
    assert (back.filename, back.width, back.height, back.depth) == ("2007_000017.jpg", 480, 364, 3)
    horse, person = back.objects
    assert horse.name == "horse" and horse.confidence == pytest.approx(0.852)
    assert (horse.x1, horse.y1, horse.x2, horse.y2) == (123, 83, 429, 351)  # whole pixels: exact
    assert person.difficult and person.confidence is None
    assert (person.x1, person.y1, person.x2, person.y2) == (166, 63, 286, 204)  # within half a pixel


DEVKIT_EXPECTED = """<annotation>
  <folder>JPEGImages</folder>
  <filename>000005.jpg</filename>
  <source>
    <database>raylib</database>
  </source>
  <size>
    <width>500</width>
    <height>375</height>
    <depth>3</depth>
  </size>
  <segmented>0</segmented>
  <object>
    <name>chair</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <confidence>42.0</confidence>
    <bndbox>
      <xmin>263</xmin>
      <ymin>211</ymin>
      <xmax>324</xmax>
      <ymax>339</ymax>
    </bndbox>
  </object>
  <object>
    <name>chair</name>
    <pose>Rear</pose>
    <truncated>1</truncated>
    <difficult>1</difficult>
    <bndbox>
      <xmin>1</xmin>
      <ymin>1</ymin>
      <xmax>500</xmax>
      <ymax>375</ymax>
    </bndbox>
  </object>
</annotation>
"""


def test_written_as_the_voc_devkit_writes_it():
    ann = VocAnnotation("000005.jpg", 500, 375, folder="JPEGImages", objects=[
        VocObject("chair", 262.4, 210.2, 323.6, 339.0, confidence=0.42),
        # Outside the image by a little: clipped to it.
        VocObject("chair", -0.3, 0, 500.4, 375, difficult=True, truncated=True, pose="Rear"),
    ])
    assert write_voc(ann).decode() == DEVKIT_EXPECTED
    back = read_voc(DEVKIT_EXPECTED.encode())
    assert back.folder == "JPEGImages" and back.database == "raylib"
    assert [(o.pose, o.truncated, o.difficult) for o in back.objects] == [
        ("Unspecified", False, False), ("Rear", True, True)]
    assert (back.objects[1].x1, back.objects[1].y1, back.objects[1].x2, back.objects[1].y2) == (0, 0, 500, 375)


@pytest.mark.parametrize("box, size, expected", [
    ((10, 20, 30, 40), (100, 80), (11, 21, 30, 40)),  # whole pixels: +1 on the low side only
    ((10.4, 20.6, 30.5, 39.5), (100, 80), (11, 22, 30, 40)),  # nearest edge, halves to even
    ((10.6, 5.0, 11.4, 5.2), (100, 80), (12, 6, 12, 6)),  # under a pixel: one pixel wide
    ((-2, -0.2, 104, 81), (100, 80), (1, 1, 100, 80)),  # clipped to the image
    ((-2, 0, 104, 81), (0, 0), (-1, 1, 104, 81)),  # size unknown: not clipped
])
def test_to_voc_box_rounding(box, size, expected):
    assert voc.to_voc_box(*box, *size) == expected


def test_sub_pixel_boxes_never_become_empty():
    back = read_voc(write_voc(VocAnnotation("a.jpg", 100, 80, objects=[VocObject("dog", 99.6, 79.7, 99.9, 79.9)])))
    (dog,) = back.objects
    assert (dog.x1, dog.y1, dog.x2, dog.y2) == (99, 79, 100, 80)


def test_xml_special_characters_are_escaped():
    ann = VocAnnotation("a&b<c>.jpg", 10, 10, objects=[VocObject("R&D <x>", 1, 1, 5, 5)])
    back = read_voc(write_voc(ann))
    assert back.filename == "a&b<c>.jpg" and back.objects[0].name == "R&D <x>"


def test_reads_from_path(tmp_path):
    path = tmp_path / "a.xml"
    path.write_bytes(xml(obj()))
    assert read_voc(str(path)).objects[0].name == "dog"


@pytest.mark.s3
def test_reads_from_s3(s3_bucket):
    from raylib import storage

    storage.write_bytes(f"{s3_bucket}/Annotations/a.xml", xml(obj("cat")))
    assert read_voc(f"{s3_bucket}/Annotations/a.xml").objects[0].name == "cat"


# ------------------------------------------------------------------------------------------- quirks


def test_real_voc_quirks_are_tolerated():
    # No <pose>/<truncated>/<difficult>, float coordinates, no depth, whitespace around values,
    # a box touching the far edge (VOC is 1-based: xmax == width).
    data = xml(
        obj("dog", (" 10.5 ", "20", "100", "80"))
        + "<object><name> cat </name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>30.7</xmax><ymax>40</ymax></bndbox></object>",
        size="<size><width>100</width><height>80</height></size>",
    )
    ann = read_voc(data)
    assert ann.depth == 3 and ann.folder == "" and ann.database == ""
    assert [o.name for o in ann.objects] == ["dog", "cat"]
    assert ann.objects[0].x1 == 9.5 and ann.objects[0].x2 == 100 and ann.objects[0].pose == "Unspecified"
    cat = ann.objects[1]
    assert cat.x2 == pytest.approx(30.7) and not cat.difficult and cat.truncated and cat.pose == "Left"


def test_xmin_equal_to_xmax_is_one_pixel():
    (dog,) = read_voc(xml(obj(box=(5, 7, 5, 7)))).objects  # 1-based inclusive: the 5th column, 7th row
    assert (dog.x1, dog.y1, dog.x2, dog.y2) == (4, 6, 5, 7)


def test_one_pixel_outside_is_tolerated_and_clipped_more_is_not():
    (dog,) = read_voc(xml(obj(box=(0, 0, 101, 81)))).objects  # a 0-based tool's box on a 100x80 image
    assert (dog.x1, dog.y1, dog.x2, dog.y2) == (0, 0, 100, 80)
    with pytest.raises(VocError, match="outside"):
        read_voc(xml(obj(box=(0, 0, 102, 60))))


def test_no_objects_is_an_empty_image():
    assert read_voc(xml()).objects == []


# ----------------------------------------------------------------------------------------- hostile

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename><size><width>10</width><height>10</height></size></annotation>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename><size><width>10</width><height>10</height></size></annotation>"""

DTD_ONLY = b"""<?xml version="1.0"?>
<!DOCTYPE annotation SYSTEM "http://127.0.0.1:9/voc.dtd">
<annotation><filename>a.jpg</filename><size><width>10</width><height>10</height></size></annotation>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY, DTD_ONLY], ids=["bomb", "external", "dtd"])
def test_hostile_xml_is_refused_quickly_without_content(data):
    start = time.perf_counter()
    with pytest.raises(VocError) as info:
        read_voc(data, name="upload/evil.xml")
    assert time.perf_counter() - start < 0.5
    message = str(info.value)
    assert "upload/evil.xml" in message and "refused" in message
    for leaked in ("lol", "root:", "/etc/passwd", "127.0.0.1", "secret"):
        assert leaked not in message


def test_oversized_file_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(voc, "MAX_XML_BYTES", 1000)
    path = tmp_path / "big.xml"
    path.write_bytes(xml(obj() * 50))
    with pytest.raises(VocError, match="larger than 1000 bytes"):
        read_voc(str(path))
    with pytest.raises(VocError, match="larger than"):
        read_voc(path.read_bytes())


def test_object_count_is_capped(monkeypatch):
    monkeypatch.setattr(voc, "MAX_OBJECTS", 3)
    assert len(read_voc(xml(obj() * 3)).objects) == 3
    with pytest.raises(VocError, match="4 objects"):
        read_voc(xml(obj() * 4))


@pytest.mark.parametrize(
    "data",
    [b"<annotation><size>", b"", b"not xml at all", xml(obj())[:-20], b"<annotation></wrong>"],
    ids=["truncated-open", "empty", "text", "truncated", "mismatched"],
)
def test_malformed_xml(data):
    with pytest.raises(VocError, match="'bad.xml' is malformed"):
        read_voc(data, name="bad.xml")


def test_wrong_root_element():
    with pytest.raises(VocError, match="expected <annotation>"):
        read_voc(b"<html><body/></html>", name="x.xml")


# -------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    "box, match",
    [
        ((51, 20, 50, 60), "empty or inverted"),  # x2 == x1 (xmin - 1 == xmax)
        ((60, 20, 50, 60), "empty or inverted"),  # x2 < x1
        ((10, 60, 50, 20), "empty or inverted"),  # y2 < y1
        ((10, 20, 150, 60), "outside"),
        ((10, 20, 50, 95), "outside"),
        ((-5, 20, 50, 60), "outside"),  # negative
        (("nan", 20, 50, 60), "not a finite number"),
        ((10, 20, "inf", 60), "not a finite number"),
        (("ten", 20, 50, 60), "not a number"),
        ((10, "", 50, 60), "no <ymin>"),
    ],
)
def test_bad_boxes_are_refused_naming_the_file(box, match):
    with pytest.raises(VocError, match=match) as info:
        read_voc(xml(obj("dog", box)), name="Annotations/x.xml")
    assert "Annotations/x.xml" in str(info.value) and "dog" in str(info.value)


@pytest.mark.parametrize(
    "size, match",
    [
        ("", "no <size>"),
        ("<size><width>100</width></size>", "no <height>"),
        ("<size><width>0</width><height>80</height></size>", "not a positive integer size"),
        ("<size><width>-3</width><height>80</height></size>", "not a positive integer size"),
        ("<size><width>abc</width><height>80</height></size>", "not a number"),
    ],
)
def test_bad_size_is_refused(size, match):
    with pytest.raises(VocError, match=match):
        read_voc(xml(obj(), size=size), name="x.xml")


def test_missing_name_and_missing_bndbox():
    with pytest.raises(VocError, match="object 0 has no <name>"):
        read_voc(xml("<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"))
    with pytest.raises(VocError, match="has no <bndbox>"):
        read_voc(xml("<object><name>dog</name></object>"))


def test_confidence_must_be_a_percentage():
    with pytest.raises(VocError, match="not a percentage"):
        read_voc(xml(obj(extra="<confidence>120</confidence>")))
    assert read_voc(xml(obj(extra="<confidence>0</confidence>"))).objects[0].confidence == 0.0


# ------------------------------------------------------------------------------------- label tables


def write_dataset(root, files: dict[str, bytes]) -> None:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for image_id, data in files.items():
        (root / "Annotations" / f"{image_id}.xml").write_bytes(data)


def test_read_voc_labels_maps_classes_and_reports_bad_files(tmp_path):
    classes = ["cat", "dog"]
    write_dataset(
        tmp_path,
        {
            "good": xml(obj("dog", (1, 2, 30, 40)) + obj("cat", (5, 5, 9, 9), "<difficult>1</difficult>")),
            "empty": xml(),
            "unknown": xml(obj("dog") + obj("zebra")),
            "broken": b"<annotation>",
        },
    )
    table, errors = read_voc_labels(str(tmp_path), ["good", "empty", "unknown", "broken", "missing", "../x"], classes)

    assert table.column_names == ["image_id", "objects"]
    rows = table.to_pylist()
    assert [r["image_id"] for r in rows] == ["good", "empty"]
    assert rows[0]["objects"] == [
        {"class_id": 1, "x1": 0.0, "y1": 1.0, "x2": 30.0, "y2": 40.0, "difficult": False},
        {"class_id": 0, "x1": 4.0, "y1": 4.0, "x2": 9.0, "y2": 9.0, "difficult": True},
    ]
    assert rows[1]["objects"] == []

    by_id = dict(errors)
    assert set(by_id) == {"unknown", "broken", "missing", "../x"}
    assert "zebra" in by_id["unknown"] and "unknown.xml" in by_id["unknown"]
    assert "malformed" in by_id["broken"]
    assert "not found" in by_id["missing"]
    assert "'..'" in by_id["../x"]


def test_read_voc_labels_table_fits_the_labels_schema(tmp_path):
    import pyarrow as pa

    from raylib import schemas

    write_dataset(tmp_path, {"a": xml(obj("dog"))})
    table, errors = read_voc_labels(str(tmp_path), ["a"], ["dog"])
    assert not errors
    full = table.append_column("split", pa.array(["train"])).append_column("round_added", pa.array([0], pa.int16()))
    checked = schemas.check(full.select(schemas.LABELS.names), schemas.LABELS, "labels")
    assert checked.column("objects").to_pylist()[0][0]["x1"] == 9.0


@pytest.mark.s3
def test_read_voc_labels_on_s3(s3_bucket):
    from raylib import storage

    for i in range(20):
        storage.write_bytes(f"{s3_bucket}/VOC/Annotations/{i:03d}.xml", xml(obj("dog", (i + 1, 1, i + 10, 30))))
    ids = [f"{i:03d}" for i in range(20)] + ["missing"]
    table, errors = read_voc_labels(f"{s3_bucket}/VOC", ids, ["dog"])
    assert table.column("image_id").to_pylist() == ids[:20]  # input order kept with concurrent reads
    assert [row[0]["x1"] for row in table.column("objects").to_pylist()] == [float(i) for i in range(20)]
    assert len(errors) == 1 and errors[0][0] == "missing" and "not found" in errors[0][1]


# ------------------------------------------------------------------------------ other projects' readers


def preannotation() -> VocAnnotation:
    return VocAnnotation("2007_000017.jpg", 480, 364, folder="JPEGImages", objects=[
        VocObject("horse", 122.6, 83.2, 428.9, 351.0, confidence=0.852),
        VocObject("person", 166.5, 63.25, 286, 204, difficult=True),
    ])


def test_yolox_parse_rec_reads_our_files(tmp_path):
    from yolox.evaluators.voc_eval import parse_rec

    path = tmp_path / "2007_000017.xml"
    path.write_bytes(write_voc(preannotation(), analysis_time="2021-11-27T13:41:49"))
    assert parse_rec(str(path)) == [
        {"name": "horse", "pose": "Unspecified", "truncated": 0, "difficult": 0, "bbox": [124, 84, 429, 351]},
        {"name": "person", "pose": "Unspecified", "truncated": 0, "difficult": 1, "bbox": [167, 64, 286, 204]},
    ]


def test_torchvision_voc_parser_reads_our_files():
    import xml.etree.ElementTree as ET

    from torchvision.datasets import VOCDetection

    parsed = VOCDetection.parse_voc_xml(ET.fromstring(write_voc(preannotation())))["annotation"]
    assert parsed["filename"] == "2007_000017.jpg" and parsed["folder"] == "JPEGImages"
    assert parsed["size"] == {"width": "480", "height": "364", "depth": "3"} and parsed["segmented"] == "0"
    horse, person = parsed["object"]
    assert horse["bndbox"] == {"xmin": "124", "ymin": "84", "xmax": "429", "ymax": "351"}
    assert (horse["name"], horse["difficult"], horse["confidence"]) == ("horse", "0", "85.2")
    assert (person["difficult"], person["truncated"], person["pose"]) == ("1", "0", "Unspecified")
