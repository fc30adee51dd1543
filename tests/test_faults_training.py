"""Node loss during training: the node running the Ray Train worker is killed mid-run
(`ray.cluster_utils.Cluster`, several nodes on this machine). FailureConfig restarts the worker group
on a replacement node, it resumes from the last reported checkpoint, and the finished model loads."""
from __future__ import annotations

import os
import threading
import time

import pytest
import ray
import torch
from ray._private import state as ray_state
from ray.cluster_utils import Cluster

from raylib.training import train
from raylib.model import load_model
from tests.helpers import CLASSES, make_dataset, tiny_config

EPOCHS = 6  # enough epochs left after the first checkpoint for the node to be killed mid-run


def _training_worker_node() -> str | None:
    """Node id of the live Ray Train worker, from the GCS actor table (no dashboard needed)."""
    for actor in ray_state.actors().values():
        if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE":
            return actor["Address"]["NodeID"]
    return None


def _registered(snapshot: str, checkpoint_name: str) -> bool:
    try:
        with open(snapshot) as handle:
            return checkpoint_name in handle.read()
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_training_node_lost_mid_run_resumes_from_the_last_checkpoint(tmp_path):
    ray.shutdown()
    # The driver joins while the head (no CPUs) is the only node, so it is attached to the head's raylet
    # and training can only land on the worker nodes added after it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        ray.init(address=cluster.address)
        workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
        labels, manifest = make_dataset(tmp_path / "data")
        out_dir = str(tmp_path / "out")
        cfg = tiny_config(epochs=EPOCHS, num_workers=1, max_failures=2)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            trained=train.train_model(cfg, labels, manifest, out_dir, CLASSES)))
        runner.start()

        # Ray Train's controller writes this snapshot when it registers a reported checkpoint: from then
        # on a restarted worker group gets that checkpoint from `ray.train.get_checkpoint()`.
        snapshot = os.path.join(out_dir, "ray", "train", "checkpoint_manager_snapshot.json")
        deadline = time.monotonic() + 300
        while not _registered(snapshot, "epoch_0001") and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        node_id = _training_worker_node()
        assert runner.is_alive() and node_id, "training must be under way, past its first checkpoint"
        doomed = next(node for node in workers if node.node_id == node_id)
        cluster.remove_node(doomed, allow_graceful=False)
        cluster.add_node(num_cpus=1)  # the replacement an autoscaler would bring
        runner.join(timeout=600)
        assert not runner.is_alive()

        trained = result["trained"]
        history = trained.history
        assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))  # each epoch reported once
        restart = max(h["attempt_start_epoch"] for h in history)
        assert 1 <= restart < EPOCHS, "the restarted group must begin at a checkpoint, not from scratch"
        assert all(h["attempt_start_epoch"] == (0 if h["epoch"] <= restart else restart) for h in history)
        assert _training_worker_node() is None  # the run is over; nothing left running
        model = load_model("nano", len(CLASSES), trained.weights_uri).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 64)).shape[-1] == 5 + len(CLASSES)
    finally:
        ray.shutdown()
        cluster.shutdown()
