"""Faults during scoring: an actor that raises on a batch, and a worker node lost mid-run
(`ray.cluster_utils.Cluster`, several nodes on this machine). The round must finish with exactly one
status row per pool image and each image's detections exactly once."""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.cluster_utils import Cluster

from raylib import storage
from raylib.paths import RoundPaths
from raylib.score import YoloxScorer, load_images, score_pool
from tests.test_score import CLASSES, check_outputs, confident_weights, config, write_pool

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get the test's scorers by value

POISON = "images/good_0.jpg"


class PoisonedScorer(YoloxScorer):
    """Raises whenever a batch holds the poisoned image, as a model bug or a CUDA error would."""

    def _detect(self, inputs, ratios, batch, ok, **options):
        if any(str(batch["image_id"][i]) == POISON for i in ok):
            raise RuntimeError("injected failure")
        return super()._detect(inputs, ratios, batch, ok, **options)


def test_a_batch_that_raises_costs_only_the_bad_image(tmp_path):
    """The actor retries a batch that raises image by image: the poisoned image becomes an error row that
    names the failure, every other image gets its usual row. The actor is called as Ray Data calls it
    (the retry is its own: Ray adds nothing to it, and ~15 s of CI)."""
    manifest, expected = write_pool(str(tmp_path / "pool"))
    rows = storage.read_table(manifest).to_pydict()
    batch = load_images({k: np.array(v, dtype=object) for k, v in rows.items()}, side=96, max_pixels=2_000_000)
    scorer = PoisonedScorer(config(), confident_weights(str(tmp_path / "w.pt")), len(CLASSES), 0)
    table = scorer(batch)
    assert table.column("image_id").to_pylist() == rows["image_id"]  # one row per image, in order
    expected[POISON] = "error"
    assert dict(zip(rows["image_id"], table.column("status").to_pylist())) == expected
    errors = dict(zip(rows["image_id"], table.column("error").to_pylist()))
    assert "could not be scored (RuntimeError: injected failure)" in errors[POISON]
    assert sum(table.column("n_detections").to_pylist()) > 0


class ReportingScorer(YoloxScorer):
    """Touches a file per finished batch, so the test can kill a node while scoring is under way."""

    progress_dir = ""

    def __call__(self, batch):
        out = super().__call__(batch)
        open(os.path.join(self.progress_dir, f"{os.getpid()}-{time.monotonic_ns()}"), "w").close()
        time.sleep(0.2)  # keep each batch long enough for the kill to land mid-run (not used as sync)
        return out


@pytest.mark.slow
def test_worker_node_lost_mid_scoring_loses_and_duplicates_nothing(tmp_path):
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no work
    try:
        # 2 CPUs a node: a read task needs a whole CPU beside a half-CPU actor.
        workers = [cluster.add_node(num_cpus=2), cluster.add_node(num_cpus=2)]
        ray.init(address=cluster.address)
        # The driver attaches to one node's raylet; lose the other one.
        attached = ray._private.worker.global_worker.node._raylet_socket_name
        doomed = next(node for node in workers if node._raylet_socket_name != attached)
        manifest, expected = write_pool(str(tmp_path / "pool"))
        # A bigger pool: the corpus repeated, so the run spans many batches.
        table = storage.read_table(manifest)
        ids = [f"{image_id}#{copy}" for copy in range(6) for image_id in table.column("image_id").to_pylist()]
        uris = [uri for _ in range(6) for uri in table.column("uri").to_pylist()]
        storage.write_table(pa.table({"image_id": ids, "uri": uris}), manifest)
        expected = {f"{k}#{copy}": v for copy in range(6) for k, v in expected.items()}
        weights = confident_weights(str(tmp_path / "w.pt"))
        progress = tmp_path / "progress"
        progress.mkdir()
        ReportingScorer.progress_dir = str(progress)
        rp = RoundPaths(str(tmp_path / "run"), 0)
        cfg = config(num_actors=2, batch_size=2)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(
            summary=score_pool(manifest, weights, rp, cfg, CLASSES, scorer_cls=ReportingScorer)))
        worker.start()
        deadline = time.monotonic() + 300
        while len(os.listdir(progress)) < 3 and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.05)
        assert worker.is_alive() and len(os.listdir(progress)) >= 3, "scoring must be under way"
        cluster.remove_node(doomed, allow_graceful=False)
        cluster.add_node(num_cpus=2)  # the replacement a cluster autoscaler would bring
        worker.join(timeout=600)
        assert not worker.is_alive()
        assert result["summary"].n_images == len(expected)
        check_outputs(rp, expected)  # exactly one status row each; detections match the counts
        detections = storage.read_table(rp.detections).to_pandas()
        duplicated = detections.duplicated(["image_id", "x1", "y1", "x2", "y2", "class_id", "score"])
        assert not duplicated.any()
    finally:
        ray.shutdown()
        cluster.shutdown()
