"""CVAT's "PASCAL VOC 1.1" import (Datumaro's VOC format): the zip layout, its labelmap, its item names.

    Annotations/<item>.xml        one VOC file per image
    ImageSets/Main/default.txt    the items, one a line, sorted
    labelmap.txt                  `name:color_rgb:parts:actions` per class (our classes, no colours)

<item> is the image's file name without its extension: CVAT matches it to the task's frame names.

The zip is written here rather than with `zipfile`, so an export can build it in pieces: each task
deflates its own Annotations entries (`local_entries`), and the driver joins the pieces with a byte
copy, then writes the items, the labelmap and the central directory (`central_directory`, zip64 end
records when there are over 65,535 entries). Entries carry the export's time, so a zip is a function
of its contents and that time.
"""
from __future__ import annotations

import datetime as dt
import struct
import zlib
from collections.abc import Iterable

ANNOTATIONS_DIR = "Annotations/"
ITEMS_FILE = "ImageSets/Main/default.txt"
LABELMAP_FILE = "labelmap.txt"

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, then the name
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header, then the name and extra
_END = struct.Struct("<IHHHHIIH")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_UTF8 = 0x800  # general purpose flag: the name is UTF-8
_MAX32, _MAX16 = 0xFFFFFFFF, 0xFFFF
_FILE_ATTRIBUTES = 0o600 << 16  # as zipfile writes a member given by name


def item(file_name: str) -> str:
    """CVAT's item id for an image: its file name without the extension (a leading dot starts no
    extension: `.hidden` stays). The one rule for the export's zip and for reading a CVAT delivery."""
    base = file_name.rsplit("/", 1)[-1]
    return file_name[: len(file_name) - len(base) + base.rfind(".")] if "." in base.lstrip(".") else file_name


def labelmap(class_names: list[str]) -> str:
    return "# label:color_rgb:parts:actions\n" + "".join(f"{name}:::\n" for name in class_names)


def annotation_members(xml_by_file_name: dict[str, bytes]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The Annotations/ members for VOC files keyed by image file name, in item order, and the items
    (two file names with one item, `a.jpg` and `a.png`: one member, the later file's)."""
    by_item = {item(name): data for name, data in xml_by_file_name.items()}
    items = sorted(by_item)
    return [(f"{ANNOTATIONS_DIR}{name}.xml", by_item[name]) for name in items], items


def tail_members(items: Iterable[str], class_names: list[str]) -> list[tuple[str, bytes]]:
    """The members after the annotations: the sorted item list and the labelmap."""
    return [(ITEMS_FILE, "".join(f"{name}\n" for name in items).encode()),
            (LABELMAP_FILE, labelmap(class_names).encode())]


def dos_time(when: str) -> tuple[int, int]:
    """(time, date) of an ISO time in the zip's MS-DOS form (two-second resolution, from 1980)."""
    stamp = max(dt.datetime.fromisoformat(when).replace(tzinfo=None), dt.datetime(1980, 1, 1))
    return ((stamp.hour << 11) | (stamp.minute << 5) | (stamp.second // 2),
            ((stamp.year - 1980) << 9) | (stamp.month << 5) | stamp.day)


def local_entries(members: Iterable[tuple[str, bytes]], when: str) -> tuple[bytes, list[list]]:
    """Deflated zip entries (local headers and data) for `members`, and per entry [name, flags, crc,
    compressed size, size, offset from the first entry]: what `central_directory` needs."""
    time, date = dos_time(when)
    blob, entries = bytearray(), []
    for name, data in members:
        encoded = name.encode("utf-8")
        flags = 0 if encoded.isascii() else _UTF8
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        deflated = compressor.compress(data) + compressor.flush()
        if len(data) >= _MAX32 or len(deflated) >= _MAX32:
            raise ValueError(f"zip member '{name}' is over 4 GiB; a CVAT annotation is a few KB")
        crc = zlib.crc32(data)
        entries.append([name, flags, crc, len(deflated), len(data), len(blob)])
        blob += _LOCAL.pack(0x04034B50, 20, flags, zlib.DEFLATED, time, date, crc, len(deflated), len(data),
                            len(encoded), 0)
        blob += encoded
        blob += deflated
    return bytes(blob), entries


def central_directory(entries: Iterable[list], start: int, when: str) -> bytes:
    """The central directory and end records of a zip whose entries (`local_entries`, offsets from the
    start of the file) end at byte `start`."""
    time, date = dos_time(when)
    directory, count = bytearray(), 0
    for name, flags, crc, compressed, size, offset in entries:
        encoded = name.encode("utf-8")
        extra = b"" if offset < _MAX32 else struct.pack("<HHQ", 1, 8, offset)  # zip64: the offset
        version = 45 if extra else 20
        directory += _CENTRAL.pack(0x02014B50, (3 << 8) | version, version, flags, zlib.DEFLATED, time, date, crc,
                                   compressed, size, len(encoded), len(extra), 0, 0, 0, _FILE_ATTRIBUTES,
                                   min(offset, _MAX32))
        directory += encoded
        directory += extra
        count += 1
    end = start + len(directory)
    if count >= _MAX16 or start >= _MAX32 or len(directory) >= _MAX32:
        directory += _ZIP64_END.pack(0x06064B50, _ZIP64_END.size - 12, 45, 45, 0, 0, count, count, len(directory),
                                     start)
        directory += _ZIP64_LOCATOR.pack(0x07064B50, 0, end, 1)
    directory += _END.pack(0x06054B50, 0, 0, min(count, _MAX16), min(count, _MAX16), min(end - start, _MAX32),
                           min(start, _MAX32), 0)
    return bytes(directory)


def voc_zip(xml_by_file_name: dict[str, bytes], class_names: list[str], when: str) -> bytes:
    """A whole zip in the layout CVAT's "PASCAL VOC 1.1" import reads."""
    members, items = annotation_members(xml_by_file_name)
    blob, entries = local_entries([*members, *tail_members(items, class_names)], when)
    return blob + central_directory(entries, len(blob), when)
