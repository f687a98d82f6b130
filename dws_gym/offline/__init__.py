"""Offline RL on real and synthesized data: the library behind the scripts in ``offline/``.

- :mod:`~dws_gym.offline.synthesize`: dream transitions from real start windows into a synthetic trajectory store;
- :mod:`~dws_gym.offline.replay`: minibatches from memory-mapped stores, real and synthetic mixed in a fixed ratio;
- :mod:`~dws_gym.offline.losses`: CQL's and IQL's losses;
- :mod:`~dws_gym.offline.runner`: the run around an algorithm (flags, resume, evaluation, checkpoints, results).
"""

from dws_gym.offline.losses import awr_policy_loss, cql_loss, double_dqn_target, expectile_loss, iql_q_target
from dws_gym.offline.replay import OfflineReplay, StoreInfo, describe_store
from dws_gym.offline.synthesize import SynthesisResult, synthesize

__all__ = [
    "OfflineReplay",
    "StoreInfo",
    "SynthesisResult",
    "awr_policy_loss",
    "cql_loss",
    "describe_store",
    "double_dqn_target",
    "expectile_loss",
    "iql_q_target",
    "synthesize",
]
