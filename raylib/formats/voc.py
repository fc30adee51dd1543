"""Pascal VOC XML: read ground truth, write ground truth and pre-annotations (seed, figure 6.3).

Parsing goes through defusedxml with DTDs, entities and external references forbidden: annotation
files come from annotators and other tools, and an entity bomb or an external entity pointing at
`/etc/passwd` must be refused, not expanded. Errors are `VocError`s that name the file and what is
wrong, never the file's content.

Coordinates. Inside raylib a box is (x1, y1, x2, y2) in pixel-edge coordinates: the image spans
[0, width] x [0, height] and a box covering pixel columns 10..19 (0-based) is x1=10, x2=20. VOC writes
1-based, inclusive pixel indices: the same box is xmin=11, xmax=20, and a whole W x H image is
(1, 1, W, H). So, as detectron2's VOC loader does:

    reading   x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax      (floats accepted as written)
    writing   xmin = round(x1) + 1,  ymin = round(y1) + 1,  xmax = round(x2),  ymax = round(y2)

`round` is Python's (half to even), then the box is clipped to the image (when its size is known)
and widened to at least one pixel a side. A box whose corners are whole pixels round-trips exactly;
any other moves by at most half a pixel a coordinate (clipping aside). The reader accepts boxes that
reach one pixel past the image edge (tools disagree about 0- or 1-based) and clips them to it.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as StdET
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import numpy as np
import pyarrow as pa
from defusedxml import DefusedXmlException

from raylib import paths, schemas, storage

MAX_XML_BYTES = 10 * 1024 * 1024  # a VOC file is a few KB; anything this big is not an annotation
MAX_OBJECTS = 10_000
EDGE_TOLERANCE = 1.0  # pixels a box may reach outside the image (VOC is 1-based)
# An image side no camera or scan reaches; bounds every stored coordinate, far inside float32's range
# (a width of 1e39 would be stored as inf).
MAX_SIDE = 1_000_000
READ_THREADS = 16  # concurrent reads in read_voc_labels (S3 latency, not CPU, is the bound)



class VocError(ValueError):
    """A VOC XML file that can't be used; the message names the file and the problem."""


@dataclass
class VocObject:
    name: str
    x1: float  # pixel-edge coordinates (module docstring), not VOC's 1-based indices
    y1: float
    x2: float
    y2: float
    difficult: bool = False
    confidence: float | None = None  # detection confidence in [0, 1]; written as a percentage
    truncated: bool = False
    pose: str = "Unspecified"


@dataclass
class VocAnnotation:
    filename: str
    width: int
    height: int
    depth: int = 3
    objects: list[VocObject] = field(default_factory=list)
    folder: str = ""  # VOC devkit: the dataset's name ("VOC2007"); we write the image's parent folder
    database: str = "raylib"  # <source><database>


# ----------------------------------------------------------------------------------------- reading


def read_voc(source: str | bytes, name: str | None = None) -> VocAnnotation:
    """Parse one VOC annotation from a path/URI (local or s3://) or from XML bytes.

    `name` is what error messages call the file (default: the path, or `<bytes>`).
    Raises VocError for unreadable, hostile, malformed or inconsistent files.
    """
    if isinstance(source, (bytes, bytearray)):
        label = name or "<bytes>"
        data = bytes(source)
        if len(data) > MAX_XML_BYTES:
            raise VocError(f"VOC XML '{label}' is larger than {MAX_XML_BYTES} bytes; not an annotation file")
    else:
        label = name or source
        data = _read_xml(source, label)
    root = _parse(data, label)
    return _annotation(root, label)


def _read_xml(uri: str, label: str) -> bytes:
    """Read at most MAX_XML_BYTES + 1 bytes, so a huge file is refused without loading it whole."""
    try:
        data = storage.read_bytes(uri, MAX_XML_BYTES)
    except FileNotFoundError as exc:
        raise VocError(f"VOC XML '{label}' not found") from exc
    except OSError as exc:
        raise VocError(f"VOC XML '{label}' could not be read: {type(exc).__name__}") from exc
    if len(data) > MAX_XML_BYTES:
        raise VocError(f"VOC XML '{label}' is larger than {MAX_XML_BYTES} bytes; not an annotation file")
    return data


