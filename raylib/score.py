"""Score the unlabelled pool with Ray Data (seed pseudo-code 1), streaming, nothing on the driver.

    manifest (image_id, uri)
      -> load_images   CPU tasks: read bytes (local/S3), decode (raylib.images), letterbox to uint8
         or read_images  (score.device_decode, GPUs) read bytes, check headers: JPEGs travel as bytes
      -> YoloxScorer   actor pool: YOLOX once per actor (GPU: JPEGs decoded with nvJPEG and letterboxed
                       on the device, fp16, channels_last, several batches in flight), post-process of
                       the whole batch at once (model.decode_batch), strategy score; one row per image
                       (its size, status and its detections nested: raylib/scored.py)
      -> write_parquet round=NN/scored/
      -> split tasks   scored file i -> detections/i.parquet (one row per detection)
                                      + image_status/i.parquet (one row per image)
                                      + embeddings/i.parquet (diversity strategies: one per ok image)

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

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch

from raylib import images, paths, runtime, schemas, scored, storage
from raylib.config import ModelConfig, ScoreConfig, StrategyConfig
from raylib.model import (BatchDetections, WithEmbedding, decode_batch, letterbox, letterbox_on_device, load_model,
                          to_input)
from raylib.paths import RoundPaths

log = logging.getLogger(__name__)

@dataclass
class ScoreSummary:
    n_images: int
    n_ok: int
    n_error: int
    n_detections: int


def load_images(batch: dict[str, np.ndarray], side: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Read, decode and letterbox a batch of manifest rows on a CPU; a bad image gets an error message,
    not an exception.

    Every failure of one image (missing, unreadable, not an image, truncated, over `max_pixels`, or
    anything a decoder raises on hostile bytes) becomes that image's `error`, so one file can never
    fail the task, and with it the stage."""
    n = len(batch["image_id"])
    canvases = np.full((n, side, side, 3), 114, dtype=np.uint8)
    ratios = np.ones(n, dtype=np.float32)
    heights, widths = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    errors = np.array([""] * n, dtype=object)
    for i, (image_id, uri) in enumerate(zip(batch["image_id"], batch["uri"])):
        try:
            image = images.decode_image(images.read_image_bytes(uri, image_id), image_id, max_pixels)
        except images.ImageError as exc:
            errors[i] = str(exc)
            continue
        canvases[i], ratios[i] = letterbox(image, side)
        heights[i], widths[i] = image.shape[:2]
    return {"image_id": batch["image_id"], "uri": batch["uri"], "image": canvases, "ratio": ratios,
            "height": heights, "width": widths, "error": errors}


def read_images(batch: dict[str, np.ndarray], side: int, max_pixels: int) -> dict[str, np.ndarray]:
    """The device-decode path's CPU task: read each image and look at its header only. JPEGs the
    device can decode travel as their bytes (tens of KB, not a 1.2 MB canvas); every other image is
    decoded and letterboxed here, as `load_images` does, and travels as its canvas bytes. Errors as
    in `load_images`."""
    n = len(batch["image_id"])
    payloads = np.array([b""] * n, dtype=object)
    is_jpeg = np.zeros(n, dtype=bool)
    ratios = np.ones(n, dtype=np.float32)
    heights, widths = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    errors = np.array([""] * n, dtype=object)
    for i, (image_id, uri) in enumerate(zip(batch["image_id"], batch["uri"])):
        try:
            data = images.read_image_bytes(uri, image_id)
            widths[i], heights[i], is_jpeg[i] = images.probe(data, image_id, max_pixels)
            if not is_jpeg[i]:
                image = images.decode_image(data, image_id, max_pixels)
                canvas, ratios[i] = letterbox(image, side)
                heights[i], widths[i] = image.shape[:2]
                data = canvas.tobytes()
        except images.ImageError as exc:
            errors[i] = str(exc)
            continue
        payloads[i] = data
    return {"image_id": batch["image_id"], "uri": batch["uri"], "data": payloads, "is_jpeg": is_jpeg,
            "ratio": ratios, "height": heights, "width": widths, "error": errors}


