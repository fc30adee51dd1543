"""The dataset of a run: the manifests of its pool and test set, its classes, and where ground truth is.

Made once per run root (`ensure_dataset`), before any stage; every stage reads it. No Ray here: the
labelled sets (raylib/labels.py) and the jobs that only read files need it too.

    data.kind   pool                                  ground truth (test set; pool, for a simulated oracle)
    synthetic   generated VOC layout                  its Annotations/*.xml, read per image
    voc         VOCdevkit root, ImageSets/Main sets   its Annotations/*.xml, read per image
    images      every image under data.root           data.test (COCO JSON or VOC root); the pool's only
                (folder or s3:// prefix, recursive)   from data.pool_labels, else annotators label it
    coco        the images of data.pool_labels        data.test; data.pool_labels (a COCO JSON)

Label files (data.test, data.labelled, data.pool_labels) are imported once into `truth_<which>.parquet`
(image_id, objects) under the run root, through the same readers as the annotators' deliveries
(raylib/formats/coco.py, raylib/formats/voc.py). A COCO image's id is its `file_name` (relative to the images' folder).
"""
from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylib import paths, pool, schemas, storage
from raylib.formats import deliveries, coco, voc
from raylib.config import Config, ConfigError, DataConfig

log = logging.getLogger(__name__)


class DatasetError(ConfigError):
    """A label file or image folder the dataset can't be made from; the message names it and the key (a
    job prints it as one line, as a bad config value)."""


@dataclass(frozen=True)
class Dataset:
    pool_manifest: str
    test_manifest: str
    class_names: list[str]
    voc_root: str | None = None  # VOC layout (synthetic, voc): ground truth is read from its Annotations/
    test_truth: str | None = None  # else: imported ground truth tables (image_id, objects)
    pool_truth: str | None = None  # None: only annotators know the pool's labels
    labelled_truth: str | None = None  # data.labelled: round 0's labelled set


def ensure_dataset(cfg: Config) -> Dataset:
    """Generate the synthetic data if needed and index the pool and test sets into manifests (once)."""
    if cfg.data.kind in ("synthetic", "voc"):
        return _voc_dataset(cfg)
    return _file_dataset(cfg)


def _voc_dataset(cfg: Config) -> Dataset:
    from raylib import synthetic

    voc_root = cfg.data.root or storage.join(os.path.dirname(os.path.abspath(cfg.run_root)), "data")
    if cfg.data.kind == "synthetic":
        synthetic.generate(cfg.data.synthetic, voc_root)
    pool_manifest, test_manifest = paths.pool_manifest(cfg.run_root), paths.test_manifest(cfg.run_root)
    indexed = False
    if not storage.exists(pool_manifest):
        n = pool.index_voc(voc_root, list(cfg.data.pool_sets), pool_manifest)
        log.info("indexed %d pool images into %s", n, pool_manifest)
        indexed = True
    if not storage.exists(test_manifest):
        n = pool.index_voc(voc_root, list(cfg.data.test_sets), test_manifest)
        log.info("indexed %d test images into %s", n, test_manifest)
        indexed = True
    if indexed:  # checked once, when the manifests are made; they are removed again if it fails
        shared, examples = pool.shared_ids(test_manifest, pool_manifest)
        if shared:  # a test image in the pool could be selected, labelled and trained on: the curve would lie
            storage.delete(pool_manifest)
            storage.delete(test_manifest)
            raise pool.PoolError(
                f"{shared} performance-test image(s) are also in the pool (e.g. {examples}): data.test_sets "
                f"{list(cfg.data.test_sets)} and data.pool_sets {list(cfg.data.pool_sets)} of '{voc_root}' "
                "must not overlap; fix the image sets and run again")
    return Dataset(pool_manifest, test_manifest, cfg.data.class_names, voc_root=voc_root)


# ------------------------------------------------------------------------------ label files (images, coco)


