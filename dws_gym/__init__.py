"""dws-gym: video world simulators fine-tuned with Dynamic World Simulation, served as gymnasium environments."""

from dws_gym.envs.real import make_real_env

__version__ = "0.1.0"
__all__ = ["make_real_env", "__version__"]
