"""Write a round's pre-annotations (VOC XML with confidence, COCO, Label Studio, CVAT) for its selected
images, as the loop's export stage does.

    python jobs/export.py round_idx=0          # after jobs/select_images.py
"""
import hydra
from _job import run, run_alone, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg, with_ray=False)  # Ray tasks export the parts of large selections
    _, rp = run_alone(config, "export", lambda rp: [(
        rp.selection, "selection", f"run jobs/select_images.py round_idx={config.round_idx} first")])
    print(f"pre-annotations: {rp.preannotations}")


if __name__ == "__main__":
    run(main, __doc__)
