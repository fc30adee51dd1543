"""Write VOC XML (+ COCO JSON) pre-annotations for a round's selected images.

    python jobs/export.py                          # after jobs/select_images.py
"""
import logging

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema)
from raylib import runtime, storage
from raylib.config import to_config
from raylib.export import export_preannotations
from raylib.paths import RoundPaths


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("raylib").setLevel(logging.INFO)
    config = to_config(cfg)
    # Export streams Parquet and writes XML in this process: no Ray needed, only the storage endpoint.
    storage.configure_s3(config.storage.endpoint_url, config.storage.region)
    ds = runtime.ensure_dataset(config)
    rp = RoundPaths(config.run_root, config.round_idx)
    if not storage.exists(rp.selection):
        raise SystemExit(f"no selection at {rp.selection}: run jobs/select_images.py round_idx={config.round_idx} "
                         "first")
    unlabelled = storage.join(rp.root, "unlabelled.parquet")
    manifest = unlabelled if storage.exists(unlabelled) else ds.pool_manifest
    n = export_preannotations(rp.selection, rp.detections, manifest, ds.class_names, rp.preannotations,
                              config.round_idx)
    print(f"wrote {n} pre-annotation XML files and preannotations_coco.json to {rp.preannotations}")


if __name__ == "__main__":
    main()
