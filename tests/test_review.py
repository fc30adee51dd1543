"""The review page of a round (raylib/review.py): counts, the per-class cap, escaping, bad images, the
Ray-task path on S3, the report's link; and one browser test in headless Chromium (Debian's, driven by
Playwright's Python package) that loads the page from disk and finds the boxes drawn."""
from __future__ import annotations

import html
import os
import re
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raylib import paths, report, review, schemas, storage
from raylib.paths import SEED_ROUND, RoundPaths

CLASSES = ["cat", "dog"]
GREY = (60, 60, 60)  # the generated images' colour: a box drawn over them is the only other colour
CHROMIUM = "/usr/bin/chromium"


def _image(folder, name: str, size=(200, 100), kind: str = "PNG") -> str:
    path = os.path.join(folder, name)
    Image.new("RGB", size, GREY).save(path, kind)
    return path


def _write_round(rp: RoundPaths, images: dict[str, str | None], detections: list[tuple],
                 selection: list[tuple], thresholds: dict[int, tuple] | None = None, errors: dict | None = None,
                 parts: int = 2) -> None:
    """A hand-made round: image_status/ and detections/ in `parts` parts (an image's rows in the part of
    the same number), the selection and the thresholds. `images`: image_id -> uri; `detections`:
    (image_id, class_id, cls_conf, loc_conf, (x1, y1, x2, y2)); `selection`: (image_id, class_id, score,
    rank); `errors`: image_id -> scoring's error message (a status error row)."""
    errors = errors or {}
    ids = sorted(images)
    for part in range(parts):
        mine = ids[part::parts]
        dets = [d for d in detections if d[0] in mine]
        status = pa.table({
            "round": pa.array([rp.round_idx] * len(mine), pa.int16()), "image_id": pa.array(mine, pa.string()),
            "status": ["error" if i in errors else "ok" for i in mine],
            "error": pa.array([errors.get(i) for i in mine], pa.string()),
            "n_detections": pa.array([sum(d[0] == i for d in dets) for i in mine], pa.int32()),
            "width": pa.array([None] * len(mine), pa.int32()), "height": pa.array([None] * len(mine), pa.int32()),
            "uri": pa.array([images[i] for i in mine], pa.string())})
        storage.write_table(schemas.check(status, schemas.IMAGE_STATUS, "image_status"),
                            paths.part_file(rp.image_status, part))
        table = pa.table({
            "round": pa.array([rp.round_idx] * len(dets), pa.int16()),
            "image_id": pa.array([d[0] for d in dets], pa.string()),
            "class_id": pa.array([d[1] for d in dets], pa.int16()),
            "cls_conf": pa.array([d[2] for d in dets], pa.float32()),
            "loc_conf": pa.array([d[3] for d in dets], pa.float32()),
            "score": pa.array([d[2] * d[3] for d in dets], pa.float32()),
            **{name: pa.array([d[4][n] for d in dets], pa.float32()) for n, name in enumerate(schemas.BOX)}})
        storage.write_table(schemas.check(table, schemas.DETECTIONS, "detections"), paths.part_file(rp.detections, part))
    rows = pa.table({"round": pa.array([rp.round_idx] * len(selection), pa.int16()),
                     "image_id": pa.array([s[0] for s in selection], pa.string()),
                     "class_id": pa.array([s[1] for s in selection], pa.int16()),
                     "score": pa.array([s[2] for s in selection], pa.float32()),
                     "rank": pa.array([s[3] for s in selection], pa.int32())})
    storage.write_table(schemas.check(rows, schemas.SELECTION, "selection"), rp.selection)
    if thresholds is not None:
        table = pa.table({"round": pa.array([rp.round_idx] * len(thresholds), pa.int16()),
                          "class_id": pa.array(list(thresholds), pa.int16()),
                          "threshold": pa.array([t for t, _ in thresholds.values()], pa.float32()),
                          "n_candidates": pa.array([n for _, n in thresholds.values()], pa.int64())})
        storage.write_table(schemas.check(table, schemas.THRESHOLDS, "thresholds"), rp.thresholds)


