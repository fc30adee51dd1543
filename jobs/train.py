"""Train one round's model alone (Ray Train), as the loop's train stage does.

    python jobs/train.py                                   # embedded defaults: synthetic pool, CPU, nano
    ray job submit --working-dir . -- python jobs/train.py cluster=gpu4 model=yolox_s train=gpu round_idx=0

Labels: those round `round_idx` trains on in the loop, else every pool image with its labels. Start
weights: `model.weights`, or with `train.init=previous` round `round_idx - 1`'s model.
"""
import hydra
from _job import run, run_alone, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raylib import commit

    config = start(cfg, with_ray=False)

    def needs(rp):
        start_weights = commit.init_weights(config, rp)
        return [(start_weights, "start weights", "train the round before first, or set train.init=transfer")] \
            if start_weights else []

    summary, rp = run_alone(config, "train", needs)
    print(f"weights: {summary['weights_uri']}\ncheckpoints: {rp.checkpoint}")


if __name__ == "__main__":
    run(main, __doc__)
