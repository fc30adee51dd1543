"""A team's own data: unlabelled images under a folder or S3 prefix, a COCO test set, annotators from round 0.

The images are the synthetic generator's (so the test knows their ground truth), laid out as a team's
bucket is: nested by site and day, JPEGs and upper-case `.PNG`s, no labels beside them, and the test set's
folder inside the pool's root (it must be left out of the pool). Round 0's seed set goes to the
annotators; the test delivers exactly those images in COCO (made from its own ground truth, plus one
image nobody asked for); the next run trains, evaluates on the COCO test set, scores the rest of the pool,
selects, exports and waits for round 0's labels. `data=coco` runs the simulated loop on a COCO dataset.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from raylib import labels, paths, storage, synthetic
from raylib.formats import voc
from raylib.config import ConfigError, SyntheticConfig, to_config
from raylib.dataset import ensure_dataset
from raylib.loop import run_loop
from raylib.paths import COCO_FILE, SELECTED_URIS_FILE, RoundPaths

pytestmark = pytest.mark.slow

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
CLASSES = ["circle", "square", "triangle", "star"]
SEED_SIZE = 16


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """(VOC root of the generated images, their ground truth: image_id -> objects, pool ids, test ids)."""
    root = str(tmp_path_factory.mktemp("generated") / "voc")
    synthetic.generate(SyntheticConfig(num_pool=40, num_test=12, min_size=96, max_size=160, classes=CLASSES), root)
    ids = {name: storage.read_text(storage.join(root, "ImageSets", "Main", f"{name}.txt")).split()
           for name in ("trainval", "test")}
    table, errors = voc.read_voc_labels(root, ids["trainval"] + ids["test"], CLASSES)
    assert not errors
    truth = dict(zip(table.column("image_id").to_pylist(), table.column("objects").to_pylist()))
    return root, truth, ids["trainval"], ids["test"]


def _coco(entries: list[tuple[str, str, list[dict]]]) -> dict:
    """A COCO dataset of (file_name, jpeg path for the size, objects) entries: what CVAT exports."""
    images, annotations = [], []
    for n, (file_name, source, objects) in enumerate(entries, 1):
        height, width = cv2.imread(source).shape[:2]
        images.append({"id": n, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": n, "category_id": obj["class_id"] + 1,
                                "bbox": [obj["x1"], obj["y1"], obj["x2"] - obj["x1"], obj["y2"] - obj["y1"]],
                                "area": (obj["x2"] - obj["x1"]) * (obj["y2"] - obj["y1"]), "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}


def _team_layout(generated, out: str) -> dict[str, str]:
    """The pool as a team's bucket (nested, mixed extensions) with the test set inside it; returns
    pool image_id -> source image id."""
    voc_root, truth, pool_ids, test_ids = generated
    where = {}
    for n, image_id in enumerate(pool_ids):
        source = os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg")
        rel = f"site{n % 2}/day={n % 3:02d}/{image_id}" + (".PNG" if n % 4 == 0 else ".jpg")
        image = cv2.imread(source)
        storage.write_bytes(storage.join(out, rel), cv2.imencode(".png" if rel.endswith(".PNG") else ".jpg",
                                                                 image)[1].tobytes())
        where[rel] = image_id
    for image_id in test_ids:
        storage.write_bytes(storage.join(out, "test", f"{image_id}.jpg"),
                            open(os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg"), "rb").read())
    test_coco = _coco([(f"{i}.jpg", os.path.join(voc_root, "JPEGImages", f"{i}.jpg"), truth[i]) for i in test_ids])
    storage.write_text(storage.join(out, "test", "instances_test.json"), json.dumps(test_coco))
    storage.write_text(storage.join(out, "notes.txt"), "not an image")
    return where


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return to_config(compose("config", overrides=["debug=fast", "cluster.num_cpus=2", *overrides]))


def _deliver(generated, where: dict[str, str], selected_uris: list[str], root: str, labels_in: str, name: str,
             extra: list[str] = ()) -> None:
    """The annotators' COCO export for the images of `selected_uris` (and `extra` ids nobody asked for)."""
    voc_root, truth, _, _ = generated
    ids = [uri[len(root.rstrip("/")) + 1:] for uri in selected_uris] + list(extra)
    entries = [(rel, os.path.join(voc_root, "JPEGImages", f"{where[rel]}.jpg"), truth[where[rel]]) for rel in ids]
    storage.write_text(storage.join(labels_in, f"{name}.json"), json.dumps(_coco(entries)))


