"""A review page per round, `round=NN/review/index.html` (`seed/review/` for the seed set): what the round
selected, for people to look at, beside the annotators' files. Static HTML with inline CSS and SVG, no
script, no server: it opens from a local folder or a downloaded S3 prefix.

    the pool    images scored and unreadable, detections, and the histogram of every detection's score
    per class   its threshold (the k-th lowest score, figure 6.5) and candidates, the images its quota
                selected, the histogram of its detections' scores with the threshold marked, and its first
                THUMBNAILS_PER_CLASS images by rank (lowest score first) with the model's boxes, each
                image's score and rank. The take-all round's and the seed set's selections (class -1,
                made by no quota) are one more section.

Capped per class: a page holds at most (classes + 1) x THUMBNAILS_PER_CLASS thumbnails of at most
THUMBNAIL_SIDE px, whatever the round's size (a 10^6-image take-all round makes a page of 24 thumbnails).

Thumbnails are JPEG files beside the page (`paths.review_thumbnail`), not data URIs: each part's task
writes its own, no image bytes pass through the driver, the HTML stays small (base64 would add a third
to every image and make the page one file of megabytes to parse), and the browser loads them lazily.
Boxes are SVG drawn over the thumbnail in the image's own pixel frame (viewBox = its stored size): the
stored coordinates, sharp at any zoom, not pixels baked into a JPEG. A box's colour is its confidence
cls_conf x loc_conf (the export's `<confidence>`, what annotators see; the selection score under the
default strategy) in five bands from red (unsure) to green (sure).

How it scales, like the export: one pass over the selection keeps its rows of rank < cap and counts
rows per class; then one Ray task per scoring part reads that part's image_status and detections, adds
its scores to the histograms and hands back its shown images' rows and boxes; then tasks of
THUMBNAILS_PER_TASK images (from THUMBNAILS_IN_TASKS images on; fewer are decoded in the stage's process)
decode (the one decoder, `images.decode_image`), shrink and write the thumbnails. The driver holds O(classes x cap) rows and the histograms, never the pool.
An image that can't be shown (unreadable, over `data.max_pixels`, an error row of scoring) is a
placeholder with the reason; every string from data is HTML-escaped.
"""
from __future__ import annotations

import html
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylib import paths, runtime, storage
from raylib.export import MIN_IMAGES_FOR_TASKS, WRITE_THREADS
from raylib.paths import RoundPaths

THUMBNAILS_PER_CLASS = 24  # a page of (classes + 1) x 24 images: one screen per class, ~0.2 MB of JPEG
THUMBNAIL_SIDE = 256  # px, the longer side (never enlarged)
# Thumbnails per task: the decoder imports torch, seconds in each new worker process (49 s on a loaded
# cpu-2), so the page's images are decoded in a few tasks of this many, not in every part's task; and a
# page of fewer than THUMBNAILS_IN_TASKS images (a few classes) is decoded here, where the stage has torch
# already: 24 thumbnails take ~0.5 s, less than one worker's import.
THUMBNAILS_PER_TASK = 64
THUMBNAILS_IN_TASKS = 256
JPEG_QUALITY = 85
HISTOGRAM_BINS = 50  # over [0, 1]: every strategy's score is in [0, 1] (strategies.detection_scores)
NO_CLASS = -1  # the selection's class_id for the take-all round and the seed set (no class quota)
# Confidence bands [0, .2), [.2, .4), ... [.8, 1]: red = the model is unsure, green = sure.
CONFIDENCE_COLOURS = ("#e31a1c", "#ff7f00", "#ffd700", "#7fbc41", "#1a9641")
OTHER_CLASS_DASH = ' stroke-dasharray="5 4"'  # a box of another class than its section's
DETECTION_COLUMNS = ["image_id", "class_id", "cls_conf", "loc_conf", "score", "x1", "y1", "x2", "y2"]


@dataclass(frozen=True)
class ShownImage:
    """A thumbnail of the page, or its placeholder."""
    image_id: str
    thumbnail: str | None  # relative to the page; None: a placeholder showing `error`
    error: str | None
    width: int  # the stored image's size: the boxes' frame (0: unknown)
    height: int
    thumb_width: int  # the thumbnail's, as displayed
    thumb_height: int
    boxes: list[tuple[int, float, float, float, float, float]]  # class_id, confidence, x1, y1, x2, y2


