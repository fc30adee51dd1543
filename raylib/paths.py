"""Every file of a run, in one place: no other module spells a run file's name.

    <run_root>/config.yaml                                       the resolved config it was started with
    <run_root>/run.json, pool.parquet, test_pool.parquet         what the run is; the manifests
    <run_root>/labels_perf_test.parquet                         the test set's labels, made once
    <run_root>/truth_{test,pool,labelled}.parquet, images_*.parquet
                                                                labelled sets imported from files (data.test, ...)
    <run_root>/seed/...                                         the seed set: labels.parquet (round 0's labelled
                                                                set); with annotators, its selection and export
    <run_root>/report/                                          report.md and its figures
    <run_root>/round=NN/...                                     a round's outputs (RoundPaths)
    <runs_root>/comparison/                                     the comparison of the runs beside it
"""
from __future__ import annotations

from dataclasses import dataclass

from raylib import storage

WEIGHTS_FILE = "model.pt"  # EMA weights, in a training output folder and in each of its checkpoints
TRAIN_STATE_FILE = "state.pt"  # model, optimizer, EMA, scaler, epoch: what a resumed worker loads
TRAIN_HISTORY_FILE = "history.json"  # one entry per evaluation during training
RUN_INFO_FILE = "run.json"
FAILED_POINTS_FILE = "failed_points.txt"  # in a sweep's folder: the points that failed, one line each
RUN_CONFIG_FILE = "config.yaml"  # the resolved config the run was started with (raylib/run_config.py)


# The pre-annotation export's files, in RoundPaths.preannotations (raylib/export.py says what each holds).
COCO_FILE = "preannotations_coco.json"
LABELSTUDIO_FILE = "preannotations_labelstudio.json"
LABEL_CONFIG_FILE = "label_config.xml"
SELECTED_URIS_FILE = "selected_uris.txt"
CVAT_ZIP_FILE = "preannotations_cvat_voc.zip"
SKIPPED_FILE = "skipped.json"  # selected images not (fully) exported, with the reason each
EXPORT_MARKER = ".raylib-preannotations"  # written first: this folder is an export and may be cleared
EXPORT_PARTS_DIR = ".parts"  # the export's per-part fragments, merged then removed
REVIEW_PAGE = "index.html"  # the round's review page, in RoundPaths.review (raylib/review.py)


def review_thumbnail(index: int) -> str:
    """A review page's thumbnail, relative to the page (`thumbs/00003.jpg`): named by its position among
    the page's images, never by image id, so that no id reaches a file name or a URL unescaped."""
    return f"thumbs/{index:05d}.jpg"


def export_part_name(file_name: str, part: int) -> str:
    """The per-part file of a large export (`preannotations_coco.json`, part 3 ->
    `preannotations_coco-part-00003.json`): above export.SPLIT_FILES_ABOVE images, one file per scoring part."""
    stem, dot, ext = file_name.rpartition(".")
    return f"{stem}-part-{part:05d}{dot}{ext}"


def voc_preannotation(image_id: str) -> str:
    """An image's VOC pre-annotation inside the export folder: `<image_id>.xml` (the id checked by `safe_relpath`)."""
    return safe_relpath(image_id) + ".xml"


SEED_ROUND = -1  # the seed set's "round": labelled before round 0 trains (by annotators, or simulated)


def round_name(round_idx: int) -> str:
    """'seed' or 'round N': how the console and messages name a round."""
    return "seed" if round_idx == SEED_ROUND else f"round {round_idx}"