def _own_pool_rounds(generated, root: str, labels_in: str, run_root: str):
    where = _team_layout(generated, root)
    cfg = _config("data=images", f"data.root={root}", f"data.test={root}/test/instances_test.json",
                  "loop.oracle=external", f"loop.labels_in={labels_in}", "loop.labels_format=coco",
                  f"loop.seed_size={SEED_SIZE}", "loop.rounds=2", f"run_root={run_root}",
                  "strategy=cls_iou_diverse")  # the loop's diversity wiring, on S3: embeddings of pool and labelled set
    first = run_loop(cfg)
    assert first.rounds_done == 0 and first.stopped_because.startswith("seed: waiting for labels: 0 of 16")
    pool = storage.read_table(paths.pool_manifest(run_root))
    assert sorted(pool.column("image_id").to_pylist()) == sorted(where)  # no test image, no notes.txt
    seed = RoundPaths(run_root, paths.SEED_ROUND)
    selected = storage.read_text(storage.join(seed.preannotations, SELECTED_URIS_FILE)).split()
    assert len(selected) == SEED_SIZE and all(uri.startswith(root) for uri in selected)
    coco = json.loads(storage.read_text(storage.join(seed.preannotations, COCO_FILE)))
    assert len(coco["images"]) == SEED_SIZE and coco["annotations"] == []  # no model yet: nothing to correct
    not_asked = next(rel for rel in where if storage.join(root, rel) not in selected)
    _deliver(generated, where, selected, root, labels_in, "seed", extra=[not_asked])
    second = run_loop(cfg)
    return where, selected, not_asked, second


@pytest.mark.s3
def test_unlabelled_images_in_a_bucket_with_a_coco_test_set_and_annotators_from_round_0(generated, s3_bucket,
                                                                                         ray_session):
    """Pool, test set, deliveries and run all in a bucket (a local folder is indexed the same way:
    test_pool_listing)."""
    root, labels_in, run_root = f"{s3_bucket}/raw", f"{s3_bucket}/deliveries", f"{s3_bucket}/runs/own"
    where, selected, not_asked, second = _own_pool_rounds(generated, root, labels_in, run_root)
    seed_labels = storage.read_table(paths.seed_labels(run_root))
    assert sorted(seed_labels.column("image_id").to_pylist()) == sorted(uri[len(root) + 1:] for uri in selected)
    assert not_asked not in seed_labels.column("image_id").to_pylist()  # delivered, never asked for: ignored
    assert second.rounds_done == 1 and second.stopped_because.startswith("round 0: waiting for labels")
    rp = RoundPaths(run_root, 0)
    metrics = json.loads(storage.read_text(rp.metrics))
    assert metrics["n_images"] == 12 and metrics["n_failed"] == 0  # the COCO test set, every image read
    assert set(metrics["ap50_per_class"]) == set(CLASSES)  # classes from the test set's categories
    assert storage.read_table(rp.image_status).num_rows == len(where) - SEED_SIZE  # the rest of the pool
    chosen = set(storage.read_table(rp.selection).column("image_id").to_pylist())
    xml = [u for u in storage.list_files(rp.preannotations, ".xml") if not u.endswith("label_config.xml")]
    assert chosen and len(xml) == len(chosen)
    # cls_iou_diverse: one embedding per scored pool image, and the labelled set (the seed set) scored
    # by the round's model for its own, which k-center counted as covered.
    embedded = storage.read_table(rp.embeddings).column("image_id").to_pylist()
    assert sorted(embedded) == sorted(storage.read_table(rp.image_status).column("image_id").to_pylist())
    covered = storage.read_table(rp.labelled_scoring.embeddings).column("image_id").to_pylist()
    assert sorted(covered) == sorted(seed_labels.column("image_id").to_pylist())


def test_an_empty_pool_or_an_unreadable_test_set_is_one_line_naming_the_key(tmp_path):
    os.makedirs(tmp_path / "raw" / "empty_site")
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    overrides = ["data=images", f"data.root={tmp_path}/raw", "loop.oracle=external", f"loop.labels_in={tmp_path}/in"]
    with pytest.raises(ConfigError, match=r"^data.test: no usable labelled image in"):
        ensure_dataset(_config(*overrides, f"data.test={test}", f"run_root={tmp_path}/a"))
    test.write_text(json.dumps(_coco([("t.jpg", _image(tmp_path / "t.jpg"), [])])))
    with pytest.raises(ConfigError, match=rf"^data.root: no image \(jpg, jpeg, png, bmp, webp\) under '{tmp_path}/raw'"):
        ensure_dataset(_config(*overrides, f"data.test={test}", f"run_root={tmp_path}/b"))
    test.write_text('{"images": [')
    with pytest.raises(ConfigError, match=rf"^data.test: '{test}' could not be read as JSON"):
        ensure_dataset(_config(*overrides, f"data.test={test}", f"run_root={tmp_path}/c"))


def _image(path) -> str:
    cv2.imwrite(str(path), np.full((32, 48, 3), 120, np.uint8))
    return str(path)


