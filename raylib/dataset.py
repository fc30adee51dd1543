"""The dataset of a run: where its images are and the manifests of its pool and test set.

Made once per run root (`ensure_dataset`), before any stage; every stage reads it. No Ray here: the
labelled sets (raylib/labels.py) and the jobs that only read files need it too."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from raylib import paths, storage
from raylib.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    voc_root: str  # VOCdevkit-style root: JPEGImages/, Annotations/, ImageSets/Main/
    pool_manifest: str
    test_manifest: str
    class_names: list[str]


def ensure_dataset(cfg: Config) -> Dataset:
    """Generate the synthetic data if needed and index the pool and test sets into manifests (once)."""
    from raylib import pool, synthetic

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
    return Dataset(voc_root, pool_manifest, test_manifest, cfg.data.class_names)
