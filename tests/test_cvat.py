"""The CVAT zip written by hand (raylib/formats/cvat.py): zipfile and `unzip` read it, pieces join by a byte
copy, and over 65,535 entries it carries zip64 end records."""
from __future__ import annotations

import io
import shutil
import subprocess
import zipfile

import pytest

from raylib.formats import cvat

WHEN = "2026-12-03T10:23:46+00:00"


def test_item_is_the_file_name_without_its_extension():
    assert [cvat.item(n) for n in ("a.jpg", "cam1/x.png", "dir.v2/noext", ".hidden", "a.b.c")] == [
        "a", "cam1/x", "dir.v2/noext", ".hidden", "a.b"]


def test_zip_members_and_dates_read_back():
    data = cvat.voc_zip({"b.jpg": b"<b/>", "a.png": b"<a/>", "ü/c.jpg": b"<c/>" * 1000}, ["cat", "dog"], WHEN)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["Annotations/a.xml", "Annotations/b.xml", "Annotations/ü/c.xml",
                                      "ImageSets/Main/default.txt", "labelmap.txt"]
        assert archive.read("ImageSets/Main/default.txt") == "a\nb\nü/c\n".encode()
        assert archive.read("labelmap.txt") == b"# label:color_rgb:parts:actions\ncat:::\ndog:::\n"
        assert archive.getinfo("Annotations/a.xml").date_time == (2026, 12, 3, 10, 23, 46)
    assert cvat.voc_zip({"a.jpg": b"x"}, ["cat"], WHEN) == cvat.voc_zip({"a.jpg": b"x"}, ["cat"], WHEN)


def test_pieces_joined_by_a_byte_copy(tmp_path):
    first, first_entries = cvat.local_entries([("Annotations/a.xml", b"<a/>")], WHEN)
    second, second_entries = cvat.local_entries([("Annotations/b.xml", b"<b/>")], WHEN)
    entries = first_entries + [[*e[:5], e[5] + len(first)] for e in second_entries]
    data = first + second + cvat.central_directory(entries, len(first) + len(second), WHEN)
    (tmp_path / "joined.zip").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "joined.zip") as archive:
        assert [archive.read(n) for n in archive.namelist()] == [b"<a/>", b"<b/>"]
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-tq", str(tmp_path / "joined.zip")], check=True)


@pytest.mark.slow
def test_over_65535_entries_zip64():
    data = cvat.voc_zip({f"{n:06d}.jpg": b"<annotation/>" for n in range(70_000)}, ["cat"], WHEN)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert len(names) == 70_002 and archive.read("Annotations/069999.xml") == b"<annotation/>"
