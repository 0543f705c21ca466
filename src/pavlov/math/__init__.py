"""pavlov's math core: every RL formula once, as a pure, documented, tested tensor function.

Modules: :mod:`~pavlov.math.returns` (returns and advantages over ``(T, N)`` rollouts),
:mod:`~pavlov.math.policy` (policy losses, KL estimators, entropy), :mod:`~pavlov.math.value`
(TD targets, Huber, Polyak), :mod:`~pavlov.math.sequence` (token log-probs, KL penalty),
:mod:`~pavlov.math.masked` (masked mean/whiten), :mod:`~pavlov.math.preference` (Bradley-Terry and
DPO-family losses), :mod:`~pavlov.math.group` (GRPO / RLOO group advantages) and
:mod:`~pavlov.math.rlhf` (token rewards with a KL penalty, token GAE, KL control, loss reductions).
"""

from pavlov.math.group import group_advantages, rloo_advantages
from pavlov.math.masked import masked_mean, masked_sum, masked_var, masked_whiten
from pavlov.math.policy import (
    KL_ESTIMATORS,
    approx_kl,
    categorical_entropy,
    clipped_value_loss,
    entropy,
    importance_ratio,
    kl_estimator,
    kl_k1,
    kl_k2,
    kl_k3,
    ppo_clip_loss,
    ppo_clip_terms,
    reinforce_loss,
)
from pavlov.math.preference import (
    DPO_LOSSES,
    bradley_terry_loss,
    dpo_hinge_loss,
    dpo_ipo_loss,
    dpo_loss,
    dpo_sigmoid_loss,
)
from pavlov.math.returns import (
    discounted_returns,
    gae,
    lambda_returns,
    nstep_targets,
    reward_to_go,
)
from pavlov.math.rlhf import (
    LOSS_AGGREGATIONS,
    adaptive_kl_coef,
    aggregate_token_loss,
    apply_missing_eos_penalty,
    last_token_index,
    rlhf_token_rewards,
    token_gae,
)
from pavlov.math.sequence import kl_penalty, projected_logprobs, selective_log_softmax
from pavlov.math.value import double_q_target, explained_variance, huber, polyak_update, td_target

__all__ = [
    "DPO_LOSSES",
    "LOSS_AGGREGATIONS",
    "adaptive_kl_coef",
    "aggregate_token_loss",
    "apply_missing_eos_penalty",
    "explained_variance",
    "last_token_index",
    "ppo_clip_terms",
    "rlhf_token_rewards",
    "token_gae",
    "KL_ESTIMATORS",
    "approx_kl",
    "bradley_terry_loss",
    "categorical_entropy",
    "clipped_value_loss",
    "discounted_returns",
    "double_q_target",
    "dpo_hinge_loss",
    "dpo_ipo_loss",
    "dpo_loss",
    "dpo_sigmoid_loss",
    "entropy",
    "gae",
    "group_advantages",
    "huber",
    "importance_ratio",
    "kl_estimator",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "lambda_returns",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "nstep_targets",
    "polyak_update",
    "ppo_clip_loss",
    "reinforce_loss",
    "reward_to_go",
    "rloo_advantages",
    "projected_logprobs",
    "selective_log_softmax",
    "td_target",
]
