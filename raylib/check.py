"""A dry run: what a config would do, and what would stop it, before any Ray or GPU time is spent.

Checks (each problem one line naming the key and the fix): the data sets exist and a sample of their
labels parses; the run root is writable; the GPUs a local run asks for are there; a rerun into an
existing run root would resume (raylib/run_config.py). Then the plan: rounds, images per round,
model and recipe, where outputs go. Values themselves were checked when the config was built.
"""
from __future__ import annotations

import uuid

from omegaconf import OmegaConf

from raylib import paths, pool, run_config, storage
from raylib.formats import voc
from raylib.config import Config

SAMPLE_LABELS = 5  # annotations parsed per image set


def storage_uris(cfg: Config) -> dict[str, str]:
    """{config key: value} of every S3 location the config names (run_root, data.*, loop.labels_in, ...):
    what a job's preflight (`storage.access_problem`) tries before any work."""
    return {key: value for key, value in run_config.flatten(cfg).items()
            if isinstance(value, str) and storage.is_s3(value)}


def problems(cfg: Config) -> list[str]:
    """Everything found that would stop the run; empty when it can start."""
    found = []
    for check in (_data_problems, _weights_problems, _gpu_problems):
        try:
            found += check(cfg)
        except Exception as error:  # noqa: BLE001 - unreachable storage, denied access, ...: one line, not a traceback
            found.append(f"{check.__name__.strip('_').replace('_problems', '')}: could not be checked "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                         "is the storage reachable (storage.endpoint_url, credentials)?")
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


def _weights_problems(cfg: Config) -> list[str]:
    if cfg.model.weights and not storage.exists(cfg.model.weights):
        return [f"model.weights: no file at '{cfg.model.weights}'; pass the path or s3:// URI of a state dict "
                "(or model.weights=null to train from scratch)"]
    return []


def _data_problems(cfg: Config) -> list[str]:
    if cfg.data.kind == "synthetic":
        if cfg.loop.seed_size >= cfg.data.synthetic.num_pool:
            return [f"loop.seed_size: {cfg.loop.seed_size} >= the pool's {cfg.data.synthetic.num_pool} images; "
                    "nothing would be left to select: lower loop.seed_size"]
        return []  # generated on first use
    if cfg.data.kind in ("images", "coco"):
        return _file_data_problems(cfg)
    found, n_pool = [], 0
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
            if key == "data.pool_sets":
                n_pool += len(ids)
    if 0 < n_pool <= cfg.loop.seed_size:
        found.append(f"loop.seed_size: {cfg.loop.seed_size} >= the pool's {n_pool} images (data.pool_sets); "
                     "nothing would be left to select: lower loop.seed_size")
    return found


def _file_data_problems(cfg: Config) -> list[str]:
    """data=images / coco: the pool has images (more than the seed set), the test set reads as COCO or
    VOC, its first images exist, and data.classes are among its categories."""
    from raylib import dataset

    data, found = cfg.data, []
    if data.kind == "images":
        images = pool.first_images(data.root, cfg.loop.seed_size + 1)
        if not images:
            found.append(f"data.root: no image (jpg, jpeg, png, bmp, webp) under '{data.root}'; point data.root at "
                         "the pool's images")
        elif len(images) <= cfg.loop.seed_size and not data.labelled:
            found.append(f"loop.seed_size: {cfg.loop.seed_size} >= the pool's {len(images)} images; nothing would be "
                         "left to select: lower loop.seed_size")
    for key, source in (("data.test", data.test), ("data.pool_labels", data.pool_labels),
                        ("data.labelled", data.labelled)):
        if not source:
            continue
        if not source.lower().endswith(".json"):
            if not storage.exists(storage.join(source, "Annotations")):
                found.append(f"{key}: '{source}' is neither a COCO JSON file nor a VOC root (no Annotations/)")
            continue
        try:
            document = dataset.read_coco(source, key)
        except dataset.DatasetError as error:
            found.append(str(error))
            continue
        if key != "data.test":
            continue
        names = [c.get("name") for c in document["categories"] if isinstance(c, dict)]
        absent = [name for name in data.classes if name not in names]
        if absent:
            found.append(f"data.classes: {absent[:5]} not among data.test's categories {names[:20]}: fix the names "
                         "or leave data.classes empty to take the test set's")
        folder = dataset.test_images(source, data.test_images)
        files = [image.get("file_name") for image in document["images"][:SAMPLE_LABELS] if isinstance(image, dict)]
        missing = [f for f in files if not isinstance(f, str) or not storage.exists(storage.join(folder, f))]
        if missing:
            found.append(f"data.test_images: test image(s) {missing[:3]} not found under '{folder}'; set "
                         "data.test_images to the folder the COCO file names are relative to")
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
    n_classes = len(cfg.data.class_names)
    classes = f"{n_classes} class{'' if n_classes == 1 else 'es'}" if n_classes else "classes: the test set's categories"
    per_round = (f"up to {cfg.strategy.k} detections x {classes} of images" if n_classes else
                 f"up to {cfg.strategy.k} detections per class of images")
    if cfg.strategy.budget:
        per_round += f", exactly {cfg.strategy.budget} images (strategy.budget: trimmed or filled)"
    last = "; the last selection takes every image left" if cfg.loop.last_round_takes_all else ""
    data = (f"synthetic pool of {cfg.data.synthetic.num_pool} images (+{cfg.data.synthetic.num_test} test), generated"
            if cfg.data.kind == "synthetic" else
            f"VOC layout at {cfg.data.root}: pool {list(cfg.data.pool_sets)}, test {list(cfg.data.test_sets)}"
            if cfg.data.kind == "voc" else
            f"pool: the images {'under' if cfg.data.kind == 'images' else 'of ' + str(cfg.data.pool_labels) + ' in'} "
            f"{cfg.data.root}; test set: {cfg.data.test}")
    where = "a local Ray" if cfg.cluster.address == "local" else f"the Ray cluster at '{cfg.cluster.address}'"
    return "\n".join([
        f"data:     {data}; {classes}",
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