def _file_dataset(cfg: Config) -> Dataset:
    """data=images / data=coco: test set (and labelled sets) from label files, pool from a folder or a COCO file."""
    data, run_root = cfg.data, cfg.run_root
    classes = data.class_names or test_categories(data)
    test_truth = paths.imported_truth(run_root, "test")
    test_manifest = paths.test_manifest(run_root)
    if not storage.exists(test_manifest):
        _import("data.test", data.test, test_images(data.test, data.test_images), classes, data.test_sets,
                test_manifest, test_truth)
    pool_truth = labelled_truth = None
    pool_images = data.root
    if data.pool_labels:
        pool_truth = paths.imported_truth(run_root, "pool")
        if not storage.exists(pool_truth):
            _import("data.pool_labels", data.pool_labels, pool_images, classes, data.pool_sets,
                    paths.imported_images(run_root, "pool"), pool_truth)
    if data.labelled:
        labelled_truth = paths.imported_truth(run_root, "labelled")
        if not storage.exists(labelled_truth):
            _import("data.labelled", data.labelled, data.labelled_images or pool_images, classes, data.pool_sets,
                    paths.imported_images(run_root, "labelled"), labelled_truth)
    pool_manifest = paths.pool_manifest(run_root)
    if not storage.exists(pool_manifest):
        extra = paths.imported_images(run_root, "labelled") if data.labelled else None
        if data.kind == "coco":  # the pool is the COCO file's images (their manifest, made by the import)
            listing = pool.iter_manifest(paths.imported_images(run_root, "pool"))
        else:
            listing = pool.iter_folder(data.root)
        n, left_out = _write_pool(listing, extra, test_manifest, pool_manifest)
        if left_out:
            log.info(f"[data] {left_out} test image(s) found in the pool were left out of it")
        if n == 0:
            storage.delete(pool_manifest)
            raise DatasetError(f"data.root: no image (jpg, jpeg, png, bmp, webp) under '{data.root}'"
                               + (" that is listed in data.pool_labels" if data.kind == "coco" else "")
                               + "; point data.root at the pool's images")
        log.info("indexed %d pool images into %s", n, pool_manifest)
    return Dataset(pool_manifest, test_manifest, classes, test_truth=test_truth, pool_truth=pool_truth,
                   labelled_truth=labelled_truth)


def test_images(source: str, images: str | None) -> str:
    """Where a label file's images are: `images` if given, else the JSON's folder or a VOC root's JPEGImages/."""
    if images:
        return images
    if source.lower().endswith(".json"):
        return posixpath.dirname(source) if storage.is_s3(source) else os.path.dirname(source)
    return storage.join(source, "JPEGImages")


def test_categories(data: DataConfig) -> list[str]:
    """Class names from the test set's COCO categories, in file order (data.classes unset)."""
    if not data.test or not data.test.lower().endswith(".json"):
        raise DatasetError(f"data.classes is required with a VOC test set ('{data.test}'): list the class names")
    document = read_coco(data.test, "data.test")
    names = [category.get("name") for category in document["categories"] if isinstance(category, dict)]
    if not names or not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        raise DatasetError(f"data.test '{data.test}': its categories don't name the classes (empty, unnamed or "
                           "repeated names); set data.classes")
    return names


def read_coco(uri: str, key: str) -> dict:
    try:
        document = deliveries.read_json(uri)
    except FileNotFoundError:
        raise DatasetError(f"{key}: no file at '{uri}'; pass {key}=<COCO JSON file or VOC root>") from None
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{key}: '{uri}' could not be read as JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list) \
            or not isinstance(document.get("categories"), list):
        raise DatasetError(f"{key}: '{uri}' is not a COCO dataset (no 'images'/'categories' lists); "
                           "Label Studio exports are read as deliveries only, convert it to COCO")
    return document


