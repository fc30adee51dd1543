"""Score the unlabelled pool with Ray Data (seed pseudo-code 1), streaming, nothing on the driver.

    manifest (image_id, uri)
      -> load_images   CPU tasks: read bytes (local/S3), decode (raylib.images), letterbox to uint8
      -> YoloxScorer   actor pool: YOLOX once per actor (GPU: fp16, channels_last), decode + NMS,
                       strategy score; one row per image with its detections nested
      -> write_parquet round=NN/scored/
      -> split tasks   scored file i -> detections/i.parquet (one row per detection)
                                      + image_status/i.parquet (one row per image)

Every image leaves the actor as exactly one row, ok or error, so "nothing lost" is a row count, and
its detections travel inside that row, so they can't be written twice or apart from their status.
Ray retries a failed task (or a task of a dead actor or node) whole and a retried write task rewrites
the same file, so rows are neither lost nor duplicated (tests/test_faults_scoring.py kills a node).

Resume: Ray 2.60 has row-level checkpointing for Ray Data (`ray.data.checkpoint.CheckpointConfig(
id_column=..., checkpoint_path=...)`, set on `DataContext.checkpoint_config`; beta; see
ray/data/checkpoint/interfaces.py and ray/data/_internal/planner/checkpoint/). It only applies to a
read -> map -> write plan whose id column survives every operator, and our second step (the split)
is outside it. We rerun the stage whole instead: outputs are cleared first and the loop's marker is
written last, which keeps one code path and costs at most one scoring pass per crash.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch

from raylib import images, schemas, storage, strategies
from raylib.config import Config
from raylib.model import ImageDetections, decode, letterbox, load_model, to_input
from raylib.paths import RoundPaths

log = logging.getLogger(__name__)

_DETECTION_FIELDS = [f for f in schemas.DETECTIONS if f.name not in ("round", "image_id")]
DETECTION_STRUCT = pa.struct(_DETECTION_FIELDS)
SCORED = pa.schema([
    *list(schemas.IMAGE_STATUS),
    pa.field("detections", pa.list_(DETECTION_STRUCT)),
])


@dataclass
class ScoreSummary:
    n_images: int
    n_ok: int
    n_error: int
    n_detections: int


def read_error(image_id: str, exc: BaseException) -> str:
    """The status message for an image whose bytes could not be read."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "NoSuchKey" in text or "not found" in text.lower() \
            or "does not exist" in text.lower():
        return f"image '{image_id}' is missing at its uri; recorded, skipped"
    return f"image '{image_id}' could not be read ({type(exc).__name__}: {text[:200]}); recorded, skipped"


