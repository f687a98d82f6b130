"""Trajectory data: the on-disk episode store, its clip / transition views, importers and the held-out split.

Example::

    from dws_gym.data import TrajectoryStore
    store = TrajectoryStore("data/breakout", create=True)
    ep = store.add_episode(obs, actions, rewards, terminated, truncated, env_id="ALE/Breakout-v5")
    batch = store.clips(context=4, horizon=16).sample(32, np.random.default_rng(0))
"""

from dws_gym.data.importers import import_arrays
from dws_gym.data.read_ahead import ReadAhead
from dws_gym.data.splits import describe_policies, env_episodes, split_episodes
from dws_gym.data.store import (
    SCHEMA_VERSION,
    CorruptEpisodeError,
    EpisodeMeta,
    TrajectoryStore,
    describe_action_space,
)
from dws_gym.data.views import ClipDataset, TransitionDataset

__all__ = [
    "SCHEMA_VERSION",
    "ClipDataset",
    "CorruptEpisodeError",
    "EpisodeMeta",
    "ReadAhead",
    "TrajectoryStore",
    "TransitionDataset",
    "describe_action_space",
    "describe_policies",
    "import_arrays",
    "env_episodes",
    "split_episodes",
]