@dataclass
class ScoringSetup:
    """What scoring reads of the config (stages.scoring builds it): its own slice, the model, the
    strategy (the score rule, min_score), the images' pixel cap, and whether rows carry embeddings
    (the diversity strategies' features; the seed set's k-center too)."""
    score: ScoreConfig
    model: ModelConfig
    strategy: StrategyConfig
    max_pixels: int
    embeddings: bool = False


class YoloxScorer:
    """Ray Data callable class: the model is loaded once per actor, then scores batches.

    A batch comes from `load_images` (letterboxed canvases) or `read_images` (JPEG bytes, decoded and
    letterboxed here on the actor's device). With `score.concurrent_batches` > 1 Ray Data calls it from
    that many threads at once; each thread has its own CUDA stream, so one batch's decode, the model on
    another and a third one's Arrow rows overlap."""

    def __init__(self, setup: ScoringSetup, weights_uri: str | None, num_classes: int, round_idx: int):
        self.score, self.strategy, self.side = setup.score, setup.strategy, setup.model.input_size
        self.max_pixels = setup.max_pixels
        wants_gpu = self.score.num_gpus_per_actor > 0
        if wants_gpu and not torch.cuda.is_available():
            log.warning("score.num_gpus_per_actor=%s but this actor sees no CUDA device: scoring on CPU",
                        self.score.num_gpus_per_actor)
        self.device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(runtime.cpu_threads(self.score.num_cpus_per_actor, self.score.torch_threads))
        model = load_model(setup.model.size, num_classes, weights_uri).eval().to(self.device)
        self.embeds = setup.embeddings
        if self.embeds:
            model = WithEmbedding(model)
        self.half = self.device.type == "cuda" and self.score.fp16
        self.channels_last = self.device.type == "cuda" and self.score.channels_last
        if self.half:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.compiled = torch.compile(model, dynamic=False) if self.score.compile else None
        if self.compiled is not None:
            self._compile_now()
        self.round_idx = round_idx
        # Detections at or under strategy.min_score are dropped after NMS, and NMS never lets a lower
        # score suppress a higher one, so filtering them before NMS keeps exactly the same rows.
        self.candidate_conf = max(self.score.candidate_conf, self.strategy.min_score)
        self._threads = threading.local()

    def _compile_now(self) -> None:
        """Compile `self.compiled` at start-up: one call on a full batch through `_forward`, under inference
        mode, as `_detect` calls it. Dynamo guards on shape, layout, dtype and grad mode, so the actor's
        threads later only run the compiled graph (compiling from several threads at once is what
        torch.compile is not safe for)."""
        started = time.perf_counter()
        with torch.inference_mode():
            self._forward(self.compiled, torch.zeros((self.score.batch_size, 3, self.side, self.side),
                                                     device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        print(f"[score] compiled the model in {time.perf_counter() - started:.1f} s", flush=True)

    def _forward(self, net: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model on float inputs [n, 3, side, side], in the actor's dtype and memory format: its raw
        outputs and, for a diversity strategy, the images' embeddings (else None). The
        compiled model is compiled for one shape and layout (Dynamo guards on sizes and strides; another
        would compile again, for minutes): batches of batch_size, shorter ones padded with zeros, and
        contiguous (the CPU path's inputs are a view of the HWC canvases)."""
        n = len(inputs)
        if net is self.compiled:
            if n < self.score.batch_size:
                inputs = torch.cat([inputs, inputs.new_zeros((self.score.batch_size - n, *inputs.shape[1:]))])
            inputs = inputs.contiguous()
        if self.half:
            inputs = inputs.half()
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        outputs = net(inputs)
        if self.embeds:
            return outputs[0][:n], outputs[1][:n]
        return outputs[:n], None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Score a batch. If the model raises on it, score its images one by one so one bad input
        costs only its own row (recorded as an error), not the batch or the run."""
        with self._stream():
            inputs, ratios, errors = self._inputs(batch)
            batch = {**batch, "error": errors}
            ok = np.flatnonzero(errors == "")
            try:
                detections, embeddings = self._detect(inputs, ratios, batch, ok)
            except Exception as exc:  # noqa: BLE001 - any model failure becomes error rows, never a lost batch
                log.warning("scoring a batch of %d failed (%s); retrying image by image", len(ok),
                            type(exc).__name__)
                detections, embeddings, errors = [], {}, errors.copy()
                for position, i in enumerate(ok):
                    try:
                        one, embeddings[i] = self._detect(inputs[position:position + 1],
                                                          ratios[position:position + 1], batch, np.array([i]),
                                                          compiled=False)
                        detections.append(one)
                    except Exception as image_exc:  # noqa: BLE001
                        errors[i] = (f"image '{batch['image_id'][i]}' could not be scored "
                                     f"({type(image_exc).__name__}: {image_exc}); recorded, skipped")
                batch = {**batch, "error": errors}
                detections = scored.concat_detections(detections)
                embeddings = np.concatenate(list(embeddings.values())) if self.embeds and embeddings else None
        return self._table(batch, detections, embeddings)

    def _stream(self):
        """This thread's CUDA stream (a no-op context on CPU)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if not hasattr(self._threads, "stream"):
            self._threads.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self._threads.stream)

    def _inputs(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The model input [n_ok, 3, side, side] on the device, each image's ratio, and the batch's
        errors (with the images the device could not decode and the CPU refused added)."""
        errors = batch["error"].copy()
        ok = np.flatnonzero(errors == "")
        if "image" in batch:  # load_images: canvases decoded on a CPU
            inputs = to_input(torch.from_numpy(batch["image"][ok]).to(self.device, non_blocking=True))
            return inputs, torch.from_numpy(batch["ratio"][ok]), errors
        jpegs = [i for i in ok if batch["is_jpeg"][i]]
        on_device = dict(zip(jpegs, images.decode_jpegs([batch["data"][i] for i in jpegs], self.device)))
        ratios, canvases = np.ones(len(batch["error"]), dtype=np.float32), {}
        for i in ok:
            if i in on_device and on_device[i] is None:  # the device refused it: decode as the CPU path does
                try:
                    image = images.decode_image(batch["data"][i], batch["image_id"][i], self.max_pixels)
                except images.ImageError as exc:
                    errors[i] = str(exc)
                    continue
                canvases[i], ratios[i] = letterbox(image, self.side)
            elif i not in on_device:  # read_images decoded it on a CPU
                canvases[i] = np.frombuffer(batch["data"][i], dtype=np.uint8).reshape(self.side, self.side, 3)
                ratios[i] = batch["ratio"][i]
        decoded = [i for i in ok if on_device.get(i) is not None]
        letterboxed, decoded_ratios = letterbox_on_device([on_device[i] for i in decoded], self.side)
        ratios[decoded] = decoded_ratios
        rows = {i: letterboxed[j] for j, i in enumerate(decoded)}
        for i, canvas in canvases.items():
            rows[i] = to_input(torch.from_numpy(canvas.copy())[None].to(self.device))[0]
        keep = [i for i in ok if i in rows]
        if keep == decoded:  # the common case, every image decoded on the device: no second copy
            return letterboxed, torch.from_numpy(ratios[keep]), errors
        inputs = torch.stack([rows[i] for i in keep]) if keep else torch.zeros((0, 3, self.side, self.side),
                                                                               device=self.device)
        return inputs, torch.from_numpy(ratios[keep]), errors

    @torch.inference_mode()
    def _detect(self, inputs: torch.Tensor, ratios: torch.Tensor, batch: dict[str, np.ndarray],
                ok: np.ndarray, compiled: bool = True) -> tuple[BatchDetections, np.ndarray | None]:
        """Detections kept by pseudo-code 1 for the rows `ok` of the batch (inputs in the same order),
        `image_index` referring to the batch, and the embeddings of those rows (float16 [len(ok), d];
        None unless the strategy needs them). `compiled=False`: the eager model (the one-by-one retry of
        a failed batch: a batch of one padded to a full batch would cost a batch per image)."""
        if not len(ok):
            return scored.concat_detections([]), None
        net = self.compiled if compiled and self.compiled is not None else self.model
        outputs, embeddings = self._forward(net, inputs)
        sizes = np.stack([batch["height"][ok], batch["width"][ok]], axis=1)
        detections = decode_batch(outputs, ratios, sizes, candidate_conf=self.candidate_conf,
                                  nms_threshold=self.score.nms_threshold,
                                  max_detections=self.score.max_detections)
        detections = scored.keep_confident(detections, self.strategy.min_score)
        detections.image_index = ok[detections.image_index]
        if embeddings is not None:  # unit length: k-center compares directions, and float16 can't hold a
            # weak model's neck (averages over 65504 seen after one epoch)
            embeddings = embeddings.float()
            embeddings = (embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
            embeddings = embeddings.astype(np.float16)
        return detections, embeddings

    def _table(self, batch: dict[str, np.ndarray], detections: BatchDetections,
               embeddings: np.ndarray | None) -> pa.Table:
        return scored.image_rows(batch, detections, embeddings, self.strategy, self.score.keep_class_probs,
                                 self.round_idx)


def manifest_rows(manifest_uri: str) -> int:
    """Rows of a manifest file or folder, from the Parquet footers (no data read)."""
    fs, path = storage.resolve(manifest_uri)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def score_pool(manifest_uri: str, weights_uri: str | None, out: RoundPaths, setup: ScoringSetup,
               class_names: list[str], scorer_cls: type = YoloxScorer) -> ScoreSummary:
    """Score every image of `manifest_uri`; write detections/ and image_status/ under `out`.

    `scorer_cls` is the actor class (a subclass of YoloxScorer); fault-injection tests pass one."""
    scored_dir = out.scored
    embeds = setup.embeddings
    for uri in (scored_dir, out.detections, out.image_status, out.embeddings):
        storage.delete(uri)  # a rerun after a crash starts clean: the stage is redone whole
    fs, manifest_path = storage.resolve(manifest_uri)
    sc = setup.score
    dataset = (
        ray.data.read_parquet(manifest_path, filesystem=fs, columns=["image_id", "uri"])
        # A manifest file is read as one block, and a block goes to one actor whole: split it into
        # batch-sized blocks so that every actor gets work and decoding streams into inference.
        .repartition(target_num_rows_per_block=sc.batch_size)
        .map_batches(read_images if sc.device_decode else load_images,
                     fn_kwargs={"side": setup.model.input_size, "max_pixels": setup.max_pixels},
                     batch_size=sc.batch_size, num_cpus=sc.decode_num_cpus, batch_format="numpy")
        .map_batches(scorer_cls, fn_constructor_kwargs={"setup": setup, "weights_uri": weights_uri,
                                                         "num_classes": len(class_names),
                                                         "round_idx": out.round_idx},
                     compute=ray.data.ActorPoolStrategy(
                         size=sc.num_actors, max_concurrent_calls_per_actor=sc.concurrent_batches,
                         enable_true_multi_threading=sc.concurrent_batches > 1),
                     batch_size=sc.batch_size, num_cpus=sc.num_cpus_per_actor,
                     num_gpus=sc.num_gpus_per_actor or None, batch_format="numpy")
    )
    # Resolved on their own: the manifest may be local while the run root is on S3, or the reverse.
    out_fs, scored_path = storage.resolve(scored_dir)
    storage.makedirs(scored_dir)
    runtime.report_progress(dataset, "score", manifest_rows(manifest_uri), scorer_cls.__name__)  # images done/total
    dataset.write_parquet(scored_path, filesystem=out_fs, min_rows_per_file=sc.rows_per_file)

    tasks = []
    for index, scored_uri in enumerate(storage.list_files(scored_dir, ".parquet")):
        tasks.append(scored.split_scored_file.remote(scored_uri, paths.part_file(out.detections, index),
                                               paths.part_file(out.image_status, index),
                                               paths.part_file(out.embeddings, index) if embeds else None))
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
        storage.write_table(schemas.empty(schemas.DETECTIONS), paths.part_file(out.detections, 0))
        storage.write_table(schemas.empty(schemas.IMAGE_STATUS), paths.part_file(out.image_status, 0))
        if embeds:
            storage.write_table(schemas.empty(schemas.EMBEDDINGS), paths.part_file(out.embeddings, 0))
    summary = ScoreSummary(n_images=n_images, n_ok=n_ok, n_error=n_images - n_ok, n_detections=n_detections)
    log.info("scored %s: %s", manifest_uri, summary)
    return summary


