"""Score the unlabelled pool of round `round_idx` with Ray Data, as the loop's score stage does.

    python jobs/score.py                                 # after jobs/train.py on the embedded defaults
    python jobs/score.py model.weights=s3://bucket/w.pt score=gpu cluster=gpu4

Weights: the round's model, else (a round never trained) `model.weights`. Pool: the round's unlabelled
manifest, else the whole pool.
"""
import hydra
from _job import run, run_alone, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raylib import commit

    config = start(cfg, with_ray=False)
    _, rp = run_alone(config, "score", lambda rp: [(
        commit.scoring_weights(config, rp) or rp.weights, "weights",
        f"run jobs/train.py round_idx={config.round_idx} first, or pass model.weights=<path or s3:// URI>")])
    print(f"detections: {rp.detections}\nimage status: {rp.image_status}")


if __name__ == "__main__":
    run(main, __doc__)