class _Page(HTMLParser):
    """The page's elements as a browser's parser sees them: tags with their attributes, and the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(t == tag and (cls is None or cls in (a.get("class") or "").split()) for t, a in self.tags)


def _section(page: str, class_id: int) -> str:
    match = re.search(rf'<section id="class-{class_id}">(.*?)</section>', page, re.S)
    assert match, f"no section for class {class_id}"
    return match.group(1)


def _two_class_round(tmp_path) -> RoundPaths:
    """cat selects a, b, c (ranks 0-2); dog selects c, d: c is shown twice, from one thumbnail file."""
    images = {i: _image(tmp_path, f"{i}.png") for i in ("a", "b", "c", "d", "e")}
    detections = [("a", 0, 0.5, 0.6, (10, 10, 60, 50)), ("b", 0, 0.6, 0.6, (0, 0, 30, 30)),
                  ("c", 0, 0.7, 0.6, (5, 5, 100, 90)), ("c", 1, 0.5, 0.5, (120, 10, 190, 90)),
                  ("d", 1, 0.6, 0.5, (1, 1, 50, 50)), ("e", 1, 0.99, 0.99, (1, 1, 50, 50))]
    selection = [("a", 0, 0.30, 0), ("b", 0, 0.36, 1), ("c", 0, 0.42, 2), ("c", 1, 0.25, 0), ("d", 1, 0.30, 1)]
    rp = RoundPaths(str(tmp_path / "run"), 0)
    _write_round(rp, images, detections, selection, thresholds={0: (0.42, 3), 1: (0.30, 3)})
    return rp


def test_page_shows_each_class_selection_with_threshold_scores_and_ranks(tmp_path):
    rp = _two_class_round(tmp_path)
    summary = review.write_review(rp, CLASSES)
    text = storage.read_text(rp.review_page)
    assert (summary.page, summary.n_thumbnails, summary.n_placeholders) == (rp.review_page, 4, 0)
    assert sorted(os.listdir(os.path.join(rp.review, "thumbs"))) == [f"{n:05d}.jpg" for n in range(4)]
    cat, dog = _section(text, 0), _section(text, 1)
    assert _Page(cat).count("figure", "thumb") == 3 and _Page(dog).count("figure", "thumb") == 2
    assert "threshold (k-th lowest score): 0.4200 of 3 candidates" in cat
    assert [m for m in re.findall(r"rank (\d+) &middot; score ([\d.]+)<br>(\w+)", cat)] == [
        ("0", "0.3000", "a"), ("1", "0.3600", "b"), ("2", "0.4200", "c")]
    assert re.findall(r"rank (\d+) &middot; score [\d.]+<br>(\w+)", dog) == [("0", "c"), ("1", "d")]
    # c's figures in both sections show the same file, with each of its boxes in the image's frame.
    c_src = set(re.findall(r'<img src="([^"]+)"[^>]*alt="c"', text))
    assert len(c_src) == 1 and _Page(text).count("img") == 5
    assert 'viewBox="0 0 200 100"' in cat
    assert cat.count("<rect x=\"5.0\" y=\"5.0\" width=\"95.0\" height=\"85.0\"") == 1
    # c's dog box is dashed under cat, solid under dog (the section's class); its cat box the other way.
    dog_box, cat_box = r'<rect x="120.0" y="10.0"[^>]*>', r'<rect x="5.0" y="5.0"[^>]*>'
    assert "stroke-dasharray" in re.search(dog_box, cat).group() and "stroke-dasharray" not in re.search(cat_box, cat).group()
    assert "stroke-dasharray" not in re.search(dog_box, dog).group() and "stroke-dasharray" in re.search(cat_box, dog).group()
    # Five images scored, six detections: the page's pool line; e (not selected) counted, not shown.
    assert "Pool: 5 image(s) scored, 0 unreadable; 6 detection(s) kept." in text
    assert ">e<" not in text


def test_thumbnails_are_shrunk_jpegs_of_the_decoded_image(tmp_path):
    images = {"wide": _image(tmp_path, "wide.jpg", (1000, 400), "JPEG")}
    rp = RoundPaths(str(tmp_path / "run"), 1)
    _write_round(rp, images, [("wide", 1, 0.9, 0.9, (100, 100, 500, 300))], [("wide", 1, 0.81, 0)], parts=1)
    review.write_review(rp, CLASSES)
    with Image.open(os.path.join(rp.review, "thumbs", "00000.jpg")) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (review.THUMBNAIL_SIDE, round(review.THUMBNAIL_SIDE * 0.4)))
        assert np.abs(np.asarray(thumb, np.int16) - np.array(GREY)).max() <= 3
    text = storage.read_text(rp.review_page)
    assert 'style="width:256px;height:102px"' in text and 'viewBox="0 0 1000 400"' in text
    assert 'stroke="#1a9641"' in text  # confidence 0.81: the top band


def test_cap_keeps_the_lowest_ranks_of_each_class_and_counts_all(tmp_path):
    n = review.THUMBNAILS_PER_CLASS + 6
    ids = [f"img{k:03d}" for k in range(n)]
    images = {i: _image(tmp_path, f"{i}.png", (20, 20)) for i in ids}
    # Stored in reverse rank order: the cap must go by rank, not by file order.
    selection = [(ids[k], 0, 0.2 + k / 1000, k) for k in reversed(range(n))]
    selection += [(ids[k], -1, 0.0, k) for k in range(n)]  # a take-all selection beside it: its own section
    rp = RoundPaths(str(tmp_path / "run"), 2)
    _write_round(rp, images, [(i, 0, 0.5, 0.5, (1, 1, 10, 10)) for i in ids], selection, thresholds={0: (0.5, n)})
    summary = review.write_review(rp, CLASSES)
    text = storage.read_text(rp.review_page)
    cat = _section(text, 0)
    shown = re.findall(r"<br>(img\d+)</figcaption>", cat)
    assert shown == ids[:review.THUMBNAILS_PER_CLASS]
    assert f"{n} image(s) selected" in cat and f"showing the first {review.THUMBNAILS_PER_CLASS} by rank" in cat
    take_all = _section(text, -1)
    assert "every image left (the take-all round)" in take_all and "none: no class quota" in take_all
    assert len(re.findall(r"<figure", take_all)) == review.THUMBNAILS_PER_CLASS
    assert summary.n_thumbnails == review.THUMBNAILS_PER_CLASS  # the same images in both sections
    assert len(os.listdir(os.path.join(rp.review, "thumbs"))) == review.THUMBNAILS_PER_CLASS


def test_strings_from_data_are_escaped(tmp_path):
    evil_class = '<script>alert("class")</script>'
    evil_id = 'x/"><img src=q onerror=alert(1)>&amp.png'
    os.makedirs(tmp_path / "x")
    images = {evil_id: _image(tmp_path, "x/evil.png"), "broken": str(tmp_path / "nothing.png")}
    errors = {"broken": "image '<b>broken</b>' could not be read & skipped"}
    rp = RoundPaths(str(tmp_path / "run"), 0)
    _write_round(rp, images, [(evil_id, 0, 0.5, 0.9, (1, 1, 40, 40))],
                 [(evil_id, 0, 0.45, 0), ("broken", 0, 0.5, 1)], thresholds={0: (0.5, 2)}, errors=errors)
    review.write_review(rp, [evil_class, "dog"])
    text = storage.read_text(rp.review_page)
    for raw in (evil_class, evil_id, "<b>broken</b>"):
        assert raw not in text
    page = _Page(text)
    assert page.count("script") == 0 and page.count("b") == 0
    assert sum(t == "img" for t, _ in page.tags) == 1  # the thumbnail only: the id's <img> is text
    assert [a["alt"] for t, a in page.tags if t == "img"] == [evil_id]  # attribute value round-trips
    words = "".join(page.text)
    assert evil_class in words and evil_id in words and errors["broken"] in words
    assert html.escape(evil_class) in text


def test_unreadable_images_are_placeholders_with_the_reason(tmp_path):
    truncated = tmp_path / "truncated.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (100, 150, 3), np.uint8)
    Image.fromarray(noise).save(truncated, "JPEG")
    truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])  # the header whole, the scan cut
    images = {"ok": _image(tmp_path, "ok.png"), "truncated": str(truncated), "gone": str(tmp_path / "gone.jpg"),
              "huge": _image(tmp_path, "huge.png", (300, 300)), "scoring_error": str(tmp_path / "x.jpg")}
    selection = [(i, 1, 0.3, n) for n, i in enumerate(sorted(images))]
    rp = RoundPaths(str(tmp_path / "run"), 0)
    _write_round(rp, images, [], selection, errors={"scoring_error": "image 'scoring_error' is not a readable "
                                                                      "image file"})
    summary = review.write_review(rp, CLASSES, max_pixels=200 * 100)
    text = storage.read_text(rp.review_page)
    assert (summary.n_thumbnails, summary.n_placeholders) == (1, 4)
    placeholders = re.findall(r'<div class="placeholder">cannot show this image: ([^<]*)</div>', text)
    reasons = " | ".join(html.unescape(p) for p in placeholders)
    assert len(placeholders) == 4
    assert "image 'truncated' could not be decoded" in reasons
    assert "image 'gone' is missing at its uri" in reasons
    assert "image 'huge' is 300x300" in reasons and "data.max_pixels" in reasons
    assert "image 'scoring_error' is not a readable image file" in reasons
    assert "Pool: 5 image(s) scored, 1 unreadable" in text


def test_histogram_bins_every_detection_score_per_class(tmp_path):
    images = {i: _image(tmp_path, f"{i}.png", (20, 20)) for i in ("a", "b")}
    # scores (cls_conf x loc_conf): 0.01 -> bin 0, 0.5 -> 25, 0.99 -> 49, 1.0 -> 49 (the last bin is closed)
    detections = [("a", 0, 0.01, 1.0, (1, 1, 5, 5)), ("a", 1, 0.5, 1.0, (1, 1, 5, 5)),
                  ("b", 1, 0.99, 1.0, (1, 1, 5, 5)), ("b", 1, 1.0, 1.0, (1, 1, 5, 5))]
    rp = RoundPaths(str(tmp_path / "run"), 0)
    _write_round(rp, images, detections, [("a", 0, 0.01, 0)], parts=1)
    part = review.review_part(paths.part_file(rp.image_status, 0), paths.part_file(rp.detections, 0),
                              pa.array(["a"]), 2)
    expected = np.zeros((2, review.HISTOGRAM_BINS), np.int64)
    expected[0, 0], expected[1, 25], expected[1, 49] = 1, 1, 2
    assert np.array_equal(part.histogram, expected)
    assert (part.n_images, part.n_errors, [item.row["image_id"] for item in part.to_show]) == (2, 0, ["a"])
    assert [box[0] for box in part.to_show[0].boxes] == [0, 1]  # a's two boxes, least confident first; not b's


def test_seed_round_without_detections_or_thresholds(tmp_path):
    images = {i: _image(tmp_path, f"{i}.png") for i in ("s1", "s2")}
    rp = RoundPaths(str(tmp_path / "run"), SEED_ROUND)
    _write_round(rp, images, [], [("s1", -1, 0.0, 0), ("s2", -1, 0.0, 1)], parts=1)
    summary = review.write_review(rp, CLASSES)
    text = storage.read_text(rp.review_page)
    assert rp.review_page.endswith(os.path.join("seed", "review", "index.html"))
    assert summary.n_thumbnails == 2 and "<h1>Review of the selection: seed set</h1>" in text
    assert "the seed set (a sample, no model yet)" in _section(text, -1)
    assert "<rect x=" not in _section(text, -1)  # no boxes: no model yet


@pytest.mark.s3
def test_parts_run_as_ray_tasks_on_s3(tmp_path, s3_bucket, ray_session, monkeypatch):
    """Past MIN_IMAGES_FOR_TASKS scored images, the selection pass and each part run in Ray tasks, and
    past THUMBNAILS_IN_TASKS shown images the thumbnails too; the run root, the images and the
    thumbnails are on S3."""
    monkeypatch.setattr(review, "MIN_IMAGES_FOR_TASKS", 1)  # a tiny round takes the large rounds' path
    monkeypatch.setattr(review, "THUMBNAILS_IN_TASKS", 1)
    monkeypatch.setattr(review, "THUMBNAILS_PER_TASK", 2)  # 3 images: 2 tasks
    mapped, real_map = [], review._map
    monkeypatch.setattr(review, "_map", lambda function, calls, in_tasks: (
        mapped.append((function.__name__, len(calls), in_tasks)) or real_map(function, calls, in_tasks)))
    images = {}
    for i in ("a", "b", "c"):
        storage.write_bytes(f"{s3_bucket}/images/{i}.png", open(_image(tmp_path, f"{i}.png"), "rb").read())
        images[i] = f"{s3_bucket}/images/{i}.png"
    rp = RoundPaths(f"{s3_bucket}/run", 0)
    _write_round(rp, images, [("a", 0, 0.5, 0.5, (1, 1, 50, 50)), ("b", 1, 0.6, 0.5, (2, 2, 40, 40))],
                 [("a", 0, 0.25, 0), ("b", 1, 0.3, 0), ("c", 1, 0.9, 1)], thresholds={0: (0.25, 1), 1: (0.3, 1)},
                 parts=3)
    storage.write_text(f"{rp.review}/stale.txt", "left by an interrupted export")
    summary = review.write_review(rp, CLASSES)
    assert (summary.n_thumbnails, summary.n_placeholders) == (3, 0)
    assert mapped == [("review_part", 3, True), ("make_thumbnails", 2, True)]
    files = sorted(uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1] for uri in storage.list_files(rp.review))
    assert files == ["review/index.html", "thumbs/00000.jpg", "thumbs/00001.jpg", "thumbs/00002.jpg"]
    assert "Pool: 3 image(s) scored, 0 unreadable; 2 detection(s) kept." in storage.read_text(rp.review_page)


def test_report_links_the_review_pages(tmp_path):
    run_root = str(tmp_path / "run")
    storage.write_text(paths.run_info(run_root), '{"strategy": "cls_iou", "seed": 0, "classes": ["cat", "dog"]}')
    pool = pa.table({"image_id": ["p0"], "uri": ["/p0.jpg"]})
    storage.write_table(schemas.check(pool, schemas.POOL, "pool"), paths.pool_manifest(run_root))
    storage.write_text(RoundPaths(run_root, SEED_ROUND).review_page, "<html></html>")
    text = storage.read_text(report.write_report(run_root))
    assert "[seed set](../seed/review/index.html)" in text
    # The link resolves from the report's folder to the page.
    link = re.search(r"\[seed set\]\(([^)]+)\)", text).group(1)
    assert os.path.isfile(os.path.join(paths.report_dir(run_root), link))


def test_browser_shows_the_thumbnails_with_their_boxes(tmp_path):
    """Debian's chromium (.ci/run installs it) opens the page from disk: every thumbnail loads, and the
    screenshot has each box's colour on its edge and the image's grey inside it."""
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)"
    from playwright.sync_api import sync_playwright

    rp = _two_class_round(tmp_path)
    review.write_review(rp, CLASSES)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3000}, device_scale_factor=1)
            page.goto(f"file://{rp.review_page}")
            page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=20_000)
            assert page.locator("figure.thumb img").count() == 5  # a, b, c for cat; c, d for dog
            assert page.locator("figure.thumb .placeholder").count() == 0
            frame = page.locator("#class-0 .frame").first.bounding_box()  # image a: 200x100, shown 1:1
            shot = np.asarray(Image.open(__import__("io").BytesIO(page.screenshot(full_page=True))).convert("RGB"),
                              np.int16)
        finally:
            browser.close()
    x0, y0 = round(frame["x"]), round(frame["y"])
    # a's box (10, 10, 60, 50), confidence 0.5 x 0.6 = 0.3: the second band's colour, on its left edge.
    edge = shot[y0 + 30, x0 + 10]
    assert np.abs(edge - np.array([0xff, 0x7f, 0x00])).max() <= 40, edge
    assert np.abs(shot[y0 + 30, x0 + 35] - np.array(GREY)).max() <= 6  # inside the box: the image
    assert np.abs(shot[y0 + 30, x0 + 120] - np.array(GREY)).max() <= 6  # right of it: the image
