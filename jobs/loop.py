"""The main job: run (or resume) the active-learning loop.

    ./run.sh                                             # the embedded demo: jobs/loop.py experiment=demo
    python jobs/loop.py experiment=voc_1gpu data.root=/data/VOC0712   # the seed's experiment on one GPU
    python jobs/loop.py -m experiment=demo strategy=cls_iou,random seed=0,1   # a sweep; a failed point doesn't stop it
    ray job submit --runtime-env infra/runtime_env.yaml -- python jobs/loop.py experiment=voc07_12 storage.bucket=<b>

A rerun into the same run_root resumes; with other result-relevant values it is refused (the message
says the two ways out).
"""
import hydra
from _job import run, start, sweep_point
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raylib.loop import run_loop  # torch and Ray: only once there is work (--help answers without)

    sweep_point(lambda: run_loop(start(cfg)))


if __name__ == "__main__":
    run(main, __doc__)
