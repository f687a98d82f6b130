"""Environments: real Atari / Procgen vector envs in the dream format (and, with a simulator, the dream env)."""

from dws_gym.envs.dream import DreamEnv, DreamVectorEnv
from dws_gym.envs.frame_stack import FrameStackVector
from dws_gym.envs.real import (
    FRAME_SHAPE,
    AtariRealVectorEnv,
    ProcgenRealVectorEnv,
    make_real_env,
    parse_env_id,
    supported_env_ids,
)
from dws_gym.envs.registration import DREAM_GAMES, dream_env_ids, register_dream_envs

__all__ = [
    "DREAM_GAMES",
    "FRAME_SHAPE",
    "AtariRealVectorEnv",
    "DreamEnv",
    "DreamVectorEnv",
    "FrameStackVector",
    "ProcgenRealVectorEnv",
    "dream_env_ids",
    "make_real_env",
    "parse_env_id",
    "register_dream_envs",
    "supported_env_ids",
]
