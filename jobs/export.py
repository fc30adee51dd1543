"""Write VOC XML (+ COCO JSON, Label Studio tasks) pre-annotations for a round's selected images.

    python jobs/export.py round_idx=0          # after jobs/select_images.py
"""
import hydra
from _job import require, start
from omegaconf import DictConfig

from raylib import runtime
from raylib.export import export_preannotations
from raylib.paths import RoundPaths


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg)  # Ray tasks export the parts of the scoring output
    ds, rp = runtime.ensure_dataset(config), RoundPaths(config.run_root, config.round_idx)
    selection = require(rp.selection, "selection", f"run jobs/select_images.py round_idx={config.round_idx} first")
    n = export_preannotations(selection, rp.detections, rp.image_status, ds.class_names, rp.preannotations,
                              config.round_idx, config.loop.labelstudio_document_root)
    print(f"wrote {n} pre-annotation XML files (and COCO, Label Studio JSON) to {rp.preannotations}")


if __name__ == "__main__":
    main()
