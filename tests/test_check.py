"""jobs/check.py: a dry run names what would stop a run, one line per problem naming the key, and
prints the plan; `data=voc` on a VOC-layout folder (written here by hand, as the devkit lays it out)
runs with the seed's values."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from raylib import check, dataset, storage
from raylib.config import to_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XML = """<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>
<size><width>64</width><height>48</height><depth>3</depth></size><segmented>0</segmented>
<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"""
SETS = {"trainval_2007": ["000005", "000007"], "trainval_2012": ["2008_000002"], "test_2007": ["000001", "000004"]}


def _voc_folder(root) -> str:
    """VOC2007 + VOC2012 merged into one VOCdevkit-style root, what data=voc reads."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    for set_name, ids in SETS.items():
        (root / "ImageSets" / "Main" / f"{set_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.full((48, 64, 3), 200, np.uint8))
            (root / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, name="dog"))
    return str(root)


def _make(*overrides: str):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return to_config(compose("config", overrides=list(overrides)))


def test_voc_layout_runs_with_the_seeds_values(tmp_path):
    cfg = _make("data=voc", f"data.root={_voc_folder(tmp_path / 'VOC0712')}", f"run_root={tmp_path}/run")
    assert (cfg.model.size, cfg.model.input_size, cfg.strategy.k, cfg.strategy.min_score) == ("s", 640, 100, 0.2)
    assert (cfg.train.epochs, cfg.loop.seed_size, cfg.loop.rounds) == (300, 2000, 10)
    assert check.problems(cfg) == ["loop.seed_size: 2000 >= the pool's 3 images (data.pool_sets); nothing would be "
                                   "left to select: lower loop.seed_size"]
    cfg = _make("data=voc", f"data.root={tmp_path / 'VOC0712'}", f"run_root={tmp_path}/run", "loop.seed_size=2")
    assert check.problems(cfg) == []
    ds = dataset.ensure_dataset(cfg)
    assert storage.read_table(ds.pool_manifest).column("image_id").to_pylist() == ["000005", "000007", "2008_000002"]
    assert storage.read_table(ds.test_manifest).num_rows == 2 and len(ds.class_names) == 20
    lines = check.plan(cfg).splitlines()
    assert "YOLOX-s at 640 px, from scratch" in lines[1] and "300 epochs, batch 32" in lines[2]
    assert "10 rounds from a seed set of 2 images" in lines[3] and "100 detections x 20 classes" in lines[3]
    assert lines[-1].startswith(f"outputs:  {tmp_path}/run ")


def test_problems_are_one_line_each_naming_the_key(tmp_path):
    root = _voc_folder(tmp_path / "VOC")
    os.remove(os.path.join(root, "ImageSets", "Main", "test_2007.txt"))
    with open(os.path.join(root, "Annotations", "000007.xml"), "w") as handle:
        handle.write(XML.format(id="000007", name="dragon"))
    (tmp_path / "a_file").write_text("")
    cfg = _make("data=voc", f"data.root={root}", f"run_root={tmp_path}/a_file/run", "train.use_gpu=true",
                "train.num_workers=64", "loop.seed_size=2")
    found = check.problems(cfg)
    assert all("\n" not in line for line in found) and len(found) == 4, found
    assert found[0].startswith("data.root: labels of '000007' (trainval_2007) do not parse") and "dragon" in found[0]
    assert found[1].startswith("data.test_sets: image set ") and "test_2007.txt" in found[1]
    assert found[2].startswith("train.num_workers: 64 GPU workers asked for")
    assert found[3].startswith(f"run_root: cannot write to '{tmp_path}/a_file/run'")


def _coco_test_set(folder, files: list[str], names: list[str]) -> str:
    os.makedirs(folder, exist_ok=True)
    for name in files[:1]:
        cv2.imwrite(os.path.join(folder, name), np.full((48, 64, 3), 200, np.uint8))
    uri = os.path.join(folder, "instances.json")
    with open(uri, "w") as handle:
        json.dump({"images": [{"id": n, "file_name": f, "width": 64, "height": 48} for n, f in enumerate(files, 1)],
                   "annotations": [], "categories": [{"id": n, "name": c} for n, c in enumerate(names, 1)]}, handle)
    return uri


