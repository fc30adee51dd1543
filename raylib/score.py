"""Score the unlabelled pool with Ray Data (seed pseudo-code 1), streaming, nothing on the driver.

    manifest (image_id, uri)
      -> load_images   CPU tasks: read bytes (local/S3), decode (raylib.images), letterbox to uint8
      -> YoloxScorer   actor pool: YOLOX once per actor (GPU: fp16, channels_last), decode + NMS,
                       strategy score; one row per image with its detections nested
      -> write_parquet round=NN/scored/
      -> split tasks   scored file i -> detections/i.parquet (one row per detection)
                                      + image_status/i.parquet (one row per image)

Every image leaves the actor as exactly one row, ok or error, so "nothing lost" is a row count.
Ray retries a failed task (or a task of a dead actor or node) whole and a retried write task rewrites
the same file, so rows are neither lost nor duplicated. Ray 2.60 also has Ray Data row-level
checkpointing (`ray.data.checkpoint.CheckpointConfig(id_column=...)`), which could resume a killed
scoring run part-way; we rerun the stage whole instead (it is idempotent: outputs are cleared first),
which keeps one code path and costs at most one scoring pass per crash.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch

from raylib import images, schemas, storage, strategies
from raylib.config import Config
from raylib.model import decode, letterbox, load_model, to_input
from raylib.paths import RoundPaths

log = logging.getLogger(__name__)

_DETECTION_FIELDS = [f for f in schemas.DETECTIONS if f.name not in ("round", "image_id")]
SCORED = pa.schema([
    *[f for f in schemas.IMAGE_STATUS],
    pa.field("detections", pa.list_(pa.struct(_DETECTION_FIELDS))),
])


@dataclass
class ScoreSummary:
    n_images: int
    n_ok: int
    n_error: int
    n_detections: int


def load_images(batch: dict[str, np.ndarray], side: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Read and letterbox a batch of manifest rows; a bad image gets an error message, not an exception."""
    n = len(batch["image_id"])
    canvases = np.full((n, side, side, 3), 114, dtype=np.uint8)
    ratios = np.ones(n, dtype=np.float32)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    errors = np.array([""] * n, dtype=object)
    for i, (image_id, uri) in enumerate(zip(batch["image_id"], batch["uri"])):
        try:
            image = images.decode_image(storage.read_bytes(uri), image_id, max_pixels)
        except images.ImageError as exc:
            errors[i] = str(exc)
            continue
        except (FileNotFoundError, OSError) as exc:
            missing = isinstance(exc, FileNotFoundError) or "NoSuchKey" in str(exc) or "not found" in str(exc).lower()
            errors[i] = (f"image '{image_id}' is missing at its uri" if missing
                         else f"image '{image_id}' could not be read ({type(exc).__name__})")
            continue
        canvases[i], ratios[i] = letterbox(image, side)
        heights[i], widths[i] = image.shape[:2]
    return {"image_id": batch["image_id"], "image": canvases, "ratio": ratios, "height": heights,
            "width": widths, "error": errors}


