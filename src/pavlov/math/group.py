"""Group-relative advantages for critic-free RL on language models: GRPO and RLOO.

Several responses are sampled per prompt; each response's scalar reward is compared with the
others of its *group* (same prompt) instead of with a learned value function.

Layout: ``rewards`` is ``(B,)`` with ``B = n_prompts * group_size`` and the responses of one
prompt contiguous, ``[p0 r0, p0 r1, ..., p0 r(G-1), p1 r0, ...]``, the order that
``prompt_ids.repeat_interleave(group_size, dim=0)`` produces. The advantage of a response is
then broadcast over its tokens by the trainer.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["group_advantages", "rloo_advantages"]


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """``(B,) -> (B // G, G)``, with the checks both estimators need."""
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (a group of one has no baseline), got {group_size}"
        )
    if rewards.dim() != 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got shape "
            f"{tuple(rewards.shape)}"
        )
    return rewards.reshape(-1, group_size)


def group_advantages(
    rewards: Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4
) -> Tensor:
    """GRPO advantages ``(r - mean_group) / (std_group + eps)``.

    Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, section 4.1.2 (outcome supervision). The
    standard deviation is the unbiased (Bessel-corrected) one, as ``torch.std`` and TRL's
    ``GRPOTrainer`` compute it; ``eps`` is TRL's 1e-4. ``scale_std=False`` keeps only the mean
    baseline, as Dr. GRPO recommends (Liu et al. 2025, arXiv:2503.20783): dividing by the
    standard deviation up-weights prompts that are nearly always or never solved.

    Args:
        rewards: ``(B,)`` one reward per response, groups contiguous (see module docstring).
        group_size: ``G``, responses per prompt, >= 2.
        scale_std: divide by the group standard deviation.
        eps: added to the standard deviation.

    Returns:
        ``(B,)`` advantages; a group with equal rewards gets 0 everywhere.
    """
    grouped = _groups(rewards, group_size)  # (N, G)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_std:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages ``r_i - mean_{j != i} r_j``.

    Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740 (after Kool et al. 2019):
    each response's baseline is the mean reward of the other ``G - 1`` responses to its prompt,
    which keeps the policy-gradient estimate unbiased. Equal to
    ``G / (G - 1) * (r_i - mean_group)``.

    Args:
        rewards: ``(B,)`` one reward per response, groups contiguous (see module docstring).
        group_size: ``G``, responses per prompt, >= 2.

    Returns:
        ``(B,)`` advantages; a group with equal rewards gets 0 everywhere.
    """
    grouped = _groups(rewards, group_size)  # (N, G)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)