def test_own_pool_problems_are_named_before_anything_runs(tmp_path):
    pool_root = tmp_path / "raw"
    os.makedirs(pool_root / "site1")
    test = _coco_test_set(str(tmp_path / "test"), ["a.jpg", "b.jpg"], ["cat", "dog"])
    base = ["data=images", f"data.root={pool_root}", f"data.test={test}", "loop.oracle=external",
            f"loop.labels_in={tmp_path}/deliveries", f"run_root={tmp_path}/run"]
    found = check.problems(_make(*base, "data.classes=[cat,cow]", f"model.weights={tmp_path}/nowhere.pt"))
    assert found == [
        f"data.root: no image (jpg, jpeg, png, bmp, webp) under '{pool_root}'; point data.root at the pool's images",
        "data.classes: ['cow'] not among data.test's categories ['cat', 'dog']: fix the names or leave "
        "data.classes empty to take the test set's",
        f"data.test_images: test image(s) ['b.jpg'] not found under '{tmp_path}/test'; set data.test_images to "
        "the folder the COCO file names are relative to",
        f"model.weights: no file at '{tmp_path}/nowhere.pt'; pass the path or s3:// URI of a state dict (or "
        "model.weights=null to train from scratch)"]
    for n in range(3):
        cv2.imwrite(str(pool_root / "site1" / f"{n}.PNG"), np.full((8, 8, 3), 9, np.uint8))
    assert check.problems(_make(*base, "loop.seed_size=3"))[0] == (
        "loop.seed_size: 3 >= the pool's 3 images; nothing would be left to select: lower loop.seed_size")
    (tmp_path / "test" / "instances.json").write_text("{not json")
    assert check.problems(_make(*base, "loop.seed_size=2", "data.classes=[cat,dog]"))[0].startswith(
        f"data.test: '{test}' could not be read as JSON")
    with pytest.raises(Exception, match="^loop.oracle=simulate needs the pool's ground truth"):
        _make(*base[:3], f"run_root={tmp_path}/run")


def test_check_job_prints_one_line_errors_without_a_traceback(tmp_path):
    def job(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "check.py"), *overrides,
                               f"hydra.run.dir={tmp_path}/hydra"], capture_output=True, text=True, timeout=120)

    bad = job("strategy.k=-1", "loop.rounds=0")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: strategy.k must be > 0, got -1"]
    typo = job("strategy.kk=5")  # Hydra alone: an error block advising `+strategy.kk=5`, which fails too
    assert typo.returncode != 0 and typo.stderr.strip().splitlines() == [
        "error: strategy.kk is not a config key; did you mean strategy.k?"]
    preset = job("model=yolox_ss")
    assert preset.stderr.strip().splitlines()[0].startswith("error: model=yolox_ss: no such preset; did you mean "
                                                             "model=yolox_s?")
    helped = job("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("A dry run: check a config")
    assert "  strategy=cls_iou | cls_iou_diverse | cls_only | entropy | kcenter | loc_only | margin | random" in helped.stdout
    good = job("experiment=demo", f"run_root={tmp_path}/run")
    assert good.returncode == 0, good.stderr
    assert "4 rounds from a seed set of 60 images" in good.stdout and good.stdout.rstrip().endswith("would stop this run")


@pytest.mark.parametrize("override", ["storage=s3"])
def test_missing_bucket_is_a_one_line_error(override):
    with pytest.raises(Exception, match=r"^storage\.bucket is required"):
        _make(override)


def _devkit_year(root, year: str, sets: dict[str, list[str]]) -> None:
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(base / sub, exist_ok=True)
    for set_name, ids in sets.items():
        (base / "ImageSets" / "Main" / f"{set_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            cv2.imwrite(str(base / "JPEGImages" / f"{image_id}.jpg"), np.full((48, 64, 3), 90, np.uint8))
            (base / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, name="cat"))


def test_make_voc_merges_a_vocdevkit_download_into_what_data_voc_reads(tmp_path):
    _devkit_year(tmp_path / "download", "2007", {"trainval": ["000005", "000007"], "test": ["000001"]})
    _devkit_year(tmp_path / "download", "2012", {"trainval": ["2008_000002", "2008_000003", "2008_000008"]})
    out = tmp_path / "VOC0712"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "make_voc.py"), str(tmp_path / "download"), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trainval_2007 2 images, test_2007 1 images, trainval_2012 3 images" in done.stdout
    assert (out / "ImageSets" / "Main" / "trainval_2012.txt").read_text().split() == ["2008_000002", "2008_000003", "2008_000008"]
    cfg = _make("data=voc", f"data.root={out}", f"run_root={tmp_path}/run", "loop.seed_size=2")
    assert check.problems(cfg) == []
    ds = dataset.ensure_dataset(cfg)
    assert storage.read_table(ds.pool_manifest).num_rows == 5 and storage.read_table(ds.test_manifest).num_rows == 1
    missing = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "make_voc.py"), str(tmp_path / "nothing"),
                              str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and missing.stderr.strip().startswith("error: no VOC2007/ or VOC2012/ folder")