def _import(key: str, source: str, images: str, classes: list[str], voc_sets: list[str], manifest_uri: str,
            truth_uri: str) -> None:
    """A label file -> its images' manifest and its ground truth table. Images whose labels are unusable
    are left out of both, each named in one warning line."""
    if source.lower().endswith(".json"):
        table, errors = coco.coco_to_labels(read_coco(source, key), classes)
    else:
        try:
            pool.index_voc(source, list(voc_sets), manifest_uri)
        except pool.PoolError as exc:
            raise DatasetError(f"{key}: {exc}") from None
        ids = [i for batch in pool.iter_manifest(manifest_uri) for i in batch.column("image_id").to_pylist()]
        table, errors = voc.read_voc_labels(source, ids, classes)
    for image_id, reason in errors:
        log.warning("%s: image %s left out: %s", key, image_id, reason)
    if table.num_rows == 0:
        raise DatasetError(f"{key}: no usable labelled image in '{source}' ({len(errors)} left out, e.g. "
                           f"{errors[0][1] if errors else 'none listed'})")
    ids = table.column("image_id")
    uris = pa.array([storage.join(images, image_id) for image_id in ids.to_pylist()], pa.string()) \
        if source.lower().endswith(".json") else None
    if uris is not None:
        nulls = pa.nulls(len(ids), pa.int32())
        storage.write_table(pa.table([ids, uris, nulls, nulls], schema=schemas.POOL), manifest_uri)
    else:  # the VOC manifest has every listed image: keep those with usable labels
        manifest = storage.read_table(manifest_uri)
        storage.write_table(manifest.filter(pc.is_in(manifest.column("image_id"), value_set=ids)), manifest_uri)
    storage.write_table(table, truth_uri)
    log.info("%s: %d labelled images from %s", key, table.num_rows, source)


def _write_pool(listing: Iterator[pa.RecordBatch], extra_uri: str | None, test_manifest: str, out_uri: str
                ) -> tuple[int, int]:
    """Stream the listing (plus the rows of `extra_uri` it lacks: labelled images outside the folder) to
    `out_uri` without the test set's images (matched by URI); returns (rows written, test images dropped)."""
    test_uris = pa.concat_arrays([b.column("uri") for b in pool.iter_manifest(test_manifest)] or
                                 [pa.array([], pa.string())])
    extra = storage.read_table(extra_uri) if extra_uri else None
    seen: list[pa.Array] = []
    dropped = 0

    def rows() -> Iterator[pa.RecordBatch]:
        nonlocal dropped
        for batch in listing:
            in_test = pc.is_in(batch.column("uri"), value_set=test_uris)
            dropped += pc.sum(in_test).as_py() or 0
            kept = batch.filter(pc.invert(in_test))
            if extra is not None:
                seen.append(kept.column("image_id"))
            yield kept
        if extra is not None:
            listed = pa.concat_arrays(seen) if seen else pa.array([], pa.string())
            missing = extra.filter(pc.invert(pc.is_in(extra.column("image_id"), value_set=listed)))
            yield from missing.to_batches()

    n = storage.write_batches(rows(), out_uri, schemas.POOL)
    return n, dropped


# ---------------------------------------------------------------------------------------- ground truth


def ground_truth(ds: Dataset, image_ids: list[str], which: str) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The labels (image_id, objects) of `image_ids` from the `which` ("pool" or "test") ground truth, and
    (image_id, reason) for those without usable labels."""
    if ds.voc_root is not None:
        return voc.read_voc_labels(ds.voc_root, image_ids, ds.class_names)
    truth = ds.test_truth if which == "test" else ds.pool_truth
    if truth is None:
        raise DatasetError("the pool has no ground truth (data.kind=images without data.pool_labels): only "
                           "annotators can label it (loop.oracle=external)")
    fs, path = storage.resolve(truth)
    wanted = pa.array(sorted(set(image_ids)), pa.string())
    table = pq.read_table(path, filesystem=fs, filters=pc.field("image_id").isin(wanted))
    found = set(table.column("image_id").to_pylist())
    errors = [(image_id, f"image '{image_id}' has no labels in the {which} ground truth") for image_id in image_ids
              if image_id not in found]
    return table, errors
