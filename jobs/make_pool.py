"""Build the dataset and the pool/test manifests of a run, once (every other job also does this).

    python jobs/make_pool.py                                  # synthetic data under outputs/data/
    python jobs/make_pool.py experiment=voc07_12              # index VOC07+12 (data.root, S3 run root)
    python jobs/make_pool.py --folder s3://bucket/images --out s3://bucket/pools/images.parquet  # any folder
"""
import argparse
import sys

import hydra
from _job import run, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raylib import dataset

    ds = dataset.ensure_dataset(start(cfg, with_ray=False))
    print(f"data root: {ds.voc_root}\npool manifest: {ds.pool_manifest}\ntest manifest: {ds.test_manifest}")


if __name__ == "__main__" and any(arg.startswith("--folder") for arg in sys.argv[1:]):
    parser = argparse.ArgumentParser(description="Index an image folder or S3 prefix into a pool manifest.")
    parser.add_argument("--folder", required=True, help="local folder or s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="manifest path or s3:// URI (.parquet)")
    args = parser.parse_args(sys.argv[1:])
    from raylib import pool

    print(f"indexed {pool.index_folder(args.folder, args.out)} images under {args.folder} into {args.out}")
elif __name__ == "__main__":
    run(main, __doc__)