def test_data_coco_runs_the_simulated_loop_on_a_coco_dataset_tracked_by_mlflow(generated, tmp_path, ray_session):
    """Also the loop's `logger=mlflow` (raylib/tracking.py), read back with MLflow's own client."""
    voc_root, truth, pool_ids, test_ids = generated
    images = os.path.join(voc_root, "JPEGImages")
    for name, ids in (("train", pool_ids), ("val", test_ids)):
        entries = [(f"{i}.jpg", os.path.join(images, f"{i}.jpg"), truth[i]) for i in ids]
        storage.write_text(str(tmp_path / f"instances_{name}.json"), json.dumps(_coco(entries)))
    run_root = str(tmp_path / "run")
    result = run_loop(_config("data=coco", f"data.root={images}", f"data.pool_labels={tmp_path}/instances_train.json",
                              f"data.test={tmp_path}/instances_val.json", f"data.test_images={images}",
                              "loop.rounds=1", f"run_root={run_root}", "logger=mlflow"))
    assert result.rounds_done == 1, result.stopped_because
    _check_mlflow_run(run_root)
    metrics = json.loads(storage.read_text(RoundPaths(run_root, 0).metrics))
    assert metrics["n_images"] == len(test_ids) and metrics["n_failed"] == 0  # evaluated on the COCO test set
    # The seed set, labelled from the COCO file (the oracle of later rounds reads it the same way:
    # dataset.ground_truth).
    labels = storage.read_table(paths.seed_labels(run_root))
    assert labels.num_rows == 16
    for row in labels.to_pylist():  # the COCO file's boxes (x, y, w, h) back in our convention
        expected = truth[row["image_id"][:-len(".jpg")]]
        assert [o["class_id"] for o in row["objects"]] == [o["class_id"] for o in expected]
        for got, want in zip(row["objects"], expected):
            assert [got[k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx([want[k] for k in ("x1", "y1", "x2", "y2")],
                                                                                abs=1e-3)


def test_labels_the_team_has_are_round_0s_labelled_set_and_a_voc_root_can_be_the_test_set(generated, tmp_path):
    voc_root, truth, pool_ids, test_ids = generated
    root = str(tmp_path / "raw")
    where = _team_layout(generated, root)
    have = sorted(where)[:10]  # the team labelled 10 of the pool's images already (a CVAT export)
    entries = [(rel, os.path.join(voc_root, "JPEGImages", f"{where[rel]}.jpg"), truth[where[rel]]) for rel in have]
    storage.write_text(str(tmp_path / "have.json"), json.dumps(_coco(entries)))
    cfg = _config("data=images", f"data.root={root}", f"data.test={voc_root}", "data.test_sets=[test]",
                  f"data.classes=[{','.join(CLASSES)}]", f"data.labelled={tmp_path}/have.json", "loop.oracle=external",
                  f"loop.labels_in={tmp_path}/in", f"run_root={tmp_path}/run")
    ds = ensure_dataset(cfg)
    assert not labels.seed_from_annotators(ds, cfg.loop)  # the annotators start at round 0's selection
    seed = storage.read_table(labels.seed_labels(cfg.run_root, ds, cfg.loop, cfg.seed))
    assert sorted(seed.column("image_id").to_pylist()) == have
    assert set(seed.column("split").to_pylist()) <= {"train", "val", "test"}
    test = storage.read_table(labels.perf_test_labels(cfg.run_root, ds))
    assert sorted(test.column("image_id").to_pylist()) == sorted(test_ids)  # the VOC root's test set
    assert dict(zip(test.column("image_id").to_pylist(), test.column("objects").to_pylist())) == \
        {i: truth[i] for i in test_ids}


def _check_mlflow_run(run_root: str) -> None:
    """One finished MLflow run: the config as params, the training loss of every epoch (from rank 0 of
    the training function), the round's mAP50, and the report's PNGs as artifacts."""
    import mlflow

    store = f"sqlite:///{os.path.dirname(run_root)}/mlflow.db"
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["data.kind"] == "coco" and run.data.params["loop.rounds"] == "1"
    assert run.data.tags["data"] == "coco" and run.data.tags["run_root"] == run_root
    client = mlflow.MlflowClient(store)
    epochs = int(run.data.params["train.epochs"])
    loss = client.get_metric_history(run.info.run_id, "train/loss_total")
    assert sorted(m.step for m in loss) == list(range(1, epochs + 1))
    assert all(np.isfinite(m.value) and m.value > 0 for m in loss)
    metrics = json.loads(storage.read_text(RoundPaths(run_root, 0).metrics))
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "round/map50")] == [
        (0, pytest.approx(metrics["map50"]))]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/map50.png"} <= artifacts, artifacts
