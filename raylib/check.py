"""A dry run: what a config would do, and what would stop it, before any Ray or GPU time is spent.

Checks (each problem one line naming the key and the fix): the data sets exist and a sample of their
labels parses; the run root is writable; the GPUs a local run asks for are there; a rerun into an
existing run root would resume (raylib/run_config.py). Then the plan: rounds, images per round,
model and recipe, where outputs go. Values themselves were checked when the config was built.
"""
from __future__ import annotations

import uuid

from omegaconf import OmegaConf

from raylib import paths, pool, run_config, storage, voc
from raylib.config import Config

SAMPLE_LABELS = 5  # annotations parsed per image set


def problems(cfg: Config) -> list[str]:
    """Everything found that would stop the run; empty when it can start."""
    found = _data_problems(cfg) + _gpu_problems(cfg)
    probe = storage.join(cfg.run_root, f"_check_{uuid.uuid4().hex}")
    try:
        storage.write_text(probe, "raylib check")
        storage.delete(probe)
    except Exception as error:  # noqa: BLE001 - permissions, missing bucket, read-only disk, ...
        found.append(f"run_root: cannot write to '{cfg.run_root}' ({type(error).__name__}: {str(error)[:160]}); "
                     "pick a writable run_root= (or grant write access)")
    stored_uri = paths.run_config(cfg.run_root)
    if storage.exists(stored_uri):
        stored = run_config.flatten(OmegaConf.to_container(OmegaConf.create(storage.read_text(stored_uri))))
        changed = run_config.diff(stored, run_config.flatten(cfg))
        keys = [key for key in changed if run_config.key_kind(key) != "execution"]
        if keys:
            found.append(f"run_root: '{cfg.run_root}' holds a run with other values of {', '.join(sorted(keys))}: "
                         "jobs/loop.py would refuse; pick another run_root= (or accept_new_values=true for "
                         "keys that may change between rounds)")
    return found


def _data_problems(cfg: Config) -> list[str]:
    if cfg.data.kind == "synthetic":
        return []  # generated on first use
    found = []
    class_ids = {name: i for i, name in enumerate(cfg.data.class_names)}
    if not class_ids:
        found.append("data.classes: empty; list the class names of the annotations (data=voc has VOC's 20)")
    for key, sets in (("data.pool_sets", cfg.data.pool_sets), ("data.test_sets", cfg.data.test_sets)):
        for set_name in sets:
            try:
                ids = list(pool._set_ids(cfg.data.root, set_name))
            except pool.PoolError as error:
                found.append(f"{key}: {error}")
                continue
            if not ids:
                found.append(f"{key}: image set '{set_name}' of '{cfg.data.root}' lists no image")
            for image_id in ids[:SAMPLE_LABELS]:
                try:
                    voc.label_objects(storage.join(cfg.data.root, "Annotations", f"{image_id}.xml"), class_ids)
                except (voc.VocError, OSError) as error:
                    found.append(f"data.root: labels of '{image_id}' ({set_name}) do not parse: {str(error)[:200]}")
                    break
    return found


def _gpu_problems(cfg: Config) -> list[str]:
    if cfg.cluster.address != "local":
        return []  # a cluster's GPUs are Ray's to place; the job waits for them
    wanted_train = cfg.train.num_workers if cfg.train.use_gpu else 0
    wanted_score = cfg.score.num_actors * cfg.score.num_gpus_per_actor
    if not (wanted_train or wanted_score):
        return []
    import torch

    have = torch.cuda.device_count()
    found = []
    if wanted_train > have:
        found.append(f"train.num_workers: {wanted_train} GPU workers asked for, this machine has {have} GPU(s); "
                     f"set train.num_workers={max(have, 1)}" + ("" if have else " train.use_gpu=false"))
    if wanted_score > have:
        found.append(f"score.num_actors: {wanted_score:g} GPUs of scoring actors asked for, this machine has {have}; "
                     f"set score.num_actors={max(have, 1)}" + ("" if have else " score.num_gpus_per_actor=0"))
    return found


def plan(cfg: Config) -> str:
    """What the run will do, in a few lines."""
    classes = cfg.data.class_names
    per_round = f"up to {cfg.strategy.k} detections x {len(classes)} classes of images"
    if cfg.strategy.budget:
        per_round += f", at most {cfg.strategy.budget} images"
    last = "; the last selection takes every image left" if cfg.loop.last_round_takes_all else ""
    data = (f"synthetic pool of {cfg.data.synthetic.num_pool} images (+{cfg.data.synthetic.num_test} test), generated"
            if cfg.data.kind == "synthetic" else
            f"VOC layout at {cfg.data.root}: pool {list(cfg.data.pool_sets)}, test {list(cfg.data.test_sets)}")
    where = "a local Ray" if cfg.cluster.address == "local" else f"the Ray cluster at '{cfg.cluster.address}'"
    return "\n".join([
        f"data:     {data}; {len(classes)} classes",
        f"model:    YOLOX-{cfg.model.size} at {cfg.model.input_size} px, "
        f"{'from ' + cfg.model.weights if cfg.model.weights else 'from scratch'}",
        f"train:    {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, {cfg.train.num_workers} worker(s) "
        f"{'on GPU' if cfg.train.use_gpu else 'on CPU'}",
        f"loop:     {cfg.loop.rounds} rounds from a seed set of {cfg.loop.seed_size} images; each round selects "
        f"{per_round} (strategy {cfg.strategy.name}, score > {cfg.strategy.min_score}){last}; "
        f"oracle: {cfg.loop.oracle}",
        f"score:    {cfg.score.num_actors} actor(s) x {cfg.score.num_gpus_per_actor:g} GPU, batch {cfg.score.batch_size}",
        f"runs on:  {where}",
        f"outputs:  {cfg.run_root} (config.yaml, round=NN/, report/report.md)",
    ])
