"""Hydra configs: every group option composes and converts to the typed Config; typos and
out-of-range values are errors that name the key."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from raylib.config import Config, ConfigError, SyntheticConfig, override_problem, to_config
from raylib.run_config import flatten

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUP_OPTIONS = sorted(
    (group.name, option.stem) for group in CONF.iterdir() if group.is_dir() for option in group.glob("*.yaml")
)


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def make(*overrides: str) -> Config:
    return to_config(compose("config", overrides=list(overrides)))


def test_the_conf_tree_has_the_expected_groups():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"data", "model", "strategy", "score", "train", "loop", "storage", "cluster", "experiment", "debug"} <= groups


def test_defaults_are_the_seeds_values(hydra_conf):
    cfg = make()
    assert isinstance(cfg, Config)
    assert (cfg.data.kind, cfg.model.size, cfg.strategy.name, cfg.cluster.address) == ("synthetic", "s", "cls_iou", "local")
    # Seed 6.1-6.6: YOLOX-S at 640, 300 epochs at batch 32 (15 without mosaic/mixup, eval every 10),
    # the 100 lowest per class above 0.2, a 2,000-image seed set, 10 rounds.
    assert (cfg.model.input_size, cfg.strategy.k, cfg.strategy.min_score) == (640, 100, 0.2)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.no_aug_epochs, cfg.train.eval_interval) == (300, 32, 15, 10)
    assert (cfg.train.mosaic_prob, cfg.train.mixup_prob, cfg.train.basic_lr_per_img) == (1.0, 1.0, 0.01 / 64)
    assert (cfg.loop.seed_size, cfg.loop.rounds) == (2000, 10)
    # The run root names data, model, strategy and seed.
    assert cfg.run_root == os.path.join(os.getcwd(), "outputs/runs/synthetic_s/cls_iou_seed0")
    assert isinstance(cfg.data.synthetic, SyntheticConfig) and cfg.data.class_names == cfg.data.synthetic.classes


def test_schema_defaults_and_yaml_defaults_are_one_set(hydra_conf):
    # `Config()` in tests and `jobs/loop.py` with no overrides must be the same run; only the paths
    # that the YAML spells with interpolations (run_root, the synthetic data root) differ.
    composed, schema = flatten(make()), flatten(Config())
    drift = {key: (schema.get(key), composed.get(key)) for key in composed.keys() | schema.keys()
             if composed.get(key) != schema.get(key) and key not in ("run_root", "data.root")}
    assert drift == {}, f"schema (raylib/config.py) vs YAML (conf/) defaults: {drift}"


def test_experiment_demo_is_the_embedded_demo_of_before(hydra_conf):
    # tests/data/demo_config.json is what `jobs/loop.py` with no overrides resolved to before the
    # seed's values became the defaults (YOLOX-nano at 160, 60 epochs, k=10 above 0.05, 4 rounds):
    # `./run.sh` (experiment=demo) must compute the same numbers.
    with open(Path(__file__).parent / "data" / "demo_config.json") as handle:
        before = json.load(handle)
    before["data.root"] = os.path.join(os.getcwd(), before["data.root"])
    demo = flatten(make("experiment=demo"))
    assert {key: demo[key] for key in before} == before
    assert demo["run_root"] == os.path.join(os.getcwd(), "outputs/runs/synthetic_nano/cls_iou_seed0")


def test_run_sh_runs_the_demo():
    with open(CONF.parent / "run.sh") as handle:
        last = [line for line in handle if line.strip() and not line.startswith("#")][-1]
    assert "jobs/loop.py" in last and "experiment=demo" in last


def test_experiment_voc_1gpu(hydra_conf):
    cfg = make("experiment=voc_1gpu", "data.root=/data/VOC0712")
    assert (cfg.data.kind, cfg.model.size, cfg.model.input_size, cfg.strategy.k, cfg.loop.seed_size) == ("voc", "s", 640, 100, 2000)
    assert cfg.cluster.address == "local" and cfg.train.use_gpu and cfg.train.num_workers == 1
    assert cfg.score.num_actors * cfg.score.num_gpus_per_actor == 1
    assert cfg.run_root == os.path.join(os.getcwd(), "outputs/runs/voc_s/cls_iou_seed0")


def test_s3_storage_requires_a_bucket(hydra_conf):
    with pytest.raises(ConfigError, match=r"^storage\.bucket is required"):
        make("storage=s3")
    with pytest.raises(ConfigError, match=r"^storage\.bucket is required"):
        make("storage=s3", "run_root=s3://b/r")
    assert make("storage=s3", "storage.bucket=b").run_root == "s3://b/runs/synthetic_s/cls_iou_seed0"


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_converts(hydra_conf, group, option):
    # Your own data has no default location: data=images / coco need theirs (and images an oracle).
    needs = {"images": ["data.root=/r", "data.test=/t.json", "loop.oracle=external", "loop.labels_in=/in"],
             "coco": ["data.root=/r", "data.test=/t.json", "data.pool_labels=/p.json"]}.get(option, [])
    cfg = make(f"{group}={option}", "storage.bucket=b" if option in ("s3", "voc07_12") else "seed=0", *needs)
    assert isinstance(cfg, Config)
    if group == "model":
        assert cfg.model.size == option.removeprefix("yolox_")
    if group == "strategy":
        assert cfg.strategy.name == option and cfg.run_root.endswith(f"/outputs/runs/synthetic_s/{option}_seed0")
    if group == "data":
        assert cfg.data.kind == option


def test_local_paths_are_absolute_s3_uris_untouched(hydra_conf, tmp_path, monkeypatch):
    # Ray Train workers run in a directory of Ray's: a relative run_root or weights path from the
    # command line must name the same file there as on the driver.
    monkeypatch.chdir(tmp_path)
    cfg = make("run_root=runs/a", "data.root=data", "model.weights=w/model.pt", "loop.oracle=external",
               "loop.labels_in=file://corrected")
    assert cfg.run_root == str(tmp_path / "runs/a") and cfg.data.root == str(tmp_path / "data")
    assert cfg.model.weights == str(tmp_path / "w/model.pt") and cfg.loop.labels_in == str(tmp_path / "corrected")
    cfg = make("run_root=s3://bucket/runs/a", "model.weights=s3://bucket/w.pt")
    assert (cfg.run_root, cfg.model.weights) == ("s3://bucket/runs/a", "s3://bucket/w.pt")
    assert cfg.data.root == str(tmp_path / "outputs/data/synthetic_seed0") and cfg.loop.labels_in is None


def test_experiment_voc07_12(hydra_conf):
    cfg = make("experiment=voc07_12", "storage.bucket=my-runs")
    assert (cfg.data.kind, cfg.model.size, cfg.model.input_size) == ("voc", "s", 640)
    assert len(cfg.data.class_names) == 20 and cfg.data.pool_sets == ["trainval_2007", "trainval_2012"]
    assert (cfg.loop.rounds, cfg.loop.seed_size, cfg.strategy.k) == (10, 2000, 100)
    assert cfg.cluster.address == "auto" and cfg.train.use_gpu and cfg.train.num_workers == 4
    assert cfg.run_root == "s3://my-runs/runs/voc_s/cls_iou_seed0"


def test_debug_fast(hydra_conf):
    cfg = make("debug=fast")
    assert (cfg.data.synthetic.num_pool, cfg.model.input_size, cfg.train.epochs, cfg.loop.rounds) == (48, 128, 1, 2)
    assert cfg.model.size == "nano"  # seconds whatever the preset
    assert cfg.strategy.min_score == 0.0


def test_cluster_gpu4_with_s3_storage(hydra_conf):
    cfg = make("cluster=gpu4", "storage=s3", "storage.bucket=raylib-runs", "strategy=margin", "seed=2")
    assert cfg.cluster.address == "auto"
    assert cfg.score.num_gpus_per_actor == 1 and cfg.score.num_actors == 4 and cfg.train.use_gpu
    assert cfg.storage.endpoint_url == os.environ["AWS_ENDPOINT_URL"] and cfg.storage.region == "us-east-1"
    assert cfg.run_root == "s3://raylib-runs/runs/synthetic_s/margin_seed2"
    assert cfg.strategy.seed == 2


def test_experiment_with_debug_and_a_sweep_like_override(hydra_conf):
    cfg = make("experiment=voc07_12", "storage.bucket=b", "debug=fast", "strategy=random", "model=yolox_nano")
    assert (cfg.model.size, cfg.model.input_size, cfg.strategy.name, cfg.loop.rounds) == ("nano", 128, "random", 2)


@pytest.mark.parametrize(
    "override, key",
    [("model.sise=s", "sise"), ("strategy.kk=3", "kk"), ("+strategy.kk=3", "kk"), ("+typo=1", "typo"),
     ("train.epoch=3", "epoch"), ("+data.synthetic.num_pol=5", "num_pol")],
)
def test_a_typo_key_is_an_error_naming_it(hydra_conf, override, key):
    # Hydra refuses unknown keys while composing; keys forced in with `+` are refused by to_config.
    with pytest.raises((ConfigCompositionException, ConfigError), match=key):
        make(override)


def test_a_typo_key_in_a_plain_dict_is_one_line_naming_the_nearest_key():
    with pytest.raises(ConfigError, match=r"^modle is not a config key; did you mean model\?$"):
        to_config({"modle": {"size": "s"}})
    with pytest.raises(ConfigError, match=r"^strategy\.kk is not a config key; did you mean strategy\.k\?$"):
        to_config({"strategy": {"kk": 3}})


@pytest.mark.parametrize("override, message", [
    ("strategy.kk=5", "strategy.kk is not a config key; did you mean strategy.k?"),
    ("+strategy.kk=5", "strategy.kk is not a config key; did you mean strategy.k?"),
    ("lop.rounds=3", "lop.rounds is not a config key; did you mean loop.rounds?"),
    ("data.synthetic.num_pol=3", "data.synthetic.num_pol is not a config key; did you mean data.synthetic.num_pool?"),
    ("strategy.zzzz=1", "strategy.zzzz is not a config key; the keys of strategy are name, k, min_score, budget, "
                        "seed, pool_factor"),
    ("strategy=cls_io", "strategy=cls_io: no such preset; did you mean strategy=cls_iou? strategy is one of "
                        "cls_iou, random"),
    ("strategy=random,cls_io", "strategy=cls_io: no such preset; did you mean strategy=cls_iou? strategy is one "
                               "of cls_iou, random"),
])
def test_an_override_naming_no_key_or_preset_gets_one_line(override, message):
    assert override_problem(override, {"strategy": ["cls_iou", "random"]}) == message


@pytest.mark.parametrize("override", ["strategy.k=5", "strategy=random", "-m", "hydra.run.dir=x", "experiment=null",
                                      "data.synthetic.num_pool=3", "seed=0,1,2"])
def test_a_valid_override_passes(override):
    assert override_problem(override, {"strategy": ["cls_iou", "random"], "experiment": ["demo"]}) is None


def test_a_wrong_type_is_an_error(hydra_conf):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make("strategy.k=many")


@pytest.mark.parametrize(
    "override, key",
    [
        ("strategy.k=0", "strategy.k"),
        ("strategy.k=-5", "strategy.k"),
        ("strategy.min_score=-0.1", "strategy.min_score"),
        ("strategy.min_score=1.0", "strategy.min_score"),
        ("strategy.min_score=1.5", "strategy.min_score"),
        ("strategy.name=smart", "strategy.name"),
        ("strategy.budget=0", "strategy.budget"),
        ("model.size=huge", "model.size"),
        ("model.input_size=100", "model.input_size"),
        ("loop.rounds=0", "loop.rounds"),
        ("loop.rounds=-1", "loop.rounds"),
        ("loop.seed_size=0", "loop.seed_size"),
        ("loop.oracle=external", "loop.labels_in"),
        ("train.epochs=0", "train.epochs"),
        ("data.kind=coco", "data.kind"),
        ("data.synthetic.min_size=400", "min_size"),
        ("data.synthetic.imbalance_rho=0", "data.synthetic.imbalance_rho"),
        ("score.nms_threshold=0", "score.nms_threshold"),
    ],
)
def test_out_of_range_values_raise_config_error_naming_the_key(hydra_conf, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make(override)


def test_boundary_values_are_accepted(hydra_conf):
    cfg = make("strategy.k=1", "strategy.min_score=0.0", "loop.rounds=1", "strategy.budget=1")
    assert (cfg.strategy.k, cfg.strategy.min_score, cfg.loop.rounds) == (1, 0.0, 1)
    assert make("strategy.min_score=0.999").strategy.min_score == 0.999
