"""adaflow.rl: REINFORCE for the AdaDiff step selector (`reinforce`) and its rewards (`rewards`)."""
from adaflow.rl.reinforce import (
    current_baseline,
    entropy,
    init_baseline,
    reinforce_loss,
    reinforce_train,
    update_baseline,
)
from adaflow.rl.rewards import QUALITIES, make_quality_fn, step_reward

__all__ = [
    "QUALITIES",
    "current_baseline",
    "entropy",
    "init_baseline",
    "make_quality_fn",
    "reinforce_loss",
    "reinforce_train",
    "step_reward",
    "update_baseline",
]
