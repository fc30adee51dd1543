"""Typed Hydra configs. Registered in Hydra's ConfigStore so that a typo in an override is an error.

`conf/config.yaml` puts `config_schema` first in its defaults list, so every group file is merged
into these dataclasses and checked against them. Value checks (k > 0, min_score in [0, 1], ...) run
in `__post_init__`, i.e. when `to_config` turns the Hydra node into objects.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationToMissingValueError, MissingMandatoryValue


MODEL_SIZES = ("nano", "tiny", "s", "m", "l", "x")
STRATEGIES = ("cls_iou", "cls_only", "loc_only", "margin", "entropy", "random", "cls_iou_diverse", "kcenter")
ORACLES = ("simulate", "external", "labelstudio")
LABEL_FORMATS = ("voc", "coco", "labelstudio")  # what annotators deliver (raylib/formats/deliveries.py)
FREEZE_CHOICES = ("none", "backbone", "backbone_neck")  # train.freeze (raylib/training/freeze.py)
SEED_STRATEGIES = ("random", "kcenter", "typical")  # loop.seed_strategy (raylib/stages.py seed_ids)
LOGGERS = ("none", "tensorboard", "mlflow")  # experiment tracking (raylib/tracking.py)


class ConfigError(ValueError):
    """A config value is out of range; the message names the key and the allowed values."""


def absolute(uri: str | None) -> str | None:
    """A local path made absolute against the current directory; s3:// URIs and None unchanged.

    Ray Train workers and Ray Data tasks run in directories of Ray's own, so a relative path that is
    right for the driver names a missing file there: configs absolutise theirs when they are built."""
    if uri is None or "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class SyntheticConfig:
    """The bundled generated pool (raylib/synthetic.py): VOC layout, no downloads."""

    num_pool: int = 240
    num_test: int = 60
    classes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle", "star"])
    imbalance_rho: float = 0.5  # class c appears with weight rho**c (geometric imbalance)
    empty_fraction: float = 0.1
    duplicate_fraction: float = 0.05
    min_size: int = 160
    max_size: int = 320
    max_objects: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.num_pool > 0 and self.num_test > 0, "data.synthetic.num_pool/num_test must be > 0")
        _require(0 < self.imbalance_rho <= 1, "data.synthetic.imbalance_rho must be in (0, 1]")
        _require(0 <= self.empty_fraction < 1, "data.synthetic.empty_fraction must be in [0, 1)")
        _require(0 <= self.duplicate_fraction < 1, "data.synthetic.duplicate_fraction must be in [0, 1)")
        _require(16 <= self.min_size <= self.max_size, "data.synthetic: need 16 <= min_size <= max_size")
        _require(len(self.classes) > 0, "data.synthetic.classes must not be empty")


DATA_KINDS = ("synthetic", "voc", "images", "coco")


@dataclass
class DataConfig:
    """Where the pool and the fixed performance test set come from.

    kind=synthetic generates a VOC-layout dataset under `root` (default: `<run_root>/../data`).
    kind=voc reads a VOCdevkit-style root: JPEGImages/, Annotations/, ImageSets/Main/<set>.txt.
    kind=images: the pool is every image under `root` (a folder or s3:// prefix, walked recursively),
    without labels; the test set is `test` (a COCO JSON file or a VOC root) with its images under
    `test_images`. kind=coco: the pool is the images of the COCO file `pool_labels` under `root`, and
    its annotations are the simulated oracle's ground truth.
    """

    kind: str = "synthetic"
    root: Optional[str] = None
    pool_sets: list[str] = field(default_factory=lambda: ["trainval"])
    test_sets: list[str] = field(default_factory=lambda: ["test"])
    classes: list[str] = field(default_factory=list)  # empty: data.synthetic.classes, or the test set's categories
    # Larger images (width x height from the header) are never decoded: in scoring they become error
    # rows, in training and evaluation they are left out (decompression bombs).
    max_pixels: int = 40_000_000
    # kind=images / coco: labelled sets from files (COCO JSON, or a VOC root with ImageSets/Main/<test_sets>).
    test: Optional[str] = None  # the fixed performance test set (required)
    test_images: Optional[str] = None  # its images' folder/prefix; default: the JSON's folder, a VOC root's JPEGImages/
    labelled: Optional[str] = None  # labels the team already has: round 0's labelled set instead of a seed sample
    labelled_images: Optional[str] = None  # default: data.root (the pool's ids then match)
    pool_labels: Optional[str] = None  # ground truth covering the pool, for loop.oracle=simulate (kind=coco: the pool)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _require(self.kind in DATA_KINDS, f"data.kind must be one of {DATA_KINDS}, got '{self.kind}'")
        _require(self.kind == "synthetic" or bool(self.root),
                 f"data.root is required when data.kind={self.kind}: the pool's folder or s3:// prefix")
        _require(self.max_pixels > 0, f"data.max_pixels must be > 0, got {self.max_pixels}")
        if self.kind in ("images", "coco"):
            _require(bool(self.test), f"data.test is required when data.kind={self.kind}: pass data.test=<COCO JSON "
                                      "file or VOC root of the labelled test set>")
        if self.kind == "coco":
            _require(bool(self.pool_labels), "data.pool_labels is required when data.kind=coco: the pool's COCO "
                                             "instances JSON (e.g. instances_train2017.json)")
        self.root, self.test, self.test_images = absolute(self.root), absolute(self.test), absolute(self.test_images)
        self.labelled, self.labelled_images = absolute(self.labelled), absolute(self.labelled_images)
        self.pool_labels = absolute(self.pool_labels)

    @property
    def class_names(self) -> list[str]:
        """The configured class names; empty for a test set whose categories name them (dataset.py)."""
        if self.classes:
            return list(self.classes)
        return list(self.synthetic.classes) if self.kind == "synthetic" else []


@dataclass
class ModelConfig:
    size: str = "s"  # the seed's YOLOX-S
    input_size: int = 640  # square letterbox side, a multiple of 32
    weights: Optional[str] = None  # path or s3:// URI of a state dict; never downloaded
    iou_aware_obj: bool = False  # objectness trained towards the IoU of the assigned prediction (raylib.training.iou_aware)

    def __post_init__(self) -> None:
        _require(self.size in MODEL_SIZES, f"model.size must be one of {MODEL_SIZES}, got '{self.size}'")
        _require(self.input_size >= 64 and self.input_size % 32 == 0, "model.input_size must be a multiple of 32, >= 64")
        self.weights = absolute(self.weights)


@dataclass
class StrategyConfig:
    name: str = "cls_iou"
    k: int = 100  # lowest-score detections kept per class
    min_score: float = 0.2  # detections at or below are not saved (pseudo-code 1)
    # Images per round, exactly (or every image scored, when fewer): a larger union of class quotas is cut
    # to its lowest scores, a smaller one filled by turns over the classes (raylib/select.py). None: the
    # seed's rule, the union as it falls.
    budget: Optional[int] = None
    seed: int = 0  # for `random` and tie-breaking
    pool_factor: int = 4  # diversity strategies: k-center picks k of pool_factor x k candidates per class

    def __post_init__(self) -> None:
        _require(self.name in STRATEGIES, f"strategy.name must be one of {STRATEGIES}, got '{self.name}'")
        _require(self.k > 0, f"strategy.k must be > 0, got {self.k}")
        _require(0.0 <= self.min_score < 1.0, f"strategy.min_score must be in [0, 1), got {self.min_score}")
        _require(self.budget is None or self.budget > 0, f"strategy.budget must be > 0 or null, got {self.budget}")
        _require(self.pool_factor >= 1, f"strategy.pool_factor must be >= 1, got {self.pool_factor}")


@dataclass
class ScoreConfig:
    batch_size: int = 16
    num_actors: int = 2
    num_cpus_per_actor: float = 0.5  # fractional on small machines, else the pipeline can starve
    num_gpus_per_actor: float = 0.0
    decode_num_cpus: float = 0.5
    fp16: bool = True  # only on GPU
    channels_last: bool = True  # only on GPU
    nms_threshold: float = 0.45
    candidate_conf: float = 0.01  # YOLOX's own pre-NMS filter on obj x cls
    max_detections: int = 100  # per image, after NMS
    keep_class_probs: bool = True  # needed by margin/entropy
    torch_threads: Optional[int] = None  # intra-op threads per actor; None: the actor's CPUs (at least 1)
    rows_per_file: int = 20_000  # images per scored Parquet file
    # JPEGs travel to the actor as bytes and are decoded there in batches on its device (nvJPEG on a
    # GPU) and letterboxed there; other images are decoded by CPU tasks. Off: CPU tasks decode and
    # letterbox every image and canvases travel (on a CPU-only machine that is fused into the actor).
    device_decode: bool = False
    concurrent_batches: int = 1  # batches each actor works on at once (threads; a CUDA stream each)
    # torch.compile the model in each actor (for long pools on GPUs): compiled once at start-up, for
    # batches of batch_size (shorter ones are padded), its time printed; 1.34x the model alone on an H100.
    compile: bool = False

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, "score.batch_size must be > 0")
        _require(self.num_actors > 0, "score.num_actors must be > 0")
        _require(0 < self.nms_threshold <= 1, "score.nms_threshold must be in (0, 1]")
        _require(self.concurrent_batches > 0, "score.concurrent_batches must be > 0")


@dataclass
class TrainConfig:
    """The seed's recipe (6.3): YOLOX-S's, 300 epochs, batch 32, no mosaic/mixup in the last 15."""

    epochs: int = 300
    batch_size: int = 32  # global; split over workers
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    basic_lr_per_img: float = 0.01 / 64  # YOLOX: lr = basic_lr_per_img * batch_size
    warmup_epochs: int = 5
    warmup_lr: float = 0.0
    min_lr_ratio: float = 0.05
    no_aug_epochs: int = 15  # strong augmentation (mosaic, mixup) off for the last epochs
    weight_decay: float = 5e-4
    momentum: float = 0.9
    ema: bool = True
    amp: bool = True  # only on GPU
    mosaic_prob: float = 1.0
    mixup_prob: float = 1.0
    hsv_prob: float = 1.0
    flip_prob: float = 0.5
    degrees: float = 10.0
    translate: float = 0.1
    mosaic_scale: tuple[float, float] = (0.5, 1.5)
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    shear: float = 2.0
    eval_interval: int = 10
    val_batch_size: int = 16  # images per forward pass when validating
    max_failures: int = 2
    num_loader_workers: int = 0
    torch_threads: Optional[int] = None  # intra-op threads per CPU worker; None: its CPUs (at least 1)
    # Round r > 0 starts from: transfer = model.weights (as the seed does); previous = round r-1's model.
    init: str = "transfer"
    # Fine-tuning from model.weights: backbone = CSPDarknet frozen, backbone_neck = the whole YOLOPAFPN
    # frozen (weights and BatchNorm statistics); the head always trains (raylib/training/freeze.py).
    freeze: str = "none"

    def __post_init__(self) -> None:
        _require(self.init in ("transfer", "previous"), f"train.init must be transfer or previous, got '{self.init}'")
        _require(self.freeze in FREEZE_CHOICES, f"train.freeze must be one of {FREEZE_CHOICES}, got '{self.freeze}'")
        _require(self.torch_threads is None or self.torch_threads >= 1,
                 f"train.torch_threads must be >= 1 or null, got {self.torch_threads}")
        _require(self.epochs > 0, f"train.epochs must be > 0, got {self.epochs}")
        _require(self.batch_size > 0, "train.batch_size must be > 0")
        _require(self.num_workers > 0, "train.num_workers must be > 0")
        _require(0 <= self.no_aug_epochs <= self.epochs, "train.no_aug_epochs must be in [0, epochs]")
        _require(self.eval_interval > 0, "train.eval_interval must be > 0")


@dataclass
class EvalConfig:
    """The evaluate stage (AP50 on the performance test set and the labelled `test` split)."""

    batch_size: int = 16
    # Each split is evaluated in a Ray task holding these CPUs (its torch threads) and, with use_gpu
    # (None: when the cluster has a GPU), one GPU.
    num_cpus: float = 1
    use_gpu: Optional[bool] = None

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, "eval.batch_size must be > 0")
        _require(self.num_cpus > 0, "eval.num_cpus must be > 0 (the CPUs of each evaluation task)")


@dataclass
class LabelStudioConfig:
    """loop.oracle=labelstudio: the live project the loop fills and reads (raylib/labelstudio_project.py).
    The token is LABEL_STUDIO_API_KEY in the environment, never a config value."""

    url: Optional[str] = None  # the server, e.g. http://127.0.0.1:8080
    project_id: Optional[int] = None  # None: the run's project (recorded in the run root, else found by title)
    title: Optional[str] = None  # None: a title naming the run root; the project is created if missing
    wait: bool = False  # poll until the round is complete, instead of stopping to be run again
    poll_s: float = 60.0  # between polls with wait=true


@dataclass
class LoopConfig:
    rounds: int = 10  # the seed's (6.5): 10 rounds, a seed set of 2,000 images
    seed_size: int = 2000
    # Round 0's seed set: random (uniform), or strategy.pool_factor x seed_size random candidates embedded
    # by model.weights (a start model), of which seed_size are kept: kcenter: spread out (k-center greedy);
    # typical: the most typical image of each of seed_size k-means clusters (TypiClust).
    seed_strategy: str = "random"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train / val / test of the labelled set
    oracle: str = "simulate"
    labels_in: Optional[str] = None  # external oracle: folder/prefix of the annotators' deliveries
    labels_format: str = "voc"  # voc: Annotations/*.xml; coco: *.json; labelstudio: its JSON export
    # A round's delivery is complete when every selected image is labelled or when the annotators
    # create <labels_in>/_complete/round=NN; true takes whatever is there (the rest stays in the pool).
    accept_partial_delivery: bool = False
    labelstudio_document_root: Optional[str] = None  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    labelstudio: LabelStudioConfig = field(default_factory=LabelStudioConfig)
    last_round_takes_all: bool = True  # seed 6.6
    stop_min_gain: Optional[float] = None  # stop when mAP50 gains less than this ...
    stop_patience: int = 2  # ... over this many rounds

    def __post_init__(self) -> None:
        _require(self.rounds > 0, f"loop.rounds must be > 0, got {self.rounds}")
        _require(self.seed_size > 0, f"loop.seed_size must be > 0, got {self.seed_size}")
        _require(self.seed_strategy in SEED_STRATEGIES,
                 f"loop.seed_strategy must be one of {SEED_STRATEGIES}, got '{self.seed_strategy}'")
        _require(abs(sum(self.split) - 1.0) < 1e-6 and min(self.split) >= 0, "loop.split must be 3 fractions summing to 1")
        _require(self.oracle in ORACLES, f"loop.oracle must be one of {ORACLES}, got '{self.oracle}'")
        _require(self.oracle != "external" or bool(self.labels_in), "loop.labels_in is required for the external oracle")
        _require(self.oracle != "labelstudio" or bool(self.labelstudio.url),
                 "loop.labelstudio.url is required with loop.oracle=labelstudio: the server, e.g. http://127.0.0.1:8080")
        _require(self.labels_format in LABEL_FORMATS,
                 f"loop.labels_format must be one of {LABEL_FORMATS}, got '{self.labels_format}'")
        self.labels_in = absolute(self.labels_in)


@dataclass
class StorageConfig:
    endpoint_url: Optional[str] = None  # S3-compatible endpoint; default: AWS_ENDPOINT_URL or AWS
    region: Optional[str] = None
    kind: str = "local"  # s3: the run root is on S3 (storage=s3)
    bucket: Optional[str] = None  # storage=s3: the run bucket (required there; names the default run_root)

    def __post_init__(self) -> None:
        _require(self.kind in ("local", "s3"), f"storage.kind must be local or s3, got '{self.kind}'")
        _require(self.kind != "s3" or bool(self.bucket),
                 "storage.bucket is required with storage=s3: pass storage.bucket=<your bucket> (or set RAYLIB_BUCKET)")


@dataclass
class ClusterConfig:
    address: str = "local"  # "local" starts a private Ray; "auto" joins a running cluster
    num_cpus: Optional[int] = None  # local only
    # Set in the driver before Ray starts and in every Ray worker's runtime env (settings, never secrets:
    # Ray logs runtime envs). experiment=demo pins the CPU kernels with it (raylib/runtime.py).
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    """Experiment tracking (raylib/tracking.py): per-epoch training scalars and per-round metrics."""

    kind: str = "none"  # none | tensorboard | mlflow
    log_dir: Optional[str] = None  # tensorboard: event files; None: <run_root>/tensorboard
    tracking_uri: Optional[str] = None  # mlflow: a tracking server; None: SQLite beside the runs, <run_root>/../mlflow.db

    def __post_init__(self) -> None:
        _require(self.kind in LOGGERS, f"logger.kind must be one of {LOGGERS}, got '{self.kind}'")
        self.log_dir = absolute(self.log_dir)


@dataclass
class Config:
    run_root: str = "outputs/run"
    seed: int = 0
    # A rerun whose config differs from the one stored in run_root (paths.run_config) is refused;
    # true continues with the new values of the keys that may change between rounds (run_config.py).
    accept_new_values: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    round_idx: int = 0  # for single-stage jobs (score/select/export/train/evaluate)

    def __post_init__(self) -> None:
        _require(bool(self.run_root), "run_root must not be empty")
        # Relative local paths are the launch directory's (Hydra's job.chdir is off), not the
        # working directory a Ray worker happens to run in.
        self.run_root = absolute(self.run_root)
        _require(self.round_idx >= 0, "round_idx must be >= 0")
        _require(self.loop.oracle != "simulate" or self.data.kind != "images" or bool(self.data.pool_labels),
                 "loop.oracle=simulate needs the pool's ground truth: with data.kind=images set data.pool_labels="
                 "<COCO JSON or VOC root covering the pool>, or let annotators label (loop.oracle=external)")


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def to_config(cfg: Any) -> Config:
    """Turn a Hydra/OmegaConf node into a validated `Config` (raises ConfigError on bad values)."""
    if isinstance(cfg, Config):
        return cfg
    if isinstance(cfg, (DictConfig, dict)):
        try:
            if isinstance(cfg, DictConfig):
                # As a plain dict, keys added with Hydra's `+key=...` are checked against the schema
                # too; merged as a DictConfig they would be dropped silently.
                cfg = OmegaConf.to_container(cfg, resolve=True)
            node = OmegaConf.merge(OmegaConf.structured(Config), cfg)
            return OmegaConf.to_object(node)  # type: ignore[return-value]
        except (MissingMandatoryValue, InterpolationToMissingValueError) as missing:
            key = str(missing).split("Missing mandatory value: ", 1)[-1].split("\n")[0].strip()
            raise ConfigError(f"{key} is required and has no value: pass {key}=<value>") from None
        except ConfigKeyError as unknown:  # a key no dataclass has, from a group file or a `+key=`
            raise ConfigError(unknown_key_message(unknown.full_key or str(unknown))) from None
    raise TypeError(f"expected a Hydra config, got {type(cfg).__name__}")


def schema_keys(node: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included: `strategy`, `strategy.k`, ..."""
    keys = []
    for item in dataclasses.fields(node):
        key = prefix + item.name
        keys.append(key)
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        if dataclasses.is_dataclass(default):
            keys += schema_keys(type(default), key + ".")
    return keys


def unknown_key_message(key: str) -> str:
    """`strategy.kk is not a config key; did you mean strategy.k?`; the section's keys when none is close."""
    keys = schema_keys()
    section, _, name = key.rpartition(".")
    if section and section not in keys:  # the section itself is misspelt: `lop.rounds`
        close = difflib.get_close_matches(key, keys, n=1)
        return f"{key} is not a config key" + (f"; did you mean {close[0]}?" if close else "")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(name, siblings, n=1)
    where = f"{section}." if section else ""
    if close:
        return f"{key} is not a config key; did you mean {where}{close[0]}?"
    return f"{key} is not a config key; the keys{f' of {section}' if section else ''} are {', '.join(siblings)}"


def override_problem(override: str, groups: dict[str, list[str]]) -> str | None:
    """One line when a command-line override (`strategy.k=5`, `+x=1`, `model=yolox_s`) names no schema
    key or no preset of a config group; None when it does (values are checked later, by the schema).
    Hydra's own answer to a typo is a traceback-shaped error advising `+key`, which the schema refuses
    anyway. `groups`: each config group's presets (the files of conf/<group>/)."""
    if "=" not in override or override.startswith("-"):
        return None
    key, value = override.split("=", 1)
    key = key.lstrip("+~")
    if key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/"):
        return None
    if key in groups:
        for choice in value.split(","):  # a sweep lists several
            if choice not in groups[key] and choice != "null":
                close = difflib.get_close_matches(choice, groups[key], n=1)
                hint = f"did you mean {key}={close[0]}? " if close else ""
                return f"{key}={choice}: no such preset; {hint}{key} is one of {', '.join(groups[key])}"
        return None
    if key not in schema_keys():
        return unknown_key_message(key)
    return None


register()
