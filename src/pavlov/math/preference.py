"""Preference losses: a Bradley-Terry reward-model loss and the DPO family.

Shapes: every input is ``(B,)``, one entry per preference pair (chosen ``w``, rejected ``l``).
The DPO losses take *sequence* log-probabilities, ``log pi(y | x)`` summed over the response
tokens (:func:`pavlov.llm.scoring.logprobs.sequence_logprob`), of the policy and of the frozen
reference model; reference log-probs are treated as constants (detached) inside the losses.

Every DPO variant is a function of the same arguments, picked by name from :data:`DPO_LOSSES`
(``loss_fn = DPO_LOSSES[cfg.loss_type]``), and of the log-ratio difference

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)).

Losses are means over the batch and return ``(loss, metrics)``; ``metrics`` holds detached
scalars named as TRL logs them (``rewards/chosen``, ``rewards/accuracies``, ...), where the
implicit reward of a response is ``beta * (log pi(y) - log ref(y))`` (Rafailov et al. 2023, eq. 5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DPO_LOSSES",
    "bradley_terry_loss",
    "dpo_hinge_loss",
    "dpo_ipo_loss",
    "dpo_loss",
    "dpo_sigmoid_loss",
]

Metrics = dict[str, Tensor]


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None
) -> tuple[Tensor, Metrics]:
    """Reward-model loss ``-log sigmoid(r_w - r_l - m)``, averaged over pairs.

    The negative log-likelihood of the Bradley-Terry model ``P(w > l) = sigmoid(r_w - r_l)``
    (Bradley & Terry 1952; Ouyang et al. 2022, InstructGPT, eq. 1). The optional ``margin`` ``m``
    asks for a larger reward gap on pairs rated as clearly different (Touvron et al. 2023,
    Llama 2, eq. 2).

    Args:
        chosen_rewards: ``(B,)`` scalar rewards of the preferred responses, with grad.
        rejected_rewards: ``(B,)`` rewards of the rejected responses.
        margin: ``(B,)`` or a float, or ``None`` for no margin.

    Returns:
        ``(loss, {"loss", "accuracy", "margin"})``: ``accuracy`` is the share of pairs with
        ``r_w > r_l`` (ties count as wrong), ``margin`` the mean of ``r_w - r_l``.
    """
    _check_pairs(chosen_rewards, rejected_rewards)
    diff = chosen_rewards - rejected_rewards  # (B,)
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "accuracy": (diff > 0).float().mean(),
            "margin": diff.mean(),
        }
    return loss, metrics


def dpo_sigmoid_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """DPO loss ``-log sigmoid(beta * h)`` (Rafailov et al. 2023, arXiv:2305.18290, eq. 7).

    With ``label_smoothing = eps`` each label is taken to be flipped with probability ``eps``
    (conservative DPO, Mitchell 2023, "A note on DPO with noisy preferences"):

        L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h).

    At ``eps = 0.5`` the preference carries no information: the loss is symmetric in ``h`` and
    minimised (at ``ln 2``) by ``h = 0``. At the first step, when the policy equals the
    reference, ``h = 0`` and the loss is ``ln 2`` for every ``eps``.

    Args:
        pi_chosen, pi_rejected: ``(B,)`` policy sequence log-probs, with grad.
        ref_chosen, ref_rejected: ``(B,)`` reference sequence log-probs; detached.
        beta: inverse temperature of the implicit reward (KL strength), > 0; typically 0.1.
        label_smoothing: ``eps`` in ``[0, 0.5]``.

    Returns:
        ``(loss, metrics)``, see :func:`_dpo_metrics`.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    h = _log_ratio_diff(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
    if label_smoothing > 0.0:
        losses = losses - label_smoothing * F.logsigmoid(-beta * h)
    return _finish(losses, pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)


def dpo_ipo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """IPO loss ``(h - 1 / (2 beta))^2`` (Azar et al. 2023, arXiv:2310.12036).

    A squared loss regresses ``h`` onto the finite target ``1 / (2 beta)`` instead of pushing it
    to infinity as the sigmoid loss does on deterministic preferences. ``beta`` plays the role of
    the paper's ``tau``. TRL feeds IPO *length-averaged* log-probs (sum / number of response
    tokens); pass those to reproduce it, or summed log-probs for the paper's form.

    Args:
        as :func:`dpo_sigmoid_loss`; ``label_smoothing`` must be 0 (it is a sigmoid-loss option
        and is accepted only so that every entry of :data:`DPO_LOSSES` has one signature).
    """
    _no_smoothing(label_smoothing, "ipo")
    h = _log_ratio_diff(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return _finish(losses, pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)


def dpo_hinge_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Hinge loss ``relu(1 - beta * h)`` (SLiC, Zhao et al. 2023, arXiv:2305.10425).

    The calibration loss of SLiC-HF with the reference log-ratio folded in, as in TRL's
    ``loss_type="hinge"``; ``1 / beta`` is the margin ``delta``. Zero once ``h >= 1 / beta``.

    Args:
        as :func:`dpo_ipo_loss`.
    """
    _no_smoothing(label_smoothing, "hinge")
    h = _log_ratio_diff(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    losses = torch.relu(1.0 - beta * h)
    return _finish(losses, pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)


DpoLoss = Callable[..., tuple[Tensor, Metrics]]

DPO_LOSSES: dict[str, DpoLoss] = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": dpo_ipo_loss,
    "hinge": dpo_hinge_loss,
}


def dpo_loss(name: str) -> DpoLoss:
    """Look up ``DPO_LOSSES[name]``, with a ``ValueError`` naming the choices."""
    try:
        return DPO_LOSSES[name]
    except KeyError:
        raise ValueError(f"loss_type must be one of {sorted(DPO_LOSSES)}, got {name!r}") from None


# --- helpers ----------------------------------------------------------------------------------


def _check_pairs(chosen: Tensor, rejected: Tensor) -> None:
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen and rejected must have one shape, got {tuple(chosen.shape)} and "
            f"{tuple(rejected.shape)}"
        )


def _no_smoothing(label_smoothing: float, name: str) -> None:
    if label_smoothing != 0.0:
        raise ValueError(
            f"label_smoothing applies to the 'sigmoid' DPO loss only; got {label_smoothing} "
            f"for {name!r}"
        )


def _log_ratio_diff(
    pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """``h = (pi_w - ref_w) - (pi_l - ref_l)``, ``(B,)``; the reference terms are detached."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    for other in (pi_rejected, ref_chosen, ref_rejected):
        _check_pairs(pi_chosen, other)
    return (pi_chosen - ref_chosen.detach()) - (pi_rejected - ref_rejected.detach())


def _finish(
    losses: Tensor,
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, Metrics]:
    """Mean loss and the DPO metrics of TRL's ``DPOTrainer``.

    ``rewards/chosen`` and ``rewards/rejected`` are the mean implicit rewards
    ``beta * (log pi - log ref)``; ``rewards/accuracies`` the share of pairs whose chosen reward
    is strictly larger; ``rewards/margins`` the mean reward gap ``beta * h``.
    """
    loss = losses.mean()
    with torch.no_grad():
        chosen = beta * (pi_chosen - ref_chosen)  # (B,)
        rejected = beta * (pi_rejected - ref_rejected)
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
        }
    return loss, metrics
