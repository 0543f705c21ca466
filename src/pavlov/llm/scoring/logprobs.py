"""Log-probabilities of given responses under a causal language model (policy or reference).

The token at column ``t`` is scored by the logits at column ``t - 1``. Only response columns are
projected onto the vocabulary: the model is called with ``logits_to_keep`` so that its LM head
runs on the last ``T_resp + 1`` positions, and :func:`~pavlov.math.sequence.selective_log_softmax`
gathers log-probs without a ``(B, T, V)`` log-softmax. ``chunk_size`` bounds the logits further
to ``(chunk_size, T_resp, V)`` by scoring that many sequences per forward pass (useful under
``torch.no_grad()``; with autograd each chunk's logits are kept for backward anyway).

Which columns are the response (argument ``response``):

* an ``int`` ``start``: columns ``start ..`` end, as in a
:class:`~pavlov.llm.generation.rollout.Rollout`
  (``start = rollout.prompt_length``, responses after left-padded prompts); columns whose
  ``attention_mask`` is 0 (pads after an EOS) count as outside the response;
* a ``(B, L)`` mask: true on response tokens, any layout (e.g. right-padded prompt+response
  pairs for DPO); the scored span starts at the first column where any row is true.

Shared prompts: with an ``int`` start, rows that repeat a prompt (GRPO and RLOO score G
completions per prompt) can run that prompt once (``share_prompts``, on the fused path). Two ways:

* packed (the default where it pays): one forward over one row per distinct prompt holding the
  prompt followed by all its responses, ``[prompt | response 1 | ... | response G]``, with a
  block mask (each response sees the prompt and itself) and the rows' own position ids; token
  rows ``B L -> U (P + G n)`` in one call. The masked attention spans ``P + G n`` columns, so it
  is used while the projection rows saved outweigh the extra attention (:func:`_packing_pays`);
* cached: a first forward over the distinct prompts returns their key/value cache, which is
  copied to every row of the prompt, and a second forward runs the responses against it; used
  when packing does not pay and at least :data:`SHARE_MIN_ROWS` prompt rows are saved (the
  second call streams the weights again; an offloaded model maps its blocks again, which costs
  page-table work, not a copy).

Either way gradients reach the prompt positions through their keys and values, so values and
gradients equal the full forward's to float32 round-off while the prompt columns are computed
G times fewer (the shared-prefix forward of Prefix Grouper, Liu et al. 2025, for the same GRPO
setting).

Results are ``(B, L - start)``, aligned with ``input_ids[:, start:]``, and 0 outside the
response. Position ids are ``cumsum(attention_mask) - 1`` as in
:func:`pavlov.llm.generation.rollout.generate`,
so the values equal the rollout engine's ``logprobs`` for its own samples (same temperature).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pavlov.llm.cpu.tape import DecodeTape, replaying
from pavlov.llm.generation.rollout import position_ids_from_mask
from pavlov.llm.models.loading import distinct_rows
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
    models that post-process logits (e.g. Gemma's soft-capping) or hide their head, and where
    DeepSpeed ZeRO-3 partitions the head's weight (gathered only inside the model's forward, so
    the model computes the logits itself)."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or hasattr(head.weight, "ds_id"):
        return None
    return head


# --- internals --------------------------------------------------------------------------------

SHARE_MIN_ROWS = 128
"""Prompt token rows a shared-prompt pass must save, ``(B - distinct prompts) x prompt
length``, to be used: the extra forward call streams all the weights once more with few rows
(~0.1 s for SmolLM2-135M in float32 on a 2-core CPU, about what 50-60 rows of a large-batch
forward cost), so short prompts (the 2 x 4 x 9-token GRPO benchmark saves 54 rows) measured no
faster with it and long ones (hundreds of tokens, G = 8) save most of the prompt columns."""

PACK_ATTENTION_COST = 3
"""Seconds per FLOP of the packed (masked) attention relative to the projections, measured:
with SmolLM2-135M, 2 prompts x 4 of 64 + 128 tokens, fp32 on 2 cores, packing saved 7% of a
learn pass where 25% fewer projection rows predicted ~25%, putting masked attention, forward and
backward, at ~50 GFLOP/s against ~120 for the GEMMs (``benchmarks/shared_prompts.py``)."""

PACK_SCORE_BYTES = 256 * 2**20
"""Largest float32 attention score matrix (all groups and heads) a packed forward may need."""

# ``logits_to_keep`` as an empty index tensor: the LM head runs on no position (the fused path
# projects the hidden states itself; ``1`` would still project B rows, ~20 ms on SmolLM2).
NO_LOGITS = torch.zeros(0, dtype=torch.long)


def _prompt_groups(ids: Tensor, mask: Tensor, start: int) -> tuple[Tensor, Tensor] | None:
    """``(one, inverse)`` of the rows' prompts (columns ``< start``, ids and mask) as in
    :func:`~pavlov.llm.models.loading.distinct_rows`; None when no prompt repeats or there is no
    response column."""
    if start >= ids.shape[1]:
        return None
    return distinct_rows(torch.cat([ids[:, :start], mask[:, :start].to(ids.dtype)], dim=1))


def _packing_pays(model: nn.Module, B: int, U: int, start: int, n: int, width: int) -> bool:
    """Whether one packed forward (:func:`_packed_prompt_states`) costs less than the plain one.

    Per layer and token row the projections cost about ``2 * 12 d^2`` FLOPs (a transformer
    layer holds ~12 d^2 weights), so packing saves ``24 d^2 (B - U) start``; its attention runs
    a masked ``width x width`` score matrix per group (no causal block skipping) against about
    half of ``L x L`` per row, ``4 d`` FLOPs per score, weighted by :data:`PACK_ATTENTION_COST`
    (masked SDPA runs slower per FLOP than the projections' GEMMs). Off for attention
    implementations other than SDPA (the boolean mask format), when a float score matrix per
    head would exceed :data:`PACK_SCORE_BYTES` (SDPA's math path materialises it) and for rows
    longer than a sliding attention window (the custom mask replaces the model's own)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not d or not heads or U * heads * width * width * 4 > PACK_SCORE_BYTES:
        return False
    window = getattr(config, "sliding_window", None)
    if window and start + n > window:  # the custom mask would drop the model's window
        return False
    saved = 24 * d * d * (B - U) * start
    extra = PACK_ATTENTION_COST * 4 * d * (U * width * width - B * (start + n) ** 2 / 2)
    return saved > extra


def _packed_prompt_states(
    model: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor, start: int,
    groups: tuple[Tensor, Tensor], replay: tuple[DecodeTape, Tensor] | None = None,
) -> Tensor | None:  # fmt: skip
    """Final hidden states ``(B, L - start, H)`` at columns ``start - 1 .. L - 2`` from one
    forward over ``U`` packed rows: each distinct prompt once, followed by the responses of all
    the rows that repeat it, side by side (``[prompt | response 1 | ... | response G]``).

    A block mask lets a prompt column see the prompt's earlier columns and a response column
    see the prompt and its own response's earlier columns; position ids are the rows' own, so
    each response is computed exactly as in its row (to float32 round-off) while the prompt's
    columns run once per group. Token rows ``B L -> U (start + G n)``: the benchmark's 2 x 4 x
    (9 + 32) GRPO batch runs 274 rows instead of 328, in one call (one weight stream), unlike
    the cache path. None when it does not pay (:func:`_packing_pays`). ``replay``: a tape and
    the ``(B, L)`` tape rows of the columns (:mod:`pavlov.llm.cpu.tape`) to take the linear
    outputs from."""
    one, inverse = groups
    B, L = ids.shape
    U, n = len(one), L - start
    # slot of each row among the rows of its prompt (0 .. G - 1), in row order
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=U)
    slot = torch.empty_like(inverse)
    slot[order] = torch.arange(B, device=ids.device) - (counts.cumsum(0) - counts)[inverse[order]]
    G = int(counts.max())
    width = start + G * n
    if not _packing_pays(model, B, U, start, n, width):
        return None
    cols = start + slot[:, None] * n + torch.arange(n, device=ids.device)  # (B, n) packed column
    where = (inverse[:, None], cols)

    def pack(x: Tensor) -> Tensor:  # (B, L) -> (U, width), 0 where no row has a response
        out = x.new_zeros((U, width))
        out[:, :start] = x[one, :start]
        out[where] = x[:, start:]
        return out

    valid = pack(mask).bool()  # (U, width)
    segment = torch.full((width,), -1, device=ids.device)  # -1: prompt; g: response slot g
    segment[start:] = torch.arange(G, device=ids.device).repeat_interleave(n)
    column = torch.arange(width, device=ids.device)
    visible = (column[None, :] <= column[:, None]) & (  # (query, key): causal and either a
        (segment[None, :] < 0) | (segment[None, :] == segment[:, None])  # prompt key or the
    )  # query's own response
    allowed = visible[None] & valid[:, None, :]  # (U, query, key)
    # a query with no key (a left pad) sees itself: an empty row would give NaN, which reaches
    # the weight gradients through 0 * NaN
    allowed |= torch.eye(width, dtype=torch.bool, device=ids.device) & ~allowed.any(-1, True)
    replayed = contextlib.nullcontext()
    if replay is not None:  # packed padding columns read the tape's zero row
        tape, rows = replay
        replayed = replaying(tape, pack(rows - tape.zero_row) + tape.zero_row)
    with replayed:
        out = model(
            input_ids=pack(ids), attention_mask=allowed[:, None], position_ids=pack(positions),
            use_cache=False, logits_to_keep=NO_LOGITS, output_hidden_states=True,
        )  # fmt: skip
    states = out.hidden_states[-1]  # (U, width, H)
    # response column j of row b is predicted by the prompt's last column (j = 0) or by the
    # row's previous response column
    prev = torch.cat([cols.new_full((B, 1), start - 1), cols[:, :-1]], dim=1)  # (B, n)
    return states.reshape(U * width, -1)[inverse[:, None] * width + prev]


def _shared_prompt_states(
    model: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor, start: int,
    groups: tuple[Tensor, Tensor],
) -> Tensor | None:  # fmt: skip
    """Final hidden states ``(B, L - start, H)`` at columns ``start - 1 .. L - 2`` with each
    distinct prompt (columns ``< start``) run once and its key/value cache copied to its rows;
    None when it saves fewer than :data:`SHARE_MIN_ROWS` rows or the model does not return a
    key/value cache."""
    B, L = ids.shape
    one, inverse = groups
    if (B - len(one)) * start < SHARE_MIN_ROWS:
        return None
    name = cache_argument(model)
    head = model(
        input_ids=ids[one, :start], attention_mask=mask[one, :start],
        position_ids=positions[one, :start], use_cache=True, logits_to_keep=NO_LOGITS,
        output_hidden_states=True,
    )  # fmt: skip
    cache = getattr(head, name, None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(inverse)  # (U, ...) -> (B, ...): differentiable gather
    tail = model(
        input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[:, start:],
        use_cache=True, logits_to_keep=NO_LOGITS, output_hidden_states=True, **{name: cache},
    )  # fmt: skip
    last = head.hidden_states[-1][:, -1:][inverse]  # (B, 1, H): predicts the first response token
    return torch.cat([last, tail.hidden_states[-1][:, : L - start - 1]], dim=1)


def _prompt_states(
    model: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor, start: int,
    replay: tuple[DecodeTape, Tensor] | None = None,
) -> Tensor | None:  # fmt: skip
    """The responses' final hidden states with each repeated prompt run once: packed into one
    forward when that pays, else through a shared key/value cache; None when no prompt
    repeats or neither pays. An offloaded reference takes the same path as the policy it was
    copied from, so that both compute the same function the same way (KL exactly 0 before any
    update)."""
    groups = _prompt_groups(ids, mask, start)
    if groups is None:
        return None
    states = _packed_prompt_states(model, ids, mask, positions, start, groups, replay)
    if states is None and replay is not None:
        return None  # the plain forward replays; the cache path would not
    if states is None:
        states = _shared_prompt_states(model, ids, mask, positions, start, groups)
    return states


def cache_argument(model: nn.Module) -> str:
    """What the model's forward calls its key/value cache (argument and output field):
    ``cache`` in recent transformers 5.x, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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
    share_prompts: bool = True,
    replay: DecodeTape | None = None,
) -> TokenScores:
    """One pass giving response log-probs and, on request, entropies and hidden states.

    The general form of :func:`token_logprobs`; the online RL trainers take the policy's
    log-probs, its entropy (a metric: ``entropy_grad=False`` computes it on detached logits,
    so no ``(B, T, V)`` softmax is kept for backward) and a value head's input from one forward.
    ``share_prompts``: run a prompt that several rows repeat once (module docstring: packed, or
    through a shared cache); ``False`` always runs every row.
    ``replay``: the :class:`~pavlov.llm.cpu.tape.DecodeTape` of the ``generate(..., record=True)``
    call that sampled these sequences with ``model``'s current weights: the forward then takes
    its linear outputs and logits from it instead of computing them (same values to float32
    round-off, same gradients); ignored where :meth:`~pavlov.llm.cpu.tape.DecodeTape.usable`
    says no or with ``chunk_size`` below ``B``.
    """
    return _score(
        model, input_ids, attention_mask, response, temperature, chunk_size, entropy,
        entropy_grad, hidden, share_prompts, replay,
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
    share_prompts: bool = True,
    replay: DecodeTape | None = None,
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
    tape = sources = None  # a replay runs the whole batch in one forward
    if replay is not None and head is not None and step >= B and isinstance(response, int):
        tape = replay if replay.usable(model, input_ids, start) else None
        sources = None if tape is None else tape.sources(attention_mask)
    for first in range(0, B, step):
        rows = slice(first, first + step)
        shared = None
        if head is not None and share_prompts and isinstance(response, int):
            shared = _prompt_states(
                model, input_ids[rows], attention_mask[rows], positions[rows], start,
                None if tape is None else (tape, sources),
            )  # fmt: skip
        if shared is not None:
            final, out = shared, None
        else:
            replayed = contextlib.nullcontext() if tape is None else replaying(tape, sources)
            with replayed:
                out = model(
                    input_ids=input_ids[rows],
                    attention_mask=attention_mask[rows],
                    position_ids=positions[rows],
                    use_cache=False,
                    logits_to_keep=NO_LOGITS if head is not None else n + 1,
                    output_hidden_states=with_hidden or head is not None,
                )
            # The final layer's output (after the final norm) at the positions predicting the
            # response tokens: the fused projection's and a value head's input.
            final = out.hidden_states[-1][:, start - 1 : L - 1] if out.hidden_states else None
        if head is not None:
            keep = mask[rows]
            project = head if tape is None else lambda _h, keep=keep: tape.head(keep)
            logp, ent = projected_logprobs(  # head: its own (maybe oneDNN) kernel forward
                final[keep], head.weight, targets[rows][keep], head.bias, temperature, project,
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
