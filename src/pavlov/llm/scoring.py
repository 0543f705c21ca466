"""Log-probabilities of given responses under a causal language model (policy or reference).

The token at column ``t`` is scored by the logits at column ``t - 1``. Only response columns are
projected onto the vocabulary: the model is called with ``logits_to_keep`` so that its LM head
runs on the last ``T_resp + 1`` positions, and :func:`~pavlov.math.sequence.selective_log_softmax`
gathers log-probs without a ``(B, T, V)`` log-softmax. ``chunk_size`` bounds the logits further
to ``(chunk_size, T_resp, V)`` by scoring that many sequences per forward pass (useful under
``torch.no_grad()``; with autograd each chunk's logits are kept for backward anyway).

Which columns are the response (argument ``response``):

* an ``int`` ``start``: columns ``start ..`` end, as in a :class:`~pavlov.llm.rollout.Rollout`
  (``start = rollout.prompt_length``, responses after left-padded prompts); columns whose
  ``attention_mask`` is 0 (pads after an EOS) count as outside the response;
* a ``(B, L)`` mask: true on response tokens, any layout (e.g. right-padded prompt+response
  pairs for DPO); the scored span starts at the first column where any row is true.

Results are ``(B, L - start)``, aligned with ``input_ids[:, start:]``, and 0 outside the
response. Position ids are ``cumsum(attention_mask) - 1`` as in :func:`pavlov.llm.rollout.generate`,
so the values equal the rollout engine's ``logprobs`` for its own samples (same temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pavlov.llm.rollout import position_ids_from_mask
from pavlov.math.masked import masked_mean, masked_sum
from pavlov.math.policy import entropy
from pavlov.math.sequence import projected_logprobs, selective_log_softmax

__all__ = [
    "TokenScores",
    "plain_lm_head",
    "score_tokens",
    "sequence_logprob",
    "token_logprobs",
    "token_logprobs_and_entropy",
]

Response = int | Tensor


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response: Response,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-token ``log_softmax(logits / temperature)`` of the response tokens, ``(B, T_resp)``.

    Differentiable (call under ``torch.no_grad()`` for a reference model or old log-probs). The
    model's train/eval mode is left as the caller set it.

    Args:
        model: a causal LM taking ``input_ids, attention_mask, position_ids, logits_to_keep``.
        input_ids: ``(B, L)`` prompt + response ids.
        attention_mask: ``(B, L)``, 1 on real tokens.
        response: start column (``int``) or ``(B, L)`` response mask; see the module docstring.
        temperature: the sampling temperature the log-probs should refer to, > 0.
        chunk_size: sequences per forward pass; ``None`` scores the whole batch at once.

    Returns:
        ``(B, L - start)`` float32 (or the logits' dtype if wider), 0 outside the response.
    """
    return _score(
        model, input_ids, attention_mask, response, temperature, chunk_size, False
    ).logprobs


