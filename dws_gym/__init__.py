"""dws-gym: video world simulators fine-tuned with Dynamic World Simulation, served as gymnasium environments."""

from dws_gym.envs.dream import DreamEnv, DreamVectorEnv
from dws_gym.envs.real import make_real_env
from dws_gym.envs.registration import register_dream_envs, shipped_simulator
from dws_gym.simulator import Simulator

# Registering on import is what makes gym.make("dws/Breakout-v0") work after `import dws_gym` (idempotent).
register_dream_envs()

__version__ = "0.1.0"
__all__ = ["DreamEnv", "DreamVectorEnv", "Simulator", "make_real_env", "register_dream_envs", "shipped_simulator",
           "__version__"]
