"""Every file of a run, in one place. A round's outputs live under `<run_root>/round=NN/`."""
from __future__ import annotations

from dataclasses import dataclass

from raylib import storage


@dataclass(frozen=True)
class RoundPaths:
    run_root: str
    round_idx: int

    @property
    def root(self) -> str:
        return storage.join(self.run_root, f"round={self.round_idx:02d}")

    def _in(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def checkpoint(self) -> str:
        """Weights trained on the labels of this round (`model.pt`) and Ray Train's checkpoints."""
        return self._in("train")

    @property
    def weights(self) -> str:
        return self._in("train", "model.pt")

    @property
    def metrics(self) -> str:
        return self._in("metrics.json")

    @property
    def detections(self) -> str:
        return self._in("detections")

    @property
    def image_status(self) -> str:
        return self._in("image_status")

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
    def labels(self) -> str:
        """The labelled set after this round's oracle answered (input of round + 1)."""
        return self._in("labels.parquet")

    def marker(self, stage: str) -> str:
        """Written last by a stage: its outputs are complete."""
        return self._in("_done", stage)


def pool_manifest(run_root: str) -> str:
    return storage.join(run_root, "pool.parquet")


def seed_labels(run_root: str) -> str:
    return storage.join(run_root, "labels_seed.parquet")


def report_dir(run_root: str) -> str:
    return storage.join(run_root, "report")


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
