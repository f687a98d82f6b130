"""Model components: the DWS action-conditioned module, action representations, motion-reinforced loss weights and
the reward / termination head. The flow world model lives in :mod:`dws_gym.models.flow` and its frame-causal Wan
backbone in :mod:`dws_gym.models.causal_wan` (imported on use: they pull in diffusers); the reward head's training
(batch sources, balancing weights, fitting loop) in :mod:`dws_gym.models.reward_training`."""

from dws_gym.models.actions import (
    ALE_ACTION_MEANINGS,
    DEFAULT_TEXT_ENCODER,
    PROCGEN_COMBOS,
    ActionMeaning,
    ContinuousActionEmbedder,
    DiscreteActionEmbedder,
    TextActionEncoder,
    action_text,
    action_texts,
    meaning_keys,
    minilm_local_path,
    transfer_action_table,
)
from dws_gym.models.conditioning import (
    CONDITIONER_ATTR,
    ActionConditioner,
    ActionModulation,
    BlockActionModulation,
    ConditioningMode,
    find_prefn_norms,
    freeze_base,
    get_action_conditioner,
    inject_action_conditioning,
    modulate,
)
from dws_gym.models.motion import MotionLossConfig, motion_weighted_mse, motion_weights, pool_weights, weighted_mean
from dws_gym.models.reward import RewardConfig, RewardHead, RewardOutput, load_reward_head, save_reward_head

__all__ = [
    "MotionLossConfig",
    "RewardConfig",
    "RewardHead",
    "RewardOutput",
    "load_reward_head",
    "motion_weighted_mse",
    "motion_weights",
    "pool_weights",
    "save_reward_head",
    "weighted_mean",
    "ALE_ACTION_MEANINGS",
    "CONDITIONER_ATTR",
    "DEFAULT_TEXT_ENCODER",
    "PROCGEN_COMBOS",
    "ActionConditioner",
    "ActionMeaning",
    "ActionModulation",
    "BlockActionModulation",
    "ConditioningMode",
    "ContinuousActionEmbedder",
    "DiscreteActionEmbedder",
    "TextActionEncoder",
    "action_text",
    "action_texts",
    "meaning_keys",
    "transfer_action_table",
    "find_prefn_norms",
    "freeze_base",
    "get_action_conditioner",
    "inject_action_conditioning",
    "minilm_local_path",
    "modulate",
]
