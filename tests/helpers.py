"""Small generators shared by tests: images, manifests and label tables built in the test, never downloaded."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pyarrow as pa

from raylib import schemas, storage
from raylib.formats import coco
from raylib.config import ModelConfig, TrainConfig

CLASSES = ["red", "blue"]
COLOURS = [(0, 0, 255), (255, 0, 0)]  # BGR


def labelled_ids(labels_uri: str) -> set[str]:
    """The image ids of a labels file, as a set (the stages keep them in Arrow)."""
    return set(storage.read_table(labels_uri, columns=["image_id"]).column("image_id").to_pylist())


def obj(class_id: int, x1: float, y1: float, x2: float, y2: float, difficult: bool = False) -> dict:
    """One labelled object (schemas.OBJECT)."""
    return {"class_id": class_id, "x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2),
            "difficult": difficult}


def labels_table(rows: list[tuple[str, str, list[dict]]], round_added: int = 0) -> pa.Table:
    """A LABELS table from (image_id, split, objects) rows."""
    table = pa.table({"image_id": [r[0] for r in rows], "split": [r[1] for r in rows],
                      "round_added": pa.array([round_added] * len(rows), pa.int16()),
                      "objects": pa.array([r[2] for r in rows], pa.list_(schemas.OBJECT))})
    return schemas.check(table, schemas.LABELS, "labels")


def write_manifest(uri: str, ids: list[str], uris: list[str] | None = None) -> str:
    """A POOL manifest of `ids` (URIs made up unless given)."""
    table = pa.table({"image_id": ids, "uri": uris if uris is not None else [f"/data/{i}.jpg" for i in ids]})
    storage.write_table(schemas.check(table, schemas.POOL, "pool"), uri)
    return uri


def make_dataset(root, n_train: int = 8, n_val: int = 3, size: int = 64, seed: int = 0) -> tuple[str, str]:
    """Tiny images with filled rectangles; one background training image. Returns (labels, manifest)."""
    os.makedirs(str(root), exist_ok=True)
    rng = np.random.default_rng(seed)
    ids, uris, rows = [], [], []
    for i in range(n_train + n_val):
        image = np.full((size, size + 16, 3), 110, np.uint8)
        objs = []
        for _ in range(0 if i == 0 else 1 + i % 2):
            x1, y1 = (int(v) for v in rng.integers(0, size // 2, 2))
            w, h = (int(v) for v in rng.integers(12, size // 2, 2))
            class_id = int(rng.integers(0, len(CLASSES)))
            cv2.rectangle(image, (x1, y1), (x1 + w, y1 + h), COLOURS[class_id], -1)
            objs.append(obj(class_id, x1, y1, x1 + w, y1 + h))
        ids.append(f"set/{i:03d}")
        uris.append(os.path.join(str(root), f"img_{i:03d}.jpg"))
        cv2.imwrite(uris[-1], image)
        rows.append((ids[-1], "train" if i < n_train else "val", objs))
    manifest = write_manifest(storage.join(str(root), "pool.parquet"), ids, uris)
    labels = storage.join(str(root), "labels.parquet")
    storage.write_table(labels_table(rows), labels)
    return labels, manifest


def tiny_config(**train_overrides):
    """Nano at input 64, one epoch, two workers: seconds of compute for Ray Train plumbing tests (a
    TrainingSetup, as stages.training makes one from a Config)."""
    from raylib.training.worker import TrainingSetup

    train_cfg = {"epochs": 1, "batch_size": 4, "num_workers": 2, "cpus_per_worker": 1.0, "warmup_epochs": 0,
                 "no_aug_epochs": 0, "eval_interval": 1, "max_failures": 0, **train_overrides}
    return TrainingSetup(TrainConfig(**train_cfg), ModelConfig(size="nano", input_size=64))


def labels_to_coco(
    labels: pa.Table, class_names: list[str], sizes: dict[str, tuple[int, int]] | None = None
) -> dict:
    """Labels (`image_id`, `objects`) -> a COCO dataset dict, as annotation tools export one (tests build
    deliveries with it). `sizes` maps image_id -> (width, height);
    images without a size are written without width/height."""
    sizes = sizes or {}
    images, annotations = [], []
    rows = labels.select(["image_id", "objects"]).to_pylist()
    for index, row in enumerate(rows):
        image, size = {"id": index + 1, "file_name": row["image_id"]}, sizes.get(row["image_id"])
        if size is not None:
            image["width"], image["height"] = int(size[0]), int(size[1])
        images.append(image)
        for obj in row["objects"] or []:
            bbox = coco._bbox(obj["x1"], obj["y1"], obj["x2"], obj["y2"])
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(obj["class_id"]) + 1,
                 "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "difficult": int(bool(obj["difficult"]))}
            )
    return {"images": images, "annotations": annotations, "categories": coco.categories(class_names)}


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@contextlib.contextmanager
def local_ray_head(temp_dir: str):
    """A real head of our own (`ray start --head --block`, free ports, its own session and temp dir) for
    tests about Ray jobs; yields its dashboard address. SIGKILLed with its process group after: its graceful
    stop took 30 s of CI, and nothing of this throwaway head needs saving."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient
    from hydra_plugins.raylib_launcher.ray_jobs_launcher import submit_when_an_agent_is_up

    gcs, dashboard, client, agent = free_ports(4)
    # 2.60 heads default to token auth, and the test process's Ray read its (disabled) auth mode at import:
    # a head on 127.0.0.1 only, without auth. `python` in a job's entrypoint is this venv's.
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block", f"--port={gcs}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:  # the dashboard answers once the head is up
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except AuthenticationError:
                raise
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        # The dashboard answers before the raylet's job agent has registered: a no-op job, submitted as the
        # sweep launcher submits its points, returns once a job is taken.
        submit_when_an_agent_is_up(JobSubmissionClient(address), entrypoint="true")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def tensorboard_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard's own reader reads the event files of `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(point.step, point.value) for point in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def write_detection_parts(detections, folder: str, parts: int) -> None:
    """A frame of (image_id, class_id, score) rows as a round's detections/ in `parts` schema-true Parquet
    parts (cls_conf = score, loc_conf 1, a unit box), rows in frame order."""
    bounds = np.linspace(0, len(detections), parts + 1).astype(int)
    for i in range(parts):
        chunk = detections.iloc[bounds[i]:bounds[i + 1]]
        n = len(chunk)
        table = pa.table({
            "round": pa.array([0] * n, pa.int16()), "image_id": chunk["image_id"].tolist(),
            "class_id": pa.array(chunk["class_id"], pa.int16()), "cls_conf": pa.array(chunk["score"], pa.float32()),
            "loc_conf": pa.array([1.0] * n, pa.float32()), "score": pa.array(chunk["score"], pa.float32()),
            **{name: pa.array([1.0 + (name in ("x2", "y2"))] * n, pa.float32()) for name in schemas.BOX},
        })
        storage.write_table(schemas.check(table, schemas.DETECTIONS, "detections"), f"{folder}/part-{i:03d}.parquet")


def small_s3_pages(monkeypatch, page_size: int) -> list[int]:
    """Make every boto3 client's paginators (still the real client, talking to the moto server) return
    pages of `page_size` entries, so that a listing of a few keys crosses pages; returns the list the
    pages' KeyCount are appended to."""
    import boto3

    real_client = boto3.client
    pages: list[int] = []

    class SmallPages:
        def __init__(self, *args, **kwargs):
            self._client = real_client(*args, **kwargs)

        def get_paginator(self, name):
            paginator = self._client.get_paginator(name)

            class Wrapped:
                def paginate(self, **kwargs):
                    for page in paginator.paginate(PaginationConfig={"PageSize": page_size}, **kwargs):
                        pages.append(page["KeyCount"])
                        yield page

            return Wrapped()

    monkeypatch.setattr(boto3, "client", SmallPages)
    return pages