@dataclass(frozen=True)
class ToShow:
    """A page image as its scoring part knows it: its image_status row and its boxes."""
    index: int  # its position among the page's images (sorted ids): names its thumbnail
    row: dict  # image_id, status, error, width, height, uri
    boxes: list[tuple[int, float, float, float, float, float]]  # class_id, confidence, x1, y1, x2, y2


@dataclass(frozen=True)
class PartReview:
    """What one scoring part adds to the page."""
    histogram: np.ndarray  # (classes, HISTOGRAM_BINS) int64: its detections' scores per class
    n_images: int
    n_errors: int  # image_status rows with status error
    to_show: list[ToShow]


@dataclass(frozen=True)
class ClassSection:
    class_id: int  # NO_CLASS: the take-all or seed selection
    n_selected: int  # images its quota selected
    threshold: float | None  # None: no candidate, or no class quota
    n_candidates: int | None
    rows: list[tuple[str, float, int]]  # (image_id, score, rank) of its shown images, by rank


@dataclass(frozen=True)
class ReviewSummary:
    page: str
    n_thumbnails: int
    n_placeholders: int


def write_review(rp: RoundPaths, class_names: list[str], max_pixels: int | None = None,
                 per_class: int = THUMBNAILS_PER_CLASS) -> ReviewSummary:
    """Write round `rp`'s review page and thumbnails under `rp.review` (module docstring), from its
    selection, thresholds, image_status and detections. `max_pixels`: `data.max_pixels` (an image over
    it is a placeholder, as scoring refused it); None: the decoder's default."""
    from raylib.report import row_count  # matplotlib: the driver's, not every task's

    storage.delete(rp.review)  # what an earlier, interrupted export left
    status_files = storage.list_files(rp.image_status, ".parquet")
    in_tasks = ray.is_initialized() and row_count(rp.image_status) >= MIN_IMAGES_FOR_TASKS
    head, counts = (runtime.in_task if in_tasks else _here)(selection_head, rp.selection, per_class)
    shown_ids = pc.unique(head.column("image_id"))
    shown_ids = shown_ids.take(pc.array_sort_indices(shown_ids))
    calls = [(uri, storage.join(rp.detections, uri.rsplit("/", 1)[-1]), shown_ids, len(class_names))
             for uri in status_files]
    parts = _map(review_part, calls, in_tasks)
    histogram = sum((part.histogram for part in parts), np.zeros((len(class_names), HISTOGRAM_BINS), np.int64))
    to_show = sorted((item for part in parts for item in part.to_show), key=lambda item: item.index)
    chunks = [(to_show[n:n + THUMBNAILS_PER_TASK], rp.review, max_pixels)
              for n in range(0, len(to_show), THUMBNAILS_PER_TASK)]
    decoded = _map(make_thumbnails, chunks, in_tasks and len(to_show) >= THUMBNAILS_IN_TASKS)
    images = {image.image_id: image for chunk in decoded for image in chunk}
    sections = class_sections(head, counts, _thresholds(rp.thresholds))
    seed = rp.round_idx == paths.SEED_ROUND
    pool = (sum(part.n_images for part in parts), sum(part.n_errors for part in parts))
    storage.write_text(rp.review_page, page_html(
        "seed set" if seed else f"round {rp.round_idx}", class_names, sections, images, histogram, pool, per_class,
        "the seed set (a sample, no model yet)" if seed else "every image left (the take-all round)"))
    n_thumbnails = sum(image.thumbnail is not None for image in images.values())
    return ReviewSummary(rp.review_page, n_thumbnails, len(shown_ids) - n_thumbnails)


def _here(function: Callable, *args):
    return function(*args)


def _map(function: Callable, calls: list[tuple], in_tasks: bool) -> list:
    """`function(*args)` for each args: one Ray task each (as the export's parts), or in this process."""
    if not in_tasks:
        return [function(*args) for args in calls]
    remote = ray.remote(num_cpus=0.5)(function)
    return ray.get([remote.remote(*args) for args in calls])


def selection_head(selection_uri: str, per_class: int) -> tuple[pa.Table, dict[int, int]]:
    """The selection's rows of rank < `per_class` (image_id, class_id, score, rank; by class, then rank)
    and its number of rows per class, in one streamed pass: a take-all selection has a row per image."""
    heads, counts = [], {}
    columns = ["image_id", "class_id", "score", "rank"]
    for batch in storage.iter_parquet_batches(selection_uri, columns=columns):
        classes, n = np.unique(batch.column("class_id").to_numpy(zero_copy_only=False), return_counts=True)
        for class_id, count in zip(classes.tolist(), n.tolist()):
            counts[class_id] = counts.get(class_id, 0) + count
        heads.append(pa.Table.from_batches([batch]).filter(pc.less(batch.column("rank"), per_class)))
    head = pa.concat_tables(heads) if heads else pa.table({c: [] for c in columns})
    return head.sort_by([("class_id", "ascending"), ("rank", "ascending")]), counts


