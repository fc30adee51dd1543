"""Build the dataset and the pool/test manifests of a run, once (every other job also does this).

    python jobs/make_pool.py                                  # synthetic data under outputs/data/
    python jobs/make_pool.py experiment=voc07_12              # index VOC07+12 (data.root, S3 run root)
    python jobs/make_pool.py --folder s3://bucket/images --out s3://bucket/pools/images.parquet

The `--folder` form indexes any image folder or S3 prefix into a manifest (image_id = relative key),
without Hydra: it needs no config.
"""
from __future__ import annotations

import argparse
import sys

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema before Hydra composes)
from raylib import pool, runtime
from raylib.config import to_config


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    dataset = runtime.ensure_dataset(to_config(cfg))
    print(f"data root:     {dataset.voc_root}")
    print(f"pool manifest: {dataset.pool_manifest}")
    print(f"test manifest: {dataset.test_manifest}")


def index_folder_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Index an image folder or S3 prefix into a pool manifest.")
    parser.add_argument("--folder", required=True, help="local folder or s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="manifest path or s3:// URI (.parquet)")
    args = parser.parse_args(argv)
    count = pool.index_folder(args.folder, args.out)
    print(f"indexed {count} images under {args.folder} into {args.out}")


if __name__ == "__main__":
    if any(arg.startswith("--folder") for arg in sys.argv[1:]):
        index_folder_cli(sys.argv[1:])
    else:
        main()
