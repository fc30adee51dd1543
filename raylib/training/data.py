"""What the training DataLoader needs, without Ray: a rank's shard of a labelled split, copied and checked,
served through the YOLOX package's augmentations by a seeded, resumable loader.

    samples, split_labels = load_split(labels_uri, manifest_uri, "train", rank, world_size, ImageCache(tmp))
    dataset = make_train_dataset(samples, tc, input_size, max_pixels, resized_dir=f"{tmp}/resized")
    loader = make_loader(dataset, local_batch, steps_per_epoch, seed, num_workers=tc.num_loader_workers)
    loader.batch_sampler.set_epoch(epoch)   # before iterating each epoch
    for images, targets in loader: ...      # uint8 [b, 3, s, s], float32 [b, MAX_LABELS, 5] (class, cx, cy, w, h)

Per YOLOX (yolox/config.py `get_data_loader`): images are copied into a worker-private directory under
hashed names (`ImageCache`), served by `LabelledImages` wrapped in the package's `MosaicDetection` +
`TrainTransform` (mosaic, mixup, random affine, HSV, flip: the package's code, not ours). One DataLoader
for the run, its `num_loader_workers` processes persistent across epochs; each index carries the mosaic
flag (the package's `YoloBatchSampler`) and its own augmentation seed from (seed, epoch, position), so an
epoch's batches are the same with any worker count and after a resume. Decoded, resized images are kept
as .npy files next to the copies (a mosaic + mixup item reads 5 images).

Images are decoded by `raylib.detect.read_image`, the decoder scoring uses. A shard's sizes come from the
images' headers (`images.image_size`, the checks the decoder makes before decoding): a labelled image that
can't be read, has no readable header or is over `max_pixels` is logged and left out. (Decoding every image
there only to learn its size doubled a first epoch's decoding.) So an image whose header reads but whose
pixels don't (a truncated scan; scoring has already decoded every image a round selects, so this is a seed
set's or `data.labelled`'s image) stops training at its first use, with a message naming it. Images
labelled with zero objects are trained on as background.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from yolox.data import MosaicDetection, TrainTransform, YoloBatchSampler
from yolox.data.datasets import Dataset as YoloxDataset

from raylib import detect, images, labels, storage
from raylib.config import TrainConfig
from raylib.images import ImageError
from raylib.model import PAD_VALUE

log = logging.getLogger(__name__)

MAX_LABELS = 120  # TrainTransform(max_labels=120), as in YoloxConfig.get_data_loader
TARGET_FIELDS = ("x1", "y1", "x2", "y2", "class_id")  # a Sample's target columns, from schemas.OBJECT
FETCH_THREADS = 8


@dataclass
class Sample:
    image_id: str
    path: str  # local file
    targets: np.ndarray  # float32 [n, 5]: x1, y1, x2, y2, class_id in original pixels
    height: int
    width: int


class ImageCache:
    """Local copies of image URIs (local paths or s3://) in `root`, one file per URI named by the
    SHA-256 of the URI: never a path built from an image id, so no id can escape `root`."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path_for(self, uri: str) -> str:
        return os.path.join(self.root, hashlib.sha256(uri.encode("utf-8")).hexdigest())

    def fetch(self, uri: str) -> str:
        path = self.path_for(uri)
        if not os.path.exists(path):
            storage.write_bytes(path, storage.read_bytes(uri))  # atomic: temp file + rename
        return path


def load_split(labels_uri: str, manifest_uri: str, split: str, rank: int = 0, world_size: int = 1,
               cache: ImageCache | None = None, max_pixels: int | None = None) -> tuple[list[Sample], pa.Table]:
    """This rank's shard of `split`: copied to `cache`, its size read from the header (not decoded).

    Returns (samples of the shard, labels of the whole split). Images that are missing from the manifest,
    fail to copy, have no readable header, or are over `max_pixels` are logged and left out; an empty
    split gives an empty shard. The split's URIs come from one join and the shard's targets from Arrow
    columns: a worker makes Python objects for its own shard only.
    """
    table = labels.split_with_uris(labels_uri, manifest_uri, split)
    found = table.filter(pc.is_valid(table.column("uri")))
    if found.num_rows < table.num_rows:
        missing = table.filter(pc.is_null(table.column("uri"))).column("image_id")
        log.warning("%d %s image(s) are not in manifest %s, e.g. %s; skipped", len(missing), split,
                    manifest_uri, missing.slice(0, 3).to_pylist())
    shard = found.take(_shard_rows(found, rank, world_size, split))
    items = list(zip(shard.column("image_id").to_pylist(), shard.column("uri").to_pylist()))
    # Copies in threads, a slice of the shard per task: a future per image cost ~1 KB and ~70 us.
    size = -(-len(items) // (FETCH_THREADS * 16)) or 1
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        slices = pool.map(lambda start: [_fetch(item, cache) for item in items[start:start + size]],
                          range(0, len(items), size))
        fetched = [path for paths in slices for path in paths]
    samples = [_sample(item, path, targets, max_pixels)
               for item, path, targets in zip(items, fetched, _targets(shard.column("objects")))]
    return [s for s in samples if s is not None], table.drop_columns(["uri"])


def _shard_rows(found: pa.Table, rank: int, world_size: int, split: str) -> np.ndarray:
    """Rows of `found` for this rank: every world_size-th in (image_id, uri) order."""
    order = pc.sort_indices(found, sort_keys=[("image_id", "ascending"), ("uri", "ascending")]).to_numpy()
    shard = order[rank::world_size]
    if not len(shard) and len(order) and split == "train":
        shard = order[[rank % len(order)]]  # fewer images than workers: every rank still needs data
    return shard


def _targets(objects: pa.ChunkedArray) -> list[np.ndarray]:
    """Each image's boxes as float32 [n, 5] (x1, y1, x2, y2, class_id), built column-wise: one array for
    all of them, split by image (views, in row order)."""
    objects = objects.combine_chunks()
    flat = pc.list_flatten(objects)
    boxes = np.stack([pc.struct_field(flat, name).to_numpy(zero_copy_only=False).astype(np.float32)
                      for name in TARGET_FIELDS], axis=1).reshape(-1, len(TARGET_FIELDS))
    counts = pc.list_value_length(objects).fill_null(0).to_numpy()
    return np.split(boxes, np.cumsum(counts)[:-1]) if len(counts) else []


def _fetch(item: tuple[str, str], cache: ImageCache | None) -> str | OSError:
    try:
        return cache.fetch(item[1]) if cache else item[1]
    except OSError as exc:
        return exc


def _sample(item: tuple[str, str], path: str | OSError, targets: np.ndarray, max_pixels: int | None) -> Sample | None:
    image_id, uri = item
    try:
        if isinstance(path, OSError):
            raise path
        width, height = images.image_size(path, image_id, max_pixels)
    except (OSError, ImageError) as exc:
        log.warning("labelled image '%s' (%s) left out of training: %s", image_id, uri, exc)
        return None
    return Sample(image_id, path, targets, height, width)


class LabelledImages(YoloxDataset):
    """Our samples in the interface `MosaicDetection` expects of a YOLOX dataset (like its VOCDetection):
    `pull_item(i)` -> (image resized to fit `input_dim`, targets [n, 5] x1y1x2y2+class scaled the same,
    (height, width), i); `load_anno(i)` -> those targets.

    With `resized_dir`, each image is decoded and resized once and kept there as a .npy file (whole
    uint8 pixels, shared by the loader processes of this dataset): a mosaic + mixup item pulls 5 images,
    and loading the array is ~10x cheaper than decoding the JPEG again (benchmarks/RESULTS.md)."""

    def __init__(self, samples: list[Sample], input_size: int, max_pixels: int | None = None,
                 resized_dir: str | None = None):
        super().__init__((input_size, input_size))
        self.samples = samples
        self.max_pixels = max_pixels
        self.preproc = None
        self.undecodable: set[str] = set()  # warned of once
        self.resized = ImageCache(resized_dir) if resized_dir and _fits_on_disk(resized_dir, samples, input_size) else None

    def __len__(self) -> int:
        return len(self.samples)

    def _ratio(self, index: int) -> float:
        sample = self.samples[index]
        return min(self.input_dim[0] / sample.height, self.input_dim[1] / sample.width)

    def load_anno(self, index: int) -> np.ndarray:
        targets = self.samples[index].targets.copy()
        targets[:, :4] *= self._ratio(index)
        return targets

    def pull_item(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
        sample = self.samples[index]
        image = self._resized_image(index)
        if image is None:  # its header read (load_split) but its pixels don't: a blank item without objects
            ratio = self._ratio(index)
            blank = np.full((int(sample.height * ratio), int(sample.width * ratio), 3), PAD_VALUE, np.uint8)
            return blank, np.zeros((0, 5), np.float32), (sample.height, sample.width), index
        return image, self.load_anno(index), (sample.height, sample.width), index

    def _resized_image(self, index: int) -> np.ndarray | None:
        """The image resized to fit `input_dim` (cached), or None when its pixels can't be decoded:
        training goes on without it (logged once per loader process), the epoch's batches unchanged."""
        import cv2

        sample = self.samples[index]
        cached = self.resized.path_for(f"{sample.path}@{self.input_dim[0]}") + ".npy" if self.resized else None
        if cached and os.path.exists(cached):
            return np.load(cached)
        try:
            image = detect.read_image(sample.path, sample.image_id, self.max_pixels)
        except ImageError as exc:
            if sample.image_id not in self.undecodable:
                self.undecodable.add(sample.image_id)
                log.warning("labelled image '%s' (%s) left out of training: %s (its header read, its pixels don't: "
                            "replace the file)", sample.image_id, sample.path, exc)
            return None
        ratio = self._ratio(index)
        image = cv2.resize(image, (int(sample.width * ratio), int(sample.height * ratio)),
                           interpolation=cv2.INTER_LINEAR)
        if cached:
            _save_array(cached, image)
        return image

    @YoloxDataset.mosaic_getitem
    def __getitem__(self, index: int):
        image, targets, info, index = self.pull_item(index)
        if self.preproc is not None:
            image, targets = self.preproc(image, targets, self.input_dim)
        return image, targets, info, index


def _fits_on_disk(directory: str, samples: list[Sample], input_size: int) -> bool:
    """Whether the resized copies of `samples` (at most input_size^2 x 3 bytes each) take under half
    of the free space where `directory` is; if not, images are decoded at every pull."""
    os.makedirs(directory, exist_ok=True)
    needed, free = len(samples) * input_size * input_size * 3, shutil.disk_usage(directory).free
    if needed > free // 2:
        log.warning("resized training images would take up to %.1f GB of the %.1f GB free in %s: not cached, "
                    "decoded at every use (slower loading)", needed / 1e9, free / 1e9, directory)
    return needed <= free // 2


def _save_array(path: str, array: np.ndarray) -> None:
    """np.save, atomically (loader processes may write the same image at once); a failed write (disk
    full) only costs the cache entry."""
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp", delete=False) as handle:
            np.save(handle, array)
        os.replace(handle.name, path)
    except OSError as exc:
        log.warning("resized image not cached at %s: %s", path, exc)


def make_train_dataset(samples: list[Sample], tc: TrainConfig, size: int, max_pixels: int | None = None,
                       resized_dir: str | None = None) -> MosaicDetection:
    """The package's augmentation stack over our samples (as `YoloxConfig.get_data_loader` builds it);
    `size`: the model's input side; `resized_dir`: where to keep decoded, resized images (`LabelledImages`)."""
    return MosaicDetection(
        LabelledImages(samples, size, max_pixels, resized_dir),
        img_size=(size, size),
        mosaic=True,
        preproc=TrainTransform(max_labels=MAX_LABELS, flip_prob=tc.flip_prob, hsv_prob=tc.hsv_prob),
        degrees=tc.degrees,
        translate=tc.translate,
        mosaic_scale=tuple(tc.mosaic_scale),
        mixup_scale=tuple(tc.mixup_scale),
        shear=tc.shear,
        enable_mixup=tc.mixup_prob > 0,
        mosaic_prob=tc.mosaic_prob,
        mixup_prob=tc.mixup_prob,
    )


class EpochSampler(torch.utils.data.Sampler):
    """`num_samples` indices of a dataset of `n` per epoch, from concatenated permutations seeded by
    (seed, epoch): every rank takes the same number of steps per epoch (DDP needs it) however its shard
    size differs, and epoch e draws the same order whether or not the process ran the epochs before it."""

    def __init__(self, n: int, num_samples: int, seed: int):
        self.n, self.num_samples, self.seed, self.epoch = n, num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-self.num_samples // self.n))])
        return iter(int(i) for i in order[: self.num_samples])


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the item at `position` of `epoch`."""
    return int(np.random.SeedSequence((seed, epoch, position)).generate_state(1)[0])


class EpochBatchSampler(YoloBatchSampler):
    """Batches of (mosaic, index, item_seed) keys for `SeededItems`.

    The mosaic flag travels with each index, the package's `YoloBatchSampler` way: this object lives in
    the main process, so `set_no_aug` reaches persistent loader workers, which hold their own copy of
    the dataset. The item seed makes a batch a function of (seed, epoch, position) only: the same with 0
    or N workers, whichever worker draws it, and in a resumed run."""

    def __init__(self, sampler: EpochSampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False, mosaic=True)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[bool, int, int]]]:
        position = 0
        for batch in super().__iter__():
            yield [(mosaic, index, item_seed(self.sampler.seed, self.sampler.epoch, position + offset))
                   for offset, (mosaic, index) in enumerate(batch)]
            position += len(batch)


class SeededItems(torch.utils.data.Dataset):
    """`dataset[(mosaic, index)]` (the package's `mosaic_getitem` key) with `random` and `numpy.random`,
    which all of YOLOX's augmentations draw from, seeded by the key's item seed."""

    def __init__(self, dataset: MosaicDetection):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[bool, int, int]):
        mosaic, index, seed = key
        random.seed(seed)
        np.random.seed(seed)
        return self.dataset[(mosaic, index)]


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    # TrainTransform returns float32 images of whole 0-255 values: uint8 is exact and a quarter of the
    # bytes through shared memory, pinned memory and host-to-device copies (train_step makes them float).
    images = torch.from_numpy(np.stack([item[0] for item in batch]).astype(np.uint8))
    targets = torch.from_numpy(np.stack([item[1] for item in batch]))
    return images, targets


def _loader_worker_init(worker_id: int) -> None:
    # One loader process is one core's worth of work: cv2's own thread pool would compete with the other
    # loader processes and the training step (YOLOX's trainer sets the same, in `configure_module`).
    import cv2

    cv2.setNumThreads(0)


# Batches each loader worker prepares ahead (torch's default): a mosaic batch of 64 at 640 is ~80 MB of
# shared memory, so deeper queues cost memory for no gain once the workers keep up.
PREFETCH_BATCHES = 2


def make_loader(dataset: MosaicDetection, batch_size: int, steps: int, seed: int, num_workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """`steps` batches per epoch, for the whole run: call `loader.batch_sampler.set_epoch(e)` before
    iterating epoch e. Worker processes start at the first epoch and persist (no restart per epoch)."""
    return torch.utils.data.DataLoader(
        SeededItems(dataset), batch_sampler=EpochBatchSampler(EpochSampler(len(dataset), steps * batch_size, seed),
                                                              batch_size),
        num_workers=num_workers, collate_fn=_collate, pin_memory=pin_memory, worker_init_fn=_loader_worker_init,
        persistent_workers=num_workers > 0, prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
    )