def _thresholds(uri: str) -> dict[int, tuple[float | None, int]]:
    """class_id -> (threshold, n_candidates); none for a take-all round or the seed set (no file or rows)."""
    if not storage.exists(uri):
        return {}
    return {row["class_id"]: (row["threshold"], row["n_candidates"]) for row in storage.read_table(uri).to_pylist()}


def class_sections(head: pa.Table, counts: dict[int, int],
                   thresholds: dict[int, tuple[float | None, int]]) -> list[ClassSection]:
    """One section per class the selection or the thresholds name, by class id; NO_CLASS last."""
    rows: dict[int, list[tuple[str, float, int]]] = {}
    for image_id, class_id, score, rank in zip(*(head.column(c).to_pylist()
                                                 for c in ("image_id", "class_id", "score", "rank"))):
        rows.setdefault(class_id, []).append((image_id, score, rank))
    ids = sorted(set(counts) | set(thresholds), key=lambda c: (c == NO_CLASS, c))
    return [ClassSection(c, counts.get(c, 0), *thresholds.get(c, (None, None)), rows.get(c, [])) for c in ids]


def review_part(status_uri: str, detections_uri: str, shown_ids: pa.Array, n_classes: int) -> PartReview:
    """One scoring part's share of the page: the histogram of its detections' scores per class, its
    image counts, and the status rows and boxes of its images among `shown_ids` (the page's images,
    sorted: an image's position there names its thumbnail)."""
    status = storage.read_table(status_uri, columns=["image_id", "status", "error", "width", "height", "uri"])
    n_images = status.num_rows
    n_errors = pc.sum(pc.equal(status.column("status"), "error")).as_py() or 0
    status = status.filter(pc.is_in(status.column("image_id"), value_set=shown_ids))
    histogram = np.zeros(n_classes * HISTOGRAM_BINS, np.int64)
    boxes: dict[str, list] = {}
    if storage.exists(detections_uri):
        detections = storage.read_table(detections_uri, columns=DETECTION_COLUMNS)
        class_id = detections.column("class_id").to_numpy(zero_copy_only=False).astype(np.int64)
        score = detections.column("score").to_numpy(zero_copy_only=False)
        bins = np.clip((score * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        known = (class_id >= 0) & (class_id < n_classes)
        histogram += np.bincount(class_id[known] * HISTOGRAM_BINS + bins[known], minlength=histogram.size)
        boxes = _boxes_by_image(detections.filter(pc.is_in(detections.column("image_id"), value_set=shown_ids)))
    positions = pc.index_in(status.column("image_id"), value_set=shown_ids).to_pylist()
    to_show = [ToShow(index, row, boxes.get(row["image_id"], [])) for row, index in zip(status.to_pylist(), positions)]
    return PartReview(histogram.reshape(n_classes, HISTOGRAM_BINS), n_images, n_errors, to_show)


def make_thumbnails(to_show: list[ToShow], out_dir: str, max_pixels: int | None) -> list[ShownImage]:
    """Decode, shrink and write the thumbnails of `to_show` under `out_dir`; placeholders where they can't be."""
    show = lambda item: _show(item, out_dir, max_pixels)  # noqa: E731
    if storage.is_s3(out_dir):  # S3 GET/PUT latency, not CPU, is the bound (as the export's writes)
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            return list(pool.map(show, to_show))
    return [show(item) for item in to_show]


def _boxes_by_image(detections: pa.Table) -> dict[str, list]:
    """image_id -> [(class_id, confidence, x1, y1, x2, y2)], most confident first (drawn last, on top)."""
    columns = {c: detections.column(c).to_pylist() for c in DETECTION_COLUMNS}
    boxes: dict[str, list] = {}
    for n, image_id in enumerate(columns["image_id"]):
        confidence = float(np.float32(columns["cls_conf"][n]) * np.float32(columns["loc_conf"][n]))
        boxes.setdefault(image_id, []).append((columns["class_id"][n], confidence,
                                               *(columns[c][n] for c in ("x1", "y1", "x2", "y2"))))
    return {image_id: sorted(rows, key=lambda box: box[1]) for image_id, rows in boxes.items()}


def _show(item: ToShow, out_dir: str, max_pixels: int | None) -> ShownImage:
    """The thumbnail of one image, written to `out_dir`; a placeholder with the reason if it can't be."""
    from raylib import images  # torch: loaded by the tasks that decode, not by whoever imports this module

    row, boxes = item.row, item.boxes
    image_id, width, height = row["image_id"], row["width"] or 0, row["height"] or 0
    error = (row["error"] or "scoring could not read it") if row["status"] == "error" else None
    if error is None and not row["uri"]:
        error = "no uri in image_status"
    if error is None:
        try:
            limit = images.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
            pixels = images.decode_image(images.read_image_bytes(row["uri"], image_id), image_id, limit)
        except images.ImageError as exc:
            error = str(exc)
    if error is not None:
        return ShownImage(image_id, None, error, width, height, 0, 0, boxes)
    data, thumb_size = thumbnail_jpeg(pixels)
    relpath = paths.review_thumbnail(item.index)
    storage.write_bytes(storage.join(out_dir, *relpath.split("/")), data)
    return ShownImage(image_id, relpath, None, pixels.shape[1], pixels.shape[0], *thumb_size, boxes)


def thumbnail_jpeg(bgr: np.ndarray) -> tuple[bytes, tuple[int, int]]:
    """A decoded image (HxWx3 uint8 BGR) shrunk to THUMBNAIL_SIDE on its longer side, as JPEG bytes,
    and the thumbnail's (width, height)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), image.size


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure.thumb{margin:0;width:262px}
.frame{position:relative;background:#ddd}
.frame img,.frame svg{position:absolute;left:0;top:0;display:block}
.placeholder{width:256px;height:144px;background:#f6dede;border:1px solid #c33;padding:6px;box-sizing:border-box;
font-size:12px;overflow:auto;word-break:break-all}
figcaption{font-size:12px;word-break:break-all;margin-top:2px}
.legend span{display:inline-block;padding:1px 8px;margin-right:4px;color:#000}"""


def _e(value: object) -> str:
    """Any string from data (image ids, class names, URIs, errors) as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def _class_name(class_names: list[str], class_id: int) -> str:
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"class {class_id}"


def box_colour(confidence: float) -> str:
    """The colour of a box of confidence in [0, 1] (CONFIDENCE_COLOURS' bands)."""
    band = min(max(int(confidence * len(CONFIDENCE_COLOURS)), 0), len(CONFIDENCE_COLOURS) - 1)
    return CONFIDENCE_COLOURS[band]


def histogram_svg(counts: np.ndarray, threshold: float | None, label: str) -> str:
    """Bars of `counts` (HISTOGRAM_BINS over scores [0, 1]) as inline SVG; the threshold as a dashed line."""
    width, height, bar = 400, 80, 400 / HISTOGRAM_BINS
    top = max(int(counts.max()) if counts.size else 0, 1)
    bars = "".join(f'<rect x="{n * bar:.1f}" y="{height - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" fill="#4a7fb5">'
                   f"<title>{n / HISTOGRAM_BINS:.2f}-{(n + 1) / HISTOGRAM_BINS:.2f}: {int(c)}</title></rect>"
                   for n, c in enumerate(counts) if c for h in [max(c / top * height, 1.0)])
    line = "" if threshold is None else (
        f'<line x1="{threshold * width:.1f}" x2="{threshold * width:.1f}" y1="0" y2="{height}" stroke="#c00" '
        f'stroke-width="2" stroke-dasharray="4 3"><title>threshold {threshold:.4f}</title></line>')
    axis = "".join(f'<text x="{x * width:.0f}" y="{height + 13}" font-size="11" text-anchor="middle">{x:g}</text>'
                   for x in (0, 0.25, 0.5, 0.75, 1))
    return (f'<svg class="histogram" width="{width + 20}" height="{height + 16}" viewBox="-10 0 {width + 20} '
            f'{height + 16}" role="img" aria-label="{_e(label)}"><title>{_e(label)}: {int(counts.sum())} detections, '
            f'highest bar {top}</title><line x1="0" x2="{width}" y1="{height}" y2="{height}" stroke="#888"/>'
            f"{bars}{line}{axis}</svg>")


def _figure(image: ShownImage | None, image_id: str, score: float, rank: int, class_names: list[str],
            section_class: int) -> str:
    """One selected image: its thumbnail with every box of it (the section's class solid, the others
    dashed: which boxes made it this class's pick), or a placeholder; its rank, score and id."""
    caption = f"<figcaption>rank {rank} &middot; score {score:.4f}<br>{_e(image_id)}</figcaption>"
    if image is None or image.thumbnail is None:
        reason = image.error if image is not None else "no image_status row for this image"
        return (f'<figure class="thumb bad"><div class="placeholder">cannot show this image: {_e(reason)}</div>'
                f"{caption}</figure>")
    w, h = image.thumb_width, image.thumb_height
    rects = "".join(
        f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}" fill="none" '
        f'stroke="{box_colour(conf)}" stroke-width="2" vector-effect="non-scaling-stroke"'
        f'{"" if class_id == section_class or section_class == NO_CLASS else OTHER_CLASS_DASH}>'
        f"<title>{_e(_class_name(class_names, class_id))} {conf:.3f}</title></rect>"
        for class_id, conf, x1, y1, x2, y2 in image.boxes)
    return (f'<figure class="thumb"><div class="frame" style="width:{w}px;height:{h}px">'
            f'<img src="{_e(image.thumbnail)}" width="{w}" height="{h}" loading="lazy" alt="{_e(image_id)}">'
            f'<svg width="{w}" height="{h}" viewBox="0 0 {max(image.width, 1)} {max(image.height, 1)}" '
            f'preserveAspectRatio="none">{rects}</svg></div>{caption}</figure>')


def _section(section: ClassSection, name: str, histogram: np.ndarray | None, images: dict[str, ShownImage],
             class_names: list[str], per_class: int) -> str:
    threshold = ("none: no class quota" if section.class_id == NO_CLASS else "none: no candidate"
                 if section.threshold is None else f"{section.threshold:.4f}")
    candidates = "" if section.n_candidates is None else f" of {section.n_candidates} candidates"
    shown = min(section.n_selected, per_class)
    figures = "".join(_figure(images.get(image_id), image_id, score, rank, class_names, section.class_id)
                      for image_id, score, rank in section.rows)
    return (f'<section id="class-{section.class_id}"><h2>{_e(name)}</h2>'
            f"<p>{section.n_selected} image(s) selected; threshold (k-th lowest score): {_e(threshold)}{candidates}; "
            f"showing the first {shown} by rank (rank 0: the lowest score, the most informative).</p>"
            + ("" if histogram is None else histogram_svg(histogram, section.threshold, f"scores of {name}"))
            + f'<div class="grid">{figures}</div></section>')


def page_html(title: str, class_names: list[str], sections: list[ClassSection], images: dict[str, ShownImage],
              histogram: np.ndarray, pool: tuple[int, int], per_class: int, no_class_name: str) -> str:
    """The whole page (module docstring). `histogram`: (classes, HISTOGRAM_BINS) counts of the pool's
    detection scores; `pool`: (images scored, unreadable)."""
    names = {s.class_id: no_class_name if s.class_id == NO_CLASS else _class_name(class_names, s.class_id)
             for s in sections}
    rows = "".join(f'<tr><td><a href="#class-{s.class_id}">{_e(names[s.class_id])}</a></td><td>{s.n_selected}</td>'
                   f"<td>{'-' if s.threshold is None else f'{s.threshold:.4f}'}</td>"
                   f"<td>{'-' if s.n_candidates is None else s.n_candidates}</td><td>{len(s.rows)}</td></tr>"
                   for s in sections)
    legend = "".join(f'<span style="background:{colour}">{n / len(CONFIDENCE_COLOURS):.1f}-'
                     f"{(n + 1) / len(CONFIDENCE_COLOURS):.1f}</span>" for n, colour in enumerate(CONFIDENCE_COLOURS))
    body = "".join(_section(s, names[s.class_id], histogram[s.class_id] if 0 <= s.class_id < len(histogram) else None,
                            images, class_names, per_class) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Review: {_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>Review of the selection: {_e(title)}</h1>"
            f"<p>Pool: {pool[0]} image(s) scored, {pool[1]} unreadable; {int(histogram.sum())} detection(s) kept."
            f" Up to {per_class} thumbnails per class, lowest score first.</p>"
            f'<p class="legend">Box colour: confidence cls_conf &times; loc_conf {legend}; solid: the '
            f"section's class, dashed: other classes</p>"
            f"<h2>Score distribution of the pool's detections</h2>"
            f"{histogram_svg(histogram.sum(axis=0), None, 'scores of every detection')}"
            f"<table><tr><th>class</th><th>selected</th><th>threshold</th><th>candidates</th><th>shown</th></tr>"
            f"{rows}</table>{body}</body></html>\n")
