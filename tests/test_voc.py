"""VOC XML: round trip, real-world quirks, hostile and broken files, label tables."""
from __future__ import annotations

import time

import pytest

from raylib import voc
from raylib.voc import VocAnnotation, VocError, VocObject, read_voc, read_voc_labels, write_voc


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
    assert text.count("<confidence>") == 1 and text.count("<difficult>") == 1
    assert "<xmin>123</xmin>" in text  # whole pixels are written as VOC integers

    back = read_voc(data)
    assert (back.filename, back.width, back.height, back.depth) == ("2007_000017.jpg", 480, 364, 3)
    horse, person = back.objects
    assert horse.name == "horse" and horse.confidence == pytest.approx(0.852)
    assert (horse.x1, horse.y1, horse.x2, horse.y2) == (123, 83, 429, 351)
    assert person.difficult and person.confidence is None
    assert (person.x1, person.y1) == (166.5, 63.25)


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
    assert ann.depth == 3
    assert [o.name for o in ann.objects] == ["dog", "cat"]
    assert ann.objects[0].x1 == 10.5 and ann.objects[0].x2 == 100
    assert ann.objects[1].x2 == pytest.approx(30.7) and not ann.objects[1].difficult


def test_one_pixel_outside_is_tolerated_more_is_not():
    assert read_voc(xml(obj(box=(0, 0, 101, 81)))).objects[0].x2 == 101
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
        ((50, 20, 50, 60), "empty or inverted"),  # x2 == x1
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
        {"class_id": 1, "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "difficult": False},
        {"class_id": 0, "x1": 5.0, "y1": 5.0, "x2": 9.0, "y2": 9.0, "difficult": True},
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
    assert checked.column("objects").to_pylist()[0][0]["x1"] == 10.0


@pytest.mark.s3
def test_read_voc_labels_on_s3(s3_bucket):
    from raylib import storage

    for i in range(20):
        storage.write_bytes(f"{s3_bucket}/VOC/Annotations/{i:03d}.xml", xml(obj("dog", (i, 1, i + 10, 30))))
    ids = [f"{i:03d}" for i in range(20)] + ["missing"]
    table, errors = read_voc_labels(f"{s3_bucket}/VOC", ids, ["dog"])
    assert table.column("image_id").to_pylist() == ids[:20]  # input order kept with concurrent reads
    assert [row[0]["x1"] for row in table.column("objects").to_pylist()] == [float(i) for i in range(20)]
    assert len(errors) == 1 and errors[0][0] == "missing" and "not found" in errors[0][1]