def token_logprobs_and_entropy(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response: Response,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`token_logprobs` and the entropy of each response position's next-token
    distribution ``softmax(logits / temperature)``, both ``(B, T_resp)``, 0 outside the response.
    """
    out = _score(model, input_ids, attention_mask, response, temperature, chunk_size, True)
    return out.logprobs, out.entropy


def sequence_logprob(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response: Response,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    average: bool = False,
) -> Tensor:
    """``log pi(y | x)``: the sum of the response's token log-probs, ``(B,)`` (DPO's input).

    ``average=True`` divides by the number of response tokens instead (the length-normalised
    log-prob that TRL feeds its IPO loss; SimPO's reward). An empty response gives 0.
    """
    out = _score(model, input_ids, attention_mask, response, temperature, chunk_size, False)
    reduce = masked_mean if average else masked_sum
    return reduce(out.logprobs, out.mask, dim=-1)


def plain_lm_head(model: nn.Module) -> nn.Module | None:
    """The output projection when logits are exactly ``head(final hidden state)``; None for
    models that post-process logits (e.g. Gemma's soft-capping) or hide their head."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, nn.Linear) else None


# --- internals --------------------------------------------------------------------------------


def _response_span(response: Response, attention_mask: Tensor) -> tuple[int, Tensor]:
    """``(start, mask)``: first scored column and the ``(B, L - start)`` bool response mask."""
    B, L = attention_mask.shape
    if not isinstance(response, Tensor):
        start = int(response)
        mask = attention_mask[:, start:].bool()
    else:
        if response.shape != attention_mask.shape:
            raise ValueError(
                f"a response mask must be (B, L) like attention_mask {tuple(attention_mask.shape)}"
                f", got {tuple(response.shape)}"
            )
        columns = response.bool().any(dim=0).nonzero()
        start = int(columns[0]) if len(columns) else L
        mask = response[:, start:].bool() & attention_mask[:, start:].bool()
    if not 1 <= start <= L:
        raise ValueError(
            f"the response must start at a column in [1, {L}] (column 0 has no context), "
            f"got {start}"
        )
    return start, mask


@dataclass
class TokenScores:
    """What one scoring pass gives, each ``(B, L - start)`` and 0 outside the response."""

    logprobs: Tensor
    """Log-probs of the response tokens (with grad when enabled)."""
    mask: Tensor
    """Bool response mask."""
    entropy: Tensor | None = None
    """Entropy of each position's next-token distribution (``entropy=True``)."""
    hidden: Tensor | None = None
    """``(B, L - start, H)`` final-layer hidden state at the position that predicts each
    response token, i.e. the state *before* the token (``hidden=True``): a value head's input."""


def score_tokens(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response: Response,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    entropy: bool = False,
    entropy_grad: bool = False,
    hidden: bool = False,
) -> TokenScores:
    """One pass giving response log-probs and, on request, entropies and hidden states.

    The general form of :func:`token_logprobs`; the online RL trainers take the policy's
    log-probs, its entropy (a metric: ``entropy_grad=False`` computes it on detached logits,
    so no ``(B, T, V)`` softmax is kept for backward) and a value head's input from one forward.
    """
    return _score(
        model, input_ids, attention_mask, response, temperature, chunk_size, entropy,
        entropy_grad, hidden,
    )  # fmt: skip


def _score(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response: Response,
    temperature: float,
    chunk_size: int | None,
    with_entropy: bool,
    entropy_grad: bool = True,
    with_hidden: bool = False,
) -> TokenScores:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    start, mask = _response_span(response, attention_mask)
    B, L = input_ids.shape
    n = L - start
    if n == 0:
        empty = torch.zeros((B, 0), device=input_ids.device)
        hid = torch.zeros((B, 0, 0), device=input_ids.device) if with_hidden else None
        return TokenScores(empty, mask, empty if with_entropy else None, hid)
    positions = position_ids_from_mask(attention_mask)
    targets = input_ids[:, start:]  # (B, n)
    # The fused path projects only the scored positions' hidden states onto the vocabulary
    # (pavlov.math.sequence.projected_logprobs); an entropy bonus needs real logits.
    head = None if (with_entropy and entropy_grad) else plain_lm_head(model)
    logp_parts, ent_parts, hidden_parts = [], [], []
    step = chunk_size or B
    for first in range(0, B, step):
        rows = slice(first, first + step)
        out = model(
            input_ids=input_ids[rows],
            attention_mask=attention_mask[rows],
            position_ids=positions[rows],
            use_cache=False,
            logits_to_keep=1 if head is not None else n + 1,
            output_hidden_states=with_hidden or head is not None,
        )
        # The final layer's output (after the final norm) at the positions predicting the
        # response tokens: the fused projection's and a value head's input.
        final = out.hidden_states[-1][:, start - 1 : L - 1] if out.hidden_states else None
        if head is not None:
            keep = mask[rows]
            logp, ent = projected_logprobs(  # head: its own (maybe oneDNN) kernel forward
                final[keep], head.weight, targets[rows][keep], head.bias, temperature, head,
                with_entropy=with_entropy,
            )  # fmt: skip
            logp_parts.append(logp.new_zeros(keep.shape).masked_scatter(keep, logp))
            if with_entropy:
                ent_parts.append(ent.new_zeros(keep.shape).masked_scatter(keep, ent))
        else:
            logits = out.logits[:, -(n + 1) : -1]  # (b, n, V): columns start-1 .. L-2
            if temperature != 1.0:
                logits = logits.float() / temperature  # upcast first: bf16 / T loses digits
            logp_parts.append(selective_log_softmax(logits, targets[rows]))
            if with_entropy:
                ent_parts.append(entropy((logits if entropy_grad else logits.detach()).float()))
            del logits
        if with_hidden:
            hidden_parts.append(final)
        del out
    zero = torch.zeros((), device=input_ids.device)
    return TokenScores(
        logprobs=torch.where(mask, torch.cat(logp_parts), zero),
        mask=mask,
        entropy=torch.where(mask, torch.cat(ent_parts), zero) if with_entropy else None,
        hidden=torch.cat(hidden_parts) if with_hidden else None,
    )