class YoloxScorer:
    """Ray Data callable class: the model is loaded once per actor, then scores batches."""

    def __init__(self, cfg: Config, weights_uri: str | None, num_classes: int, round_idx: int):
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.score.num_gpus_per_actor > 0 else "cpu")
        if self.device.type == "cpu":
            threads = cfg.score.torch_threads or max(1, round(cfg.score.num_cpus_per_actor))
            torch.set_num_threads(threads)
        model = load_model(cfg.model.size, num_classes, weights_uri).eval().to(self.device)
        self.half = self.device.type == "cuda" and cfg.score.fp16
        self.channels_last = self.device.type == "cuda" and cfg.score.channels_last
        if self.half:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.cfg = cfg
        self.round_idx = round_idx

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Score a batch. If the model raises on it, score its images one by one so one bad input
        costs only its own row (recorded as an error), not the batch or the run."""
        ok = np.flatnonzero(batch["error"] == "")
        try:
            detections = self._detect(batch, ok)
        except Exception as exc:  # noqa: BLE001 - any model failure becomes error rows, never a lost batch
            log.warning("scoring a batch of %d failed (%s); retrying image by image", len(ok), type(exc).__name__)
            detections = {}
            errors = batch["error"].copy()
            for i in ok:
                try:
                    detections.update(self._detect(batch, np.array([i])))
                except Exception as image_exc:  # noqa: BLE001
                    errors[i] = f"image '{batch['image_id'][i]}' could not be scored ({type(image_exc).__name__}: {image_exc})"
            batch = {**batch, "error": errors}
        return self._table(batch, detections)

    @torch.inference_mode()
    def _detect(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[int, list[dict]]:
        detections: dict[int, list[dict]] = {}
        if len(ok):
            inputs = to_input(torch.from_numpy(batch["image"][ok]).to(self.device, non_blocking=True))
            if self.half:
                inputs = inputs.half()
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            outputs = self.model(inputs)
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in ok]
            decoded = decode(outputs, [float(batch["ratio"][i]) for i in ok], sizes,
                             candidate_conf=self.cfg.score.candidate_conf,
                             nms_threshold=self.cfg.score.nms_threshold,
                             max_detections=self.cfg.score.max_detections)
            detections = {int(i): self._rows(str(batch["image_id"][i]), dets) for i, dets in zip(ok, decoded)}
        return detections

    def _rows(self, image_id: str, dets) -> list[dict]:
        """Pseudo-code 1: keep detections whose confidence cls_conf x loc_conf > min_score."""
        confidence = dets.cls_conf * dets.loc_conf
        keep = confidence > self.cfg.strategy.min_score
        if not keep.any():
            return []
        probs = dets.class_probs[keep]
        scores = strategies.detection_scores(
            self.cfg.strategy.name, dets.cls_conf[keep], dets.loc_conf[keep], probs,
            [image_id] * int(keep.sum()), seed=self.cfg.strategy.seed)
        boxes = dets.boxes[keep]
        return [
            {"class_id": int(c), "cls_conf": float(cc), "loc_conf": float(lc), "score": float(s),
             "x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]),
             "class_probs": p.tolist() if self.cfg.score.keep_class_probs else None}
            for c, cc, lc, s, b, p in zip(dets.class_id[keep], dets.cls_conf[keep], dets.loc_conf[keep],
                                           scores, boxes, probs)
        ]

    def _table(self, batch: dict[str, np.ndarray], detections: dict[int, list[dict]]) -> pa.Table:
        n = len(batch["image_id"])
        errors = [e or None for e in batch["error"]]
        rows = [detections.get(i, []) for i in range(n)]
        return pa.Table.from_pydict({
            "round": [self.round_idx] * n,
            "image_id": [str(i) for i in batch["image_id"]],
            "status": [schemas.STATUS_ERROR if e else schemas.STATUS_OK for e in errors],
            "error": errors,
            "n_detections": [len(r) for r in rows],
            "detections": rows,
        }, schema=SCORED)


@ray.remote(num_cpus=0.25)
def _split_scored_file(scored_uri: str, detections_uri: str, status_uri: str) -> tuple[int, int, int]:
    """One scored file -> its detections file (flattened) and its image_status file."""
    scored = storage.read_table(scored_uri)
    status = schemas.check(scored.drop_columns(["detections"]), schemas.IMAGE_STATUS, "image_status")
    nested = scored.column("detections").combine_chunks()
    repeats = np.diff(nested.offsets.to_numpy())
    flat = nested.flatten()
    columns = {"round": pa.array(np.repeat(scored.column("round").to_numpy(), repeats), pa.int16()),
               "image_id": pa.array(np.repeat(scored.column("image_id").to_numpy(zero_copy_only=False), repeats),
                                    pa.string())}
    columns.update({field.name: flat.field(field.name) for field in _DETECTION_FIELDS})
    detections = schemas.check(pa.table(columns), schemas.DETECTIONS, "detections")
    storage.write_table(detections, detections_uri)
    storage.write_table(status, status_uri)
    n_ok = int(sum(1 for s in status.column("status").to_pylist() if s == schemas.STATUS_OK))
    return status.num_rows, n_ok, detections.num_rows


def score_pool(manifest_uri: str, weights_uri: str | None, out: RoundPaths, cfg: Config,
               class_names: list[str], scorer_cls: type = YoloxScorer) -> ScoreSummary:
    """Score every image of `manifest_uri`; write detections/ and image_status/ under `out`.

    `scorer_cls` is the actor class (a subclass of YoloxScorer); fault-injection tests pass one."""
    scored_dir = storage.join(out.root, "scored")
    for uri in (scored_dir, out.detections, out.image_status):
        storage.delete(uri)  # a rerun after a crash starts clean: the stage is redone whole
    fs, manifest_path = storage.resolve(manifest_uri)
    side = cfg.model.input_size
    dataset = (
        ray.data.read_parquet(manifest_path, filesystem=fs, columns=["image_id", "uri"])
        .map_batches(load_images, fn_kwargs={"side": side, "max_pixels": cfg.score.max_pixels},
                     batch_size=cfg.score.batch_size, num_cpus=cfg.score.decode_num_cpus, batch_format="numpy")
        .map_batches(scorer_cls, fn_constructor_kwargs={"cfg": cfg, "weights_uri": weights_uri,
                                                         "num_classes": len(class_names),
                                                         "round_idx": out.round_idx},
                     compute=ray.data.ActorPoolStrategy(size=cfg.score.num_actors),
                     batch_size=cfg.score.batch_size, num_cpus=cfg.score.num_cpus_per_actor,
                     num_gpus=cfg.score.num_gpus_per_actor or None, batch_format="numpy")
    )
    _, scored_path = storage.resolve(scored_dir)
    storage.makedirs(scored_dir)
    dataset.write_parquet(scored_path, filesystem=fs, min_rows_per_file=cfg.score.rows_per_file)

    tasks = []
    for index, scored_uri in enumerate(storage.list_files(scored_dir, ".parquet")):
        name = f"part-{index:05d}.parquet"
        tasks.append(_split_scored_file.remote(scored_uri, storage.join(out.detections, name),
                                               storage.join(out.image_status, name)))
    n_images = n_ok = n_detections = 0
    for images_in_file, ok_in_file, detections_in_file in ray.get(tasks):
        n_images += images_in_file
        n_ok += ok_in_file
        n_detections += detections_in_file
    storage.delete(scored_dir)
    if n_images == 0:  # an empty pool still gets (empty) tables, so readers find the directories
        storage.write_table(schemas.empty(schemas.DETECTIONS), storage.join(out.detections, "part-00000.parquet"))
        storage.write_table(schemas.empty(schemas.IMAGE_STATUS), storage.join(out.image_status, "part-00000.parquet"))
    summary = ScoreSummary(n_images=n_images, n_ok=n_ok, n_error=n_images - n_ok, n_detections=n_detections)
    log.info("scored %s: %s", manifest_uri, summary)
    return summary


