"""Environments: real Atari / Procgen vector envs in the dream format (and, with a simulator, the dream env)."""

from dws_gym.envs.frame_stack import FrameStackVector
from dws_gym.envs.real import (
    FRAME_SHAPE,
    AtariRealVectorEnv,
    ProcgenRealVectorEnv,
    make_real_env,
    parse_env_id,
    supported_env_ids,
)

__all__ = [
    "FRAME_SHAPE",
    "AtariRealVectorEnv",
    "FrameStackVector",
    "ProcgenRealVectorEnv",
    "make_real_env",
    "parse_env_id",
    "supported_env_ids",
]