def _parse(data: bytes, label: str) -> StdET.Element:
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        # The exception text may hold entity names/URLs from the file: report only its kind.
        raise VocError(
            f"VOC XML '{label}' refused: it declares a DTD or entities ({type(exc).__name__}); "
            "annotation files must be plain XML"
        ) from None
    except StdET.ParseError as exc:
        raise VocError(f"VOC XML '{label}' is malformed: {exc}") from None
    if root.tag != "annotation":
        raise VocError(f"VOC XML '{label}': root element is <{root.tag}>, expected <annotation>")
    return root


def _text(element: StdET.Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _number(element: StdET.Element, tag: str, label: str, where: str) -> float:
    text = _text(element, tag)
    if text is None:
        raise VocError(f"VOC XML '{label}': {where} has no <{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise VocError(f"VOC XML '{label}': {where} <{tag}> is not a number ({text[:20]!r})") from None
    if not math.isfinite(value):
        raise VocError(f"VOC XML '{label}': {where} <{tag}> is {text[:20]!r}, not a finite number")
    return value


def _size(root: StdET.Element, label: str) -> tuple[int, int, int]:
    size = root.find("size")
    if size is None:
        raise VocError(f"VOC XML '{label}' has no <size>; width and height are required")
    width, height = (_number(size, tag, label, "<size>") for tag in ("width", "height"))
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise VocError(f"VOC XML '{label}': image size {width:g}x{height:g} is not a positive integer size")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise VocError(f"VOC XML '{label}': image size {width:g}x{height:g} is larger than {MAX_SIDE} px a side")
    depth = 3
    if _text(size, "depth") is not None:
        depth = int(_number(size, "depth", label, "<size>"))
    return int(width), int(height), depth


# Yes/no fields as text, one rule for every format (VOC's truncated/difficult, COCO's iscrowd/difficult, Label
# Studio's was_cancelled): what VOC devkit and JSON write; anything else ("yes", "2") is an error, not a guess.
FLAG_STRINGS = {"0": False, "false": False, "1": True, "true": True}


def _flag(element: StdET.Element, tag: str, label: str, where: str) -> bool:
    """A yes/no field: absent is no; anything but FLAG_STRINGS is an error, not a guess."""
    text = _text(element, tag)
    if text is None:
        return False
    if text.lower() in FLAG_STRINGS:
        return FLAG_STRINGS[text.lower()]
    raise VocError(f"VOC XML '{label}': {where} <{tag}> is {text[:20]!r}; expected 0 or 1")


def inside_image(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> tuple[float, ...]:
    """A box (pixel edges, x1 < x2, y1 < y2) clipped to the `width` x `height` image. A box reaching at
    most EDGE_TOLERANCE past an edge is clipped (tools disagree about 0- or 1-based pixels); one further
    out, or left with no area, raises ValueError saying which."""
    tol = EDGE_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise ValueError(f"lies outside the {width:g}x{height:g} image")
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"lies on the edge of the {width:g}x{height:g} image")
    return x1, y1, x2, y2


def _object(element: StdET.Element, index: int, width: int, height: int, label: str) -> VocObject:
    where = f"object {index}"
    name = _text(element, "name")
    if name is None:
        raise VocError(f"VOC XML '{label}': {where} has no <name>")
    where = f"object {index} ('{name[:40]}')"
    box = element.find("bndbox")
    if box is None:
        raise VocError(f"VOC XML '{label}': {where} has no <bndbox>")
    xmin, ymin, xmax, ymax = (_number(box, tag, label, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
    written = f"({xmin:g},{ymin:g},{xmax:g},{ymax:g})"
    x1, y1, x2, y2 = from_voc_box(xmin, ymin, xmax, ymax)
    if x2 <= x1 or y2 <= y1:
        raise VocError(f"VOC XML '{label}': {where} box {written} is empty or inverted")
    try:
        x1, y1, x2, y2 = inside_image(x1, y1, x2, y2, width, height)
    except ValueError as exc:
        raise VocError(f"VOC XML '{label}': {where} box {written} {exc}") from None
    confidence = None
    if _text(element, "confidence") is not None:
        percent = _number(element, "confidence", label, where)
        if not 0.0 <= percent <= 100.0:
            raise VocError(f"VOC XML '{label}': {where} <confidence> {percent:g} is not a percentage in [0, 100]")
        confidence = percent / 100.0
    return VocObject(name, x1, y1, x2, y2, difficult=_flag(element, "difficult", label, where),
                     confidence=confidence,
                     # <truncated> only travels back out in VOC files (labels don't use it): lenient.
                     truncated=FLAG_STRINGS.get((_text(element, "truncated") or "").lower(), False),
                     pose=_text(element, "pose") or "Unspecified")


def _annotation(root: StdET.Element, label: str) -> VocAnnotation:
    width, height, depth = _size(root, label)
    elements = root.findall("object")
    if len(elements) > MAX_OBJECTS:
        raise VocError(f"VOC XML '{label}' has {len(elements)} objects, more than the limit of {MAX_OBJECTS}")
    objects = [_object(element, i, width, height, label) for i, element in enumerate(elements)]
    source = root.find("source")
    database = (_text(source, "database") if source is not None else None) or ""
    return VocAnnotation(_text(root, "filename") or "", width, height, depth, objects,
                         folder=_text(root, "folder") or "", database=database)


# ----------------------------------------------------------------------------------------- writing


def from_voc_box(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """VOC's 1-based inclusive pixel indices -> pixel-edge coordinates (module docstring)."""
    return float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax)


def to_voc_box(x1: float, y1: float, x2: float, y2: float, width: int = 0, height: int = 0) -> tuple[int, int, int, int]:
    """One box's `to_voc_boxes`: pixel-edge coordinates -> VOC's integer (xmin, ymin, xmax, ymax)."""
    box = to_voc_boxes(np.array([[x1, y1, x2, y2]], np.float64), np.array([int(width or 0)]), np.array([int(height or 0)]))
    return tuple(int(v) for v in box[0])


def to_voc_boxes(boxes: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Pixel-edge boxes -> VOC's integer (xmin, ymin, xmax, ymax): round to the nearest pixel edge, +1 on
    xmin/ymin (1-based, inclusive), clip to a known image size (0: unknown) and keep at least one pixel a
    side. Whole-pixel boxes are exact; others move by at most half a pixel. (n, 4) float boxes and each
    box's image size -> (n, 4) int64. np.rint rounds half to even, as Python's `round`."""
    out = np.empty(boxes.shape, np.int64)
    for low, high, size in ((0, 2, width), (1, 3, height)):
        first, last = np.rint(boxes[:, low]).astype(np.int64) + 1, np.rint(boxes[:, high]).astype(np.int64)
        known = size > 0
        first = np.where(known, np.clip(first, 1, np.maximum(size, 1)), first)
        last = np.where(known, np.clip(last, 1, np.maximum(size, 1)), last)
        out[:, low], out[:, high] = first, np.maximum(first, last)
    return out


_VOC_HEAD = ("<annotation>\n  <folder>%s</folder>\n  <filename>%s</filename>\n%s  <source>\n"
             "    <database>%s</database>\n  </source>\n  <size>\n    <width>%d</width>\n"
             "    <height>%d</height>\n    <depth>%d</depth>\n  </size>\n  <segmented>0</segmented>\n")
_VOC_OBJECT_HEAD = ("  <object>\n    <name>%s</name>\n    <pose>%s</pose>\n    <truncated>%d</truncated>\n"
                    "    <difficult>%d</difficult>\n")
_VOC_CONFIDENCE = "    <confidence>%.1f</confidence>\n"
_VOC_OBJECT_BOX = ("    <bndbox>\n      <xmin>%d</xmin>\n      <ymin>%d</ymin>\n      <xmax>%d</xmax>\n"
                   "      <ymax>%d</ymax>\n    </bndbox>\n  </object>\n")
_UNSPECIFIED = escape("Unspecified")


@dataclass
class VocObjects:
    """The objects of many images, as arrays: image i's are rows bounds[i]:bounds[i + 1]."""
    bounds: np.ndarray  # (n_images + 1,) int
    names: list[str]  # class name per object
    boxes: np.ndarray  # (n, 4) float64, pixel-edge
    confidence: np.ndarray | None = None  # (n,) float64 in [0, 1] (clipped), NaN: none; None: no object has one
    poses: list[str | None] | None = None  # None: 'Unspecified'
    truncated: np.ndarray | None = None  # (n,) bool; None: all 0
    difficult: np.ndarray | None = None  # (n,) bool; None: all 0


def write_voc_files(filenames: list[str], folders: list[str], widths: np.ndarray, heights: np.ndarray,
                    objects: VocObjects, analysis_time: str | None = None, depths: np.ndarray | None = None,
                    databases: list[str] | None = None) -> list[bytes]:
    """The VOC XML of many images at once, as the VOC devkit writes it: folder, filename, source, size,
    segmented, and per object name, pose, truncated, difficult (always) and an integer bndbox
    (`to_voc_boxes`), so strict readers (`yolox.evaluators.voc_eval.parse_rec`, torchvision's
    VOCDetection) take it as is. The one VOC writer: `write_voc` (one image) and the export's
    pre-annotations (a scoring part's images) both call it.

    Our extras, which VOC readers ignore: `<analysis_time>` when given, and `<confidence>` (a
    percentage with one decimal) on objects that carry one (pre-annotations, seed figure 6.3)."""
    n = len(objects.names)
    per_box = np.repeat(np.arange(len(filenames)), np.diff(objects.bounds))
    voc_boxes = to_voc_boxes(objects.boxes.reshape(n, 4), widths[per_box], heights[per_box]).tolist()
    escaped = {name: escape(name) for name in set(objects.names)}
    poses = ([_UNSPECIFIED if pose is None else escape(pose) for pose in objects.poses] if objects.poses is not None
             else [_UNSPECIFIED] * n)
    truncated = objects.truncated.astype(np.int64).tolist() if objects.truncated is not None else [0] * n
    difficult = objects.difficult.astype(np.int64).tolist() if objects.difficult is not None else [0] * n
    confidence = ([None] * n if objects.confidence is None
                  else [None if c != c else c for c in (np.clip(objects.confidence, 0.0, 1.0) * 100).tolist()])
    lines = [_VOC_OBJECT_HEAD % (escaped[name], pose, trunc, diff)
             + ("" if conf is None else _VOC_CONFIDENCE % conf) + _VOC_OBJECT_BOX % tuple(box)
             for name, pose, trunc, diff, conf, box in zip(objects.names, poses, truncated, difficult, confidence,
                                                           voc_boxes)]
    time_line = "" if analysis_time is None else f"  <analysis_time>{escape(analysis_time)}</analysis_time>\n"
    depths = depths.tolist() if depths is not None else [3] * len(filenames)
    databases = [escape(db) for db in databases] if databases is not None else ["raylib"] * len(filenames)
    edges = objects.bounds.tolist()
    return [(_VOC_HEAD % (escape(folder), escape(name), time_line, database, width, height, depth)
             + "".join(lines[edges[i]:edges[i + 1]]) + "</annotation>\n").encode("utf-8")
            for i, (name, folder, width, height, depth, database)
            in enumerate(zip(filenames, folders, widths.tolist(), heights.tolist(), depths, databases))]


def write_voc(ann: VocAnnotation, analysis_time: str | None = None) -> bytes:
    """One image's VOC XML (`write_voc_files`)."""
    objs = ann.objects
    objects = VocObjects(
        bounds=np.array([0, len(objs)]), names=[obj.name for obj in objs],
        boxes=np.array([[obj.x1, obj.y1, obj.x2, obj.y2] for obj in objs], np.float64).reshape(len(objs), 4),
        confidence=np.array([np.nan if obj.confidence is None else obj.confidence for obj in objs], np.float64),
        poses=[obj.pose or None for obj in objs], truncated=np.array([bool(obj.truncated) for obj in objs], bool),
        difficult=np.array([bool(obj.difficult) for obj in objs], bool))
    return write_voc_files([ann.filename], [ann.folder], np.array([int(ann.width)]), np.array([int(ann.height)]),
                           objects, analysis_time, np.array([int(ann.depth)]), [ann.database])[0]


def write_voc_preannotations(filenames: list[str], folders: list[str], widths: np.ndarray, heights: np.ndarray,
                             bounds: np.ndarray, class_id: np.ndarray, boxes: np.ndarray, confidence: np.ndarray,
                             class_names: list[str], analysis_time: str) -> list[bytes]:
    """Pre-annotations of many images (`write_voc_files`), each object with a confidence. Image i's
    objects are rows bounds[i]:bounds[i + 1] of class_id (int), boxes ((n, 4) float64, pixel-edge) and
    confidence (float64, clipped to [0, 1])."""
    names = [class_names[c] for c in class_id.tolist()]
    return write_voc_files(filenames, folders, widths, heights,
                           VocObjects(bounds, names, boxes, np.asarray(confidence, np.float64)), analysis_time)


# ------------------------------------------------------------------------------------ label tables


def _labels_of(voc_root: str, image_id: str, class_ids: dict[str, int]) -> list[dict]:
    """Objects of one image as OBJECT dicts; raises (VocError, UnsafeIdError) for this image only."""
    paths.safe_relpath(image_id)
    return label_objects(storage.join(voc_root, "Annotations", f"{image_id}.xml"), class_ids)


def label_objects(uri: str, class_ids: dict[str, int]) -> list[dict]:
    """The objects of the VOC file at `uri` as OBJECT dicts (schemas.OBJECT); raises VocError for a
    bad file or a class name not in `class_ids` (name -> class_id)."""
    ann = read_voc(uri)
    objects = []
    for obj in ann.objects:
        if obj.name not in class_ids:
            raise VocError(
                f"VOC XML '{uri}': unknown class '{obj.name[:40]}'; expected one of the configured "
                f"data.classes ({len(class_ids)} names)"
            )
        objects.append(
            {"class_id": class_ids[obj.name], "x1": obj.x1, "y1": obj.y1, "x2": obj.x2, "y2": obj.y2,
             "difficult": obj.difficult}
        )
    return objects


def read_voc_labels(
    voc_root: str, image_ids: Iterable[str], class_names: list[str]
) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Read `<voc_root>/Annotations/<id>.xml` for each id into an `image_id`/`objects` table.

    Images whose file is missing, unsafe, malformed or names an unknown class are left out of the
    table and returned as (image_id, error message) pairs: one bad file costs one image, not the call.
    """
    class_ids = {name: i for i, name in enumerate(class_names)}

    def one(image_id: str) -> tuple[str, list[dict] | None, str | None]:
        try:
            return image_id, _labels_of(voc_root, image_id, class_ids), None
        except (VocError, paths.UnsafeIdError) as exc:
            return image_id, None, str(exc)

    ids, objects, errors = [], [], []
    with ThreadPoolExecutor(max_workers=1 if not storage.is_s3(voc_root) else READ_THREADS) as executor:
        for image_id, image_objects, error in executor.map(one, image_ids):
            if error is not None:
                errors.append((image_id, error))
            else:
                ids.append(image_id)
                objects.append(image_objects)
    table = pa.table(
        {"image_id": pa.array(ids, pa.string()), "objects": pa.array(objects, pa.list_(schemas.OBJECT))},
        schema=schemas.LABEL_FIELDS,
    )
    return table, errors
