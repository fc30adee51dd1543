"""Scoring's rows (raylib/score.py): one Arrow row per image with its detections nested (SCORED), built
from a batch's arrays, and the split of a scored file into the round's detections/, image_status/ and
(diversity strategies) embeddings/ parts.

One row per image out of the actor makes "nothing lost" a row count, and its detections travel inside
that row, so they can't be written twice or apart from their status.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylib import diversity, schemas, storage, strategies
from raylib.config import StrategyConfig
from raylib.model import BatchDetections

_DETECTION_FIELDS = [f for f in schemas.DETECTIONS if f.name not in ("round", "image_id")]
DETECTION_STRUCT = pa.struct(_DETECTION_FIELDS)
SCORED = pa.schema([
    *list(schemas.IMAGE_STATUS),
    pa.field("detections", pa.list_(DETECTION_STRUCT)),
    schemas.EMBEDDINGS.field("embedding"),  # null unless the strategy needs embeddings, and for error rows
])


def image_rows(batch: dict[str, np.ndarray], detections: BatchDetections, embeddings: np.ndarray | None,
               strategy: StrategyConfig, keep_class_probs: bool, round_idx: int) -> pa.Table:
    """A scored batch as SCORED rows: one per image of `batch` (its id, uri, size and error), its
    detections nested and scored by the strategy, and its embedding (diversity strategies)."""
    n = len(batch["image_id"])
    image_ids = np.array([str(i) for i in batch["image_id"]], dtype=object)
    errors = [e or None for e in batch["error"]]
    nested = nest_detections(detections, image_ids, strategy, keep_class_probs)
    known = batch["width"] > 0  # 0: the header could not be read
    return pa.Table.from_arrays([
        pa.array(np.full(n, round_idx, dtype=np.int16)),
        pa.array(image_ids, pa.string()),
        pa.array([schemas.STATUS_ERROR if e else schemas.STATUS_OK for e in errors], pa.string()),
        pa.array(errors, pa.string()),
        pa.array(np.diff(nested.offsets.to_numpy()).astype(np.int32)),
        pa.array(batch["width"].astype(np.int32), mask=~known),
        pa.array(batch["height"].astype(np.int32), mask=~known),
        pa.array([str(u) for u in batch["uri"]], pa.string()),
        nested,
        embedding_column(embeddings, batch["error"]),
    ], schema=SCORED)


def embedding_column(embeddings: np.ndarray | None, errors: np.ndarray) -> pa.ListArray:
    """One list<float16> per image of the batch: the rows of `embeddings` for the ok images, in order;
    null for error rows (and for every row when there are no embeddings)."""
    ok = np.array([not e for e in errors], dtype=bool)
    if embeddings is None or not ok.any():
        return pa.nulls(len(errors), schemas.EMBEDDINGS.field("embedding").type)
    dim = embeddings.shape[1]
    offsets = np.concatenate([[0], np.cumsum(ok * dim)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(embeddings.reshape(-1), pa.float16()),
                                    mask=pa.array(~ok))


def concat_detections(parts: list[BatchDetections]) -> BatchDetections:
    """Several batches' detections as one (image indexes unchanged)."""
    if not parts:
        return BatchDetections(image_index=np.zeros(0, np.int64), class_id=np.zeros(0, np.int16),
                               cls_conf=np.zeros(0, np.float32), loc_conf=np.zeros(0, np.float32),
                               boxes=np.zeros((0, 4), np.float32), class_probs=np.zeros((0, 0), np.float32))
    return BatchDetections(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                              for f in dataclasses.fields(BatchDetections)})


def keep_confident(dets: BatchDetections, min_score: float) -> BatchDetections:
    """Pseudo-code 1: keep the detections whose confidence cls_conf x loc_conf is > min_score.

    The floor is on the confidence whatever the strategy: a margin or entropy score is not a
    confidence (see strategies.selection_min_score)."""
    keep = dets.cls_conf * dets.loc_conf > min_score
    return BatchDetections(**{f.name: getattr(dets, f.name)[keep] for f in dataclasses.fields(BatchDetections)})


def nest_detections(dets: BatchDetections, image_ids: np.ndarray, strategy: StrategyConfig,
                    keep_class_probs: bool) -> pa.ListArray:
    """The detections of each image as one list<struct> value per image (empty for error rows),
    built from whole arrays: the strategy scores every detection of the batch in one call.
    `dets` rows are grouped by image, in batch order."""
    counts = dets.counts(len(image_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    probs = dets.class_probs.astype(np.float32)
    scores = strategies.detection_scores(strategy.name, dets.cls_conf, dets.loc_conf, probs,
                                         np.repeat(image_ids, counts), seed=strategy.seed)
    if keep_class_probs:
        prob_offsets = pa.array(np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1])
        class_probs = pa.ListArray.from_arrays(prob_offsets, pa.array(probs.reshape(-1), pa.float32()))
    else:
        class_probs = pa.nulls(len(probs), pa.list_(pa.float32()))
    boxes = dets.boxes.astype(np.float32).reshape(-1, 4)
    columns = {
        "class_id": pa.array(dets.class_id.astype(np.int16)),
        "cls_conf": pa.array(dets.cls_conf.astype(np.float32)), "loc_conf": pa.array(dets.loc_conf.astype(np.float32)),
        "score": pa.array(np.asarray(scores, dtype=np.float32)),
        **{name: pa.array(np.ascontiguousarray(boxes[:, j])) for j, name in enumerate(schemas.BOX)},
        "class_probs": class_probs,
    }
    struct = pa.StructArray.from_arrays([columns[f.name] for f in _DETECTION_FIELDS], fields=_DETECTION_FIELDS)
    return pa.ListArray.from_arrays(pa.array(offsets), struct, type=pa.list_(DETECTION_STRUCT))


@ray.remote(num_cpus=0.25)
def split_scored_file(scored_uri: str, detections_uri: str, status_uri: str,
                       embeddings_uri: str | None) -> tuple[int, int, int]:
    """One scored file -> its detections file (flattened), its image_status file and, with
    `embeddings_uri`, its embeddings file (the ok images')."""
    scored = storage.read_table(scored_uri)
    if embeddings_uri:
        embedded = scored.select(["image_id", "embedding"]).filter(pc.is_valid(scored.column("embedding")))
        storage.write_table(schemas.check(embedded, schemas.EMBEDDINGS, "embeddings"), embeddings_uri,
                            row_group_size=diversity.ROWS_PER_READ)
    status = schemas.check(scored.drop_columns(["detections", "embedding"]), schemas.IMAGE_STATUS, "image_status")
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