@dataclass(frozen=True)
class RoundPaths:
    run_root: str
    round_idx: int  # SEED_ROUND for the seed set, whose files are those of a round's selection and labels

    @property
    def name(self) -> str:
        return round_name(self.round_idx)

    @property
    def root(self) -> str:
        if self.round_idx == SEED_ROUND:
            return storage.join(self.run_root, "seed")
        return storage.join(self.run_root, f"round={self.round_idx:02d}")

    def _in(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def checkpoint(self) -> str:
        """Weights trained on the labels of this round (`model.pt`) and Ray Train's checkpoints."""
        return self._in("train")

    @property
    def weights(self) -> str:
        return train_weights(self.checkpoint)

    @property
    def metrics(self) -> str:
        """AP50 on the fixed performance test set."""
        return self._in("metrics.json")

    @property
    def metrics_test(self) -> str:
        """AP50 on the `test` split of the labelled set."""
        return self._in("metrics_test.json")

    @property
    def calibration(self) -> str:
        """Reliability table of loc_conf against true IoU on the labelled val split (raylib.calibration)."""
        return self._in("calibration.parquet")

    @property
    def calibration_summary(self) -> str:
        """Rank correlations of loc_conf / cls_conf with true IoU on val, and counts (raylib.calibration)."""
        return self._in("calibration.json")

    @property
    def unlabelled(self) -> str:
        """The pool manifest without the images labelled so far: what this round scores."""
        return self._in("unlabelled.parquet")

    @property
    def scored(self) -> str:
        """Scoring's intermediate rows (one per image, detections nested), removed when split."""
        return self._in("scored")

    @property
    def detections(self) -> str:
        return self._in("detections")

    @property
    def image_status(self) -> str:
        return self._in("image_status")

    @property
    def embeddings(self) -> str:
        """One row per scored image (image_id, embedding): written only for a diversity strategy."""
        return self._in("embeddings")

    @property
    def labelled_scoring(self) -> ScoringPaths:
        """Diversity strategies: the round's labelled images scored by the round's model, for their
        embeddings (what k-center counts as covered)."""
        return ScoringPaths(self.run_root, self.round_idx, "labelled")

    @property
    def candidate_scoring(self) -> ScoringPaths:
        """`loop.seed_strategy=kcenter` (the seed round): the seed set's candidates scored by the start
        model, for their embeddings."""
        return ScoringPaths(self.run_root, self.round_idx, "candidates")

    @property
    def selection(self) -> str:
        return self._in("selection.parquet")

    @property
    def thresholds(self) -> str:
        return self._in("thresholds.parquet")

    @property
    def preannotations(self) -> str:
        return self._in("preannotations")

    @property
    def review(self) -> str:
        """The review page of the round's selection (`index.html`) and its thumbnails (raylib/review.py)."""
        return self._in("review")

    @property
    def review_page(self) -> str:
        return self._in("review", REVIEW_PAGE)

    @property
    def oracle_errors(self) -> str:
        """Selected images the oracle gave no usable label for, with the reason each."""
        return self._in("oracle_errors.json")

    @property
    def labels(self) -> str:
        """The labelled set after this round's oracle answered (input of round + 1)."""
        return self._in("labels.parquet")

    def marker(self, stage: str) -> str:
        """Written last by a stage: its outputs are complete."""
        return self._in("_done", stage)


@dataclass(frozen=True)
class ScoringPaths(RoundPaths):
    """A folder of a round (round=NN/labelled/, seed/candidates/) holding a manifest of some images and
    their scoring outputs, with a round's file names (score_pool writes them as a round's)."""

    folder: str

    @property
    def root(self) -> str:
        return storage.join(RoundPaths(self.run_root, self.round_idx).root, self.folder)

    @property
    def manifest(self) -> str:
        return self._in("manifest.parquet")


def part_file(folder: str, index: int) -> str:
    """Part `index` of a folder of Parquet parts: scoring writes detections/ and image_status/ part by
    part, and part i of both holds the same images (export relies on it)."""
    return storage.join(folder, f"part-{index:05d}.parquet")


def pool_manifest(run_root: str) -> str:
    return storage.join(run_root, "pool.parquet")


def seed_labels(run_root: str) -> str:
    """Round 0's labelled set: the seed round's labels."""
    return RoundPaths(run_root, SEED_ROUND).labels


def round_labels(run_root: str, round_idx: int) -> str:
    """The labelled set round `round_idx` trains on: the seed labels, then the previous oracle's."""
    return RoundPaths(run_root, round_idx - 1).labels


def imported_truth(run_root: str, which: str) -> str:
    """Ground truth imported once from a label file of the config: `test` (data.test), `pool`
    (data.pool_labels), `labelled` (data.labelled); columns image_id, objects."""
    return storage.join(run_root, f"truth_{which}.parquet")


def imported_images(run_root: str, which: str) -> str:
    """The manifest (image_id, uri) of the images of an imported label file (`imported_truth`)."""
    return storage.join(run_root, f"images_{which}.parquet")


def perf_test_labels(run_root: str) -> str:
    """Ground truth of the fixed performance test set."""
    return storage.join(run_root, "labels_perf_test.parquet")


def standalone_labels(run_root: str) -> str:
    """The labelled set the train/evaluate jobs make when run alone, outside the loop."""
    return storage.join(run_root, "labels_standalone.parquet")


def run_info(run_root: str) -> str:
    """What the run is (strategy, seed, model, k, classes), for the report and the comparison."""
    return storage.join(run_root, RUN_INFO_FILE)


def run_config(run_root: str) -> str:
    """The resolved config of the run: a rerun with other result-relevant values is refused."""
    return storage.join(run_root, RUN_CONFIG_FILE)


def config_changes(run_root: str) -> str:
    """Values changed between rounds with `accept_new_values=true`: when, which keys, old and new."""
    return storage.join(run_root, "config_changes.json")


def report_dir(run_root: str) -> str:
    return storage.join(run_root, "report")


def report_file(report_root: str) -> str:
    """The report's Markdown; its figures are PNG files beside it, named in it."""
    return storage.join(report_root, "report.md")


def report_link(run_root: str, uri: str) -> str:
    """A file of the run as the report links it: relative to report/ (`../round=00/review/index.html`),
    so the links work wherever the run root is read from (a local folder, a downloaded S3 prefix)."""
    return "../" + uri[len(run_root):].lstrip("/\\").replace("\\", "/")


def runs_root(run_root: str) -> str:
    """The folder holding this run and its siblings of a sweep (compared together)."""
    stripped = run_root.rstrip("/")
    return stripped.rsplit("/", 1)[0] if "/" in stripped else "."


def comparison_dir(runs_root: str) -> str:
    return storage.join(runs_root, "comparison")


def mlflow_store(runs_root: str) -> str:
    """logger=mlflow's default store: one SQLite file for the runs of a sweep (raylib/tracking.py)."""
    return storage.join(runs_root, "mlflow.db")


def mlflow_artifacts(runs_root: str) -> str:
    return storage.join(runs_root, "mlflow-artifacts")


def comparison_file(comparison_root: str) -> str:
    return storage.join(comparison_root, "comparison.md")


def train_weights(out_dir: str) -> str:
    """The best EMA weights of a training run in `out_dir`."""
    return storage.join(out_dir, WEIGHTS_FILE)


def train_history(out_dir: str) -> str:
    return storage.join(out_dir, TRAIN_HISTORY_FILE)


def train_ray_dir(out_dir: str) -> str:
    """Ray Train's storage path (its checkpoints) for a training run in `out_dir`."""
    return storage.join(out_dir, "ray")


def test_manifest(run_root: str) -> str:
    """Manifest of the fixed performance test set (never scored for selection)."""
    return storage.join(run_root, "test_pool.parquet")


class UnsafeIdError(ValueError):
    """An image id or class name that would escape its output directory."""


def safe_relpath(image_id: str) -> str:
    """Validate an image id for use as a relative file path under an output directory.

    Ids are relative keys like `2007_000017` or `street/cam1/0001.jpg`; anything absolute, with
    `..`, backslashes, control characters or empty parts is refused rather than rewritten, so two
    different ids can never map to the same file.
    """
    if not isinstance(image_id, str) or not image_id:
        raise UnsafeIdError(f"image id {image_id!r} is empty or not a string")
    if len(image_id) > 1024:
        raise UnsafeIdError(f"image id {image_id[:40]!r}... is longer than 1024 characters")
    if image_id.startswith("/") or "\\" in image_id or ":" in image_id.split("/")[0]:
        raise UnsafeIdError(f"image id {image_id!r} is absolute or has a drive/backslash; ids must be relative keys")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in image_id):
        raise UnsafeIdError(f"image id {image_id!r} contains control characters")
    parts = image_id.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeIdError(f"image id {image_id!r} has an empty, '.' or '..' path part")
    return image_id
