"""A dry run: check a config (values, data sets and a sample of their labels, write access to run_root,
local GPUs, a rerun's config) and print the plan, without starting Ray.

    python jobs/check.py experiment=voc_1gpu data.root=/data/VOC0712
"""
import hydra
from _job import run, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raylib.check import plan, problems

    config = start(cfg, with_ray=False)
    print(plan(config))
    found = problems(config)
    if found:
        raise SystemExit("\n".join(f"error: {line}" for line in found))
    print("ok: nothing found that would stop this run")


if __name__ == "__main__":
    run(main, __doc__)