def load_images(batch: dict[str, np.ndarray], side: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Read and letterbox a batch of manifest rows; a bad image gets an error message, not an exception.

    Every failure of one image (missing, unreadable, not an image, truncated, over `max_pixels`, or
    anything a decoder raises on hostile bytes) becomes that image's `error`, so one file can never
    fail the task, and with it the stage."""
    n = len(batch["image_id"])
    canvases = np.full((n, side, side, 3), 114, dtype=np.uint8)
    ratios = np.ones(n, dtype=np.float32)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    errors = np.array([""] * n, dtype=object)
    for i, (image_id, uri) in enumerate(zip(batch["image_id"], batch["uri"])):
        try:
            data = storage.read_bytes(uri)
        except Exception as exc:  # noqa: BLE001 - FileNotFoundError, OSError from S3, ...
            errors[i] = read_error(image_id, exc)
            continue
        try:
            image = images.decode_image(data, image_id, max_pixels)
        except images.ImageError as exc:
            errors[i] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - decoders raise odd types on hostile files
            errors[i] = f"image '{image_id}' could not be decoded ({type(exc).__name__}: {exc}); skipped"
            continue
        canvases[i], ratios[i] = letterbox(image, side)
        heights[i], widths[i] = image.shape[:2]
    return {"image_id": batch["image_id"], "image": canvases, "ratio": ratios, "height": heights,
            "width": widths, "error": errors}


def cpu_threads(num_cpus: float, torch_threads: int | None) -> int:
    """Intra-op threads of a CPU actor: `score.torch_threads` if set, else its whole CPUs (at least 1).

    Ray sets OMP_NUM_THREADS = floor(num_cpus) (1 for fractional actors) in its workers; we set the
    count explicitly so that a config, not an environment default, decides it."""
    return torch_threads or max(1, int(num_cpus))


class YoloxScorer:
    """Ray Data callable class: the model is loaded once per actor, then scores batches."""

    def __init__(self, cfg: Config, weights_uri: str | None, num_classes: int, round_idx: int):
        wants_gpu = cfg.score.num_gpus_per_actor > 0
        if wants_gpu and not torch.cuda.is_available():
            log.warning("score.num_gpus_per_actor=%s but this actor sees no CUDA device: scoring on CPU",
                        cfg.score.num_gpus_per_actor)
        self.device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.score.num_cpus_per_actor, cfg.score.torch_threads))
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
                    errors[i] = (f"image '{batch['image_id'][i]}' could not be scored "
                                 f"({type(image_exc).__name__}: {image_exc}); recorded, skipped")
            batch = {**batch, "error": errors}
        return self._table(batch, detections)

    @torch.inference_mode()
    def _detect(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[int, ImageDetections]:
        """{batch index: detections kept by pseudo-code 1} for the rows `ok` of the batch."""
        if not len(ok):
            return {}
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
        return {int(i): keep_confident(dets, self.cfg.strategy.min_score) for i, dets in zip(ok, decoded)}

    def _table(self, batch: dict[str, np.ndarray], detections: dict[int, ImageDetections]) -> pa.Table:
        n = len(batch["image_id"])
        image_ids = np.array([str(i) for i in batch["image_id"]], dtype=object)
        errors = [e or None for e in batch["error"]]
        per_image = [detections.get(i) for i in range(n)]
        nested = nest_detections(per_image, image_ids, self.cfg)
        return pa.Table.from_arrays([
            pa.array(np.full(n, self.round_idx, dtype=np.int16)),
            pa.array(image_ids, pa.string()),
            pa.array([schemas.STATUS_ERROR if e else schemas.STATUS_OK for e in errors], pa.string()),
            pa.array(errors, pa.string()),
            pa.array(np.diff(nested.offsets.to_numpy()).astype(np.int32)),
            nested,
        ], schema=SCORED)


def keep_confident(dets: ImageDetections, min_score: float) -> ImageDetections:
    """Pseudo-code 1: keep the detections whose confidence cls_conf x loc_conf is > min_score.

    The floor is on the confidence whatever the strategy: a margin or entropy score is not a
    confidence (see strategies.selection_min_score)."""
    keep = dets.cls_conf * dets.loc_conf > min_score
    return ImageDetections(class_id=dets.class_id[keep], cls_conf=dets.cls_conf[keep],
                           loc_conf=dets.loc_conf[keep], boxes=dets.boxes[keep],
                           class_probs=dets.class_probs[keep])


def nest_detections(per_image: list[ImageDetections | None], image_ids: np.ndarray, cfg: Config) -> pa.ListArray:
    """The detections of each image as one list<struct> value per image (empty for error rows),
    built from whole arrays: the strategy scores every detection of the batch in one call."""
    counts = np.array([0 if d is None else len(d.class_id) for d in per_image], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    present = [d for d in per_image if d is not None and len(d.class_id)]

    def stacked(name: str, dtype: type, empty_shape: tuple[int, ...] = (0,)) -> np.ndarray:
        if present:
            return np.concatenate([getattr(d, name) for d in present]).astype(dtype)
        return np.empty(empty_shape, dtype=dtype)

    cls_conf, loc_conf = stacked("cls_conf", np.float32), stacked("loc_conf", np.float32)
    boxes, probs = stacked("boxes", np.float32, (0, 4)), stacked("class_probs", np.float32, (0, 0))
    scores = strategies.detection_scores(cfg.strategy.name, cls_conf, loc_conf, probs,
                                         np.repeat(image_ids, counts), seed=cfg.strategy.seed)
    if cfg.score.keep_class_probs:
        prob_offsets = pa.array(np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1])
        class_probs = pa.ListArray.from_arrays(prob_offsets, pa.array(probs.reshape(-1), pa.float32()))
    else:
        class_probs = pa.nulls(len(probs), pa.list_(pa.float32()))
    columns = {
        "class_id": pa.array(stacked("class_id", np.int16)),
        "cls_conf": pa.array(cls_conf), "loc_conf": pa.array(loc_conf),
        "score": pa.array(np.asarray(scores, dtype=np.float32)),
        **{name: pa.array(np.ascontiguousarray(boxes[:, j])) for j, name in enumerate(schemas.BOX)},
        "class_probs": class_probs,
    }
    struct = pa.StructArray.from_arrays([columns[f.name] for f in _DETECTION_FIELDS], fields=_DETECTION_FIELDS)
    return pa.ListArray.from_arrays(pa.array(offsets), struct, type=pa.list_(DETECTION_STRUCT))


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


def manifest_rows(manifest_uri: str) -> int:
    """Rows of a manifest file or folder, from the Parquet footers (no data read)."""
    fs, path = storage.resolve(manifest_uri)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


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
        # A manifest file is read as one block, and a block goes to one actor whole: split it into
        # batch-sized blocks so that every actor gets work and decoding streams into inference.
        .repartition(target_num_rows_per_block=cfg.score.batch_size)
        .map_batches(load_images, fn_kwargs={"side": side, "max_pixels": cfg.score.max_pixels},
                     batch_size=cfg.score.batch_size, num_cpus=cfg.score.decode_num_cpus, batch_format="numpy")
        .map_batches(scorer_cls, fn_constructor_kwargs={"cfg": cfg, "weights_uri": weights_uri,
                                                         "num_classes": len(class_names),
                                                         "round_idx": out.round_idx},
                     compute=ray.data.ActorPoolStrategy(size=cfg.score.num_actors),
                     batch_size=cfg.score.batch_size, num_cpus=cfg.score.num_cpus_per_actor,
                     num_gpus=cfg.score.num_gpus_per_actor or None, batch_format="numpy")
    )
    # Resolved on their own: the manifest may be local while the run root is on S3, or the reverse.
    out_fs, scored_path = storage.resolve(scored_dir)
    storage.makedirs(scored_dir)
    dataset.write_parquet(scored_path, filesystem=out_fs, min_rows_per_file=cfg.score.rows_per_file)

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
    expected = manifest_rows(manifest_uri)
    if n_images != expected:  # never seen; a guard so that a lost image fails the stage, not the round
        raise RuntimeError(f"scoring {manifest_uri}: {n_images} status rows for {expected} pool images")
    if n_images == 0:  # an empty pool still gets (empty) tables, so readers find the directories
        storage.write_table(schemas.empty(schemas.DETECTIONS), storage.join(out.detections, "part-00000.parquet"))
        storage.write_table(schemas.empty(schemas.IMAGE_STATUS), storage.join(out.image_status, "part-00000.parquet"))
    summary = ScoreSummary(n_images=n_images, n_ok=n_ok, n_error=n_images - n_ok, n_detections=n_detections)
    log.info("scored %s: %s", manifest_uri, summary)
    return summary