def _job_alone(job: str, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    """`jobs/<job>` in a process of its own, with `env`'s S3 settings: its stderr, its exit."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "jobs", job), *overrides],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.s3
@pytest.mark.parametrize("job", ["check.py", "status.py"])
def test_s3_that_cannot_be_used_is_one_line_from_any_job(job, s3_server, s3_bucket, tmp_path):
    """Every job tries its config's S3 locations first (jobs/_job.py start): an endpoint where nothing
    listens, a bucket the real (moto) server does not have, no credentials, a denied prefix (a 403 from
    a proxy in front of that server) each end the job with one line naming the key and the fix."""
    from tests.s3_fault_proxy import FaultProxy

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    run_root = f"{s3_bucket}/runs/r1"
    common = [f"run_root={run_root}", f"hydra.run.dir={tmp_path}/hydra"]
    unreachable = _job_alone(job, {**os.environ, "AWS_ENDPOINT_URL": dead}, *common)
    missing = _job_alone(job, dict(os.environ), "run_root=s3://no-such-bucket/runs/r1", f"hydra.run.dir={tmp_path}/h2")
    no_keys = {name: value for name, value in os.environ.items() if name not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    no_keys.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    anonymous = _job_alone(job, no_keys, *common)
    proxy = FaultProxy(s3_server).start()
    proxy.permanent = "403"
    try:
        denied = _job_alone(job, {**os.environ, "AWS_ENDPOINT_URL": proxy.url}, *common)
    finally:
        proxy.stop()
    expected = [
        (unreachable, f"error: run_root: the S3 endpoint {dead} does not answer (Could not connect to the endpoint "
                      "URL): fix storage.endpoint_url (or AWS_ENDPOINT_URL), or check that the server runs and the "
                      "network reaches it"),
        (missing, f"error: run_root: bucket 'no-such-bucket' does not exist at {s3_server}: create it, or fix the "
                  "bucket in the URI (storage.bucket for the run root)"),
        (anonymous, f"error: run_root: no AWS credentials for {run_root}: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance profile or service account "
                    "provides them"),
        (denied, f"error: run_root: access denied to {run_root}: grant this identity s3:ListBucket and s3:GetObject "
                 "there (s3:PutObject for the run root), or point the key at a prefix it may use"),
    ]
    for done, line in expected:
        assert done.returncode != 0 and done.stderr.strip().splitlines() == [line], done.stderr
    assert proxy.faults_served >= 1


@pytest.mark.s3
def test_an_endpoint_that_never_answers_is_named_after_the_bounded_tries(s3_server, s3_bucket, tmp_path):
    """A server that takes the connection and says nothing (a black-holed endpoint) costs PROBE_ATTEMPTS
    reads of PROBE_TIMEOUT_S, not the stage clients' minutes; then the same one line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are queued, never answered
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        done = _job_alone("check.py", {**os.environ, "AWS_ENDPOINT_URL": endpoint}, f"run_root={s3_bucket}/r",
                          f"hydra.run.dir={tmp_path}/hydra")
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        f"error: run_root: the S3 endpoint {endpoint} does not answer (Read timeout on endpoint URL): fix "
        "storage.endpoint_url (or AWS_ENDPOINT_URL), or check that the server runs and the network reaches it"]
