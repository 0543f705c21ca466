"""Batched sampling from a causal language model with a KV cache: the rollout engine.

:func:`generate` samples responses to a batch of left-padded prompts and returns a
:class:`Rollout` holding everything an RLHF trainer needs next: the ids, the masks and the
log-probability of every sampled token under the distribution it was sampled from. One
prefill, then one token per step, instead of ``model.generate``, so the per-token log-probs come
for free and the loop stays small enough to read. Llama-family models (SmolLM2 included) step
through :mod:`pavlov.llm.cpu.decoder` (static KV cache, oneDNN-packed weights: ~1.5x faster on a
2-core CPU, same outputs); any other model through its own ``forward`` with ``past_key_values``.

Layout (the same everywhere in :mod:`pavlov.llm`): prompts are **left-padded** to a common
length ``P``, responses follow at columns ``P .. P+T-1``, so every row's response starts at the
same column. Position ids are ``cumsum(attention_mask) - 1`` (clamped at 0) and are passed
explicitly on every forward, so a padded row gets the positions it would have alone, for
absolute-position (GPT-2) and rotary (Llama) models alike.

Log-probs: ``Rollout.logprobs`` are ``log_softmax(logits / temperature)`` of the sampled token,
taken *before* top-k / top-p truncation (what TRL and vLLM report). They are therefore exactly
what :func:`pavlov.llm.scoring.logprobs.token_logprobs` recomputes at the same temperature, which
is what a PPO ratio or a KL penalty needs. With greedy decoding (``temperature=0``) they are the
temperature-1 log-probs of the chosen tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pavlov.devices import prime_vector_math
from pavlov.llm.cpu.decoder import fast_decoder
from pavlov.llm.cpu.kernels import onednn_bf16
from pavlov.llm.cpu.native import sample_rows
from pavlov.llm.cpu.tape import DecodeTape
from pavlov.llm.models.loading import position_ids_from_mask

__all__ = [
    "Rollout",
    "SamplingConfig",
    "generate",
    "left_pad",
    "position_ids_from_mask",
    "sample_next",
]


@dataclass
class SamplingConfig:
    """How :func:`generate` picks tokens and when it stops."""

    max_new_tokens: int = 32
    """Response length limit ``T``; the loop stops earlier once every row has emitted an EOS."""
    temperature: float = 1.0
    """Logits are divided by this before softmax; ``0`` means greedy (argmax) decoding."""
    top_k: int = 0
    """Sample among the ``top_k`` most likely tokens only; ``0`` turns the filter off."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with probability >= ``top_p`` (after
    top-k), in ``(0, 1]``; ``1`` turns the filter off (Holtzman et al. 2020)."""
    eos_token_ids: int | tuple[int, ...] = ()
    """Token id(s) that end a response; the EOS itself belongs to the response. Empty: never
    stop before ``max_new_tokens``. Normalised to a tuple."""
    pad_token_id: int = 0
    """Id written at response positions after a row's EOS (masked out in every mask)."""
    seed: int | None = 0
    """Seed of the per-call ``torch.Generator``: the same seed, model and prompts give the same
    samples. ``None`` draws a fresh seed."""
    fast: bool = True
    """Decode Llama-family models (Llama, Mistral, Qwen2, SmolLM2) with
    :mod:`pavlov.llm.cpu.decoder` (static KV cache, same outputs); ``False`` always drives the
    model's own ``forward``. Other models always take the generic path."""
    bf16_weights: bool = True
    """Under bf16 autocast on a CPU that multiplies bf16 fast (AVX-512 BF16), the fast decoder
    multiplies by bfloat16 copies of the weights (made once per call, LoRA merged first): half
    the bytes streamed per token, the policy as the bf16 training forward rounds it. ``False``
    (or float32 precision): float32 weights."""
    draw_rows: int = 0
    """Data parallel: the rows of the whole batch this one is a part of (``0``: this batch).
    Each step draws one uniform per row of the whole batch and uses rows ``row_offset ..``, so
    every row samples what it would in one process."""
    row_offset: int = 0
    """Where this batch's rows start in the whole batch (with ``draw_rows``)."""

    def __post_init__(self) -> None:
        ids = self.eos_token_ids
        self.eos_token_ids = (int(ids),) if isinstance(ids, int) else tuple(int(i) for i in ids)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    """Prompts and sampled responses of one :func:`generate` call.

    ``B`` rows, prompt length ``P`` (left-padded), response length ``T`` = the number of decode
    steps actually run (``<= max_new_tokens``; shorter when every row stopped early).
    """

    sequences: Tensor
    """``(B, P+T)`` long: prompt ids followed by response ids (pad after a row's EOS)."""
    attention_mask: Tensor
    """``(B, P+T)`` long: the prompt mask followed by ``response_mask``."""
    response_mask: Tensor
    """``(B, T)`` bool: true up to and including the first EOS, false after it."""
    logprobs: Tensor
    """``(B, T)`` float32: log-prob of each sampled token under the sampling distribution,
    ``log_softmax(logits / temperature)`` before top-k/top-p truncation (temperature 1 when
    greedy); 0 where ``response_mask`` is false."""
    prompt_length: int
    """``P``: responses start at this column of ``sequences``."""
    response_lengths: Tensor
    """``(B,)`` long: number of response tokens, EOS included."""
    eos_reached: Tensor
    """``(B,)`` bool: whether the row emitted an EOS (false: cut at ``max_new_tokens``)."""
    tape: DecodeTape | None = field(default=None, repr=False, compare=False)
    """With ``generate(..., record=True)`` where the fast decoder ran: the linears' outputs
    and logits of the call, for :mod:`pavlov.llm.cpu.tape`."""

    @property
    def responses(self) -> Tensor:
        """``(B, T)`` response ids, ``sequences[:, prompt_length:]``."""
        return self.sequences[:, self.prompt_length :]


# --- padding helpers --------------------------------------------------------------------------


def left_pad(
    sequences: Sequence[Sequence[int] | Tensor],
    pad_token_id: int,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Stack token-id lists of different lengths, padding on the left.

    Returns:
        ``(ids, attention_mask)``, both ``(B, max_len)`` long; the mask is 1 on real tokens.
    """
    if not sequences:
        raise ValueError("sequences must not be empty")
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


# --- sampling ---------------------------------------------------------------------------------


def sample_next(
    logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pick one token per row from next-token logits.

    Args:
        logits: ``(B, V)`` logits of the last position.
        cfg: temperature, top-k and top-p.
        generator: random source of the draws.

    Returns:
        ``(tokens, logprobs)``, both ``(B,)``: the chosen ids (long) and their float32
        ``log_softmax(logits / temperature)`` before truncation (temperature 1 when greedy).
    """
    logits = logits.float()
    if cfg.temperature == 0:
        tokens = logits.argmax(dim=-1)
        scaled = logits
    else:
        scaled = logits / cfg.temperature if cfg.temperature != 1 else logits
        B = scaled.shape[0]  # one float64 uniform per row (of the whole batch, data parallel)
        u = torch.rand((cfg.draw_rows or B, 1), dtype=torch.float64, device=scaled.device,
                       generator=generator)[cfg.row_offset : cfg.row_offset + B]  # fmt: skip
        if cfg.top_k > 0 or cfg.top_p < 1.0:
            tokens = _sample_truncated(scaled, cfg.top_k, cfg.top_p, generator, u)
        else:  # one C pass per row where available
            fast = sample_rows(scaled, u)
            if fast is not None:
                return fast
            tokens = _draw(torch.softmax(scaled, dim=-1), generator, u)
    chosen = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B,)
    return tokens, chosen - torch.logsumexp(scaled, dim=-1)


NUCLEUS_WIDTHS = (256, 4096)
"""Candidate counts tried in turn for a row's top-p nucleus, before the whole ranked
vocabulary: ranking 256 of SmolLM2's 49,152 logits (``topk``) costs ~1/20 of sorting them all,
and a peaked next-token distribution's top-p 0.9 nucleus holds far fewer tokens (a flat one
falls through to the next width)."""


def _sample_truncated(
    scaled: Tensor, top_k: int, top_p: float, generator: torch.Generator | None,
    u: Tensor | None = None,
) -> Tensor:
    """Sample after top-k then top-p filtering (the order of HF's logits warpers), ``(B,)``.

    Tokens are ranked by logit, ties by token id: bf16 logits tie often, and the draw for a
    given ``u`` must not depend on a sort's order among equals. With top-p, a row ranks only as
    many candidates (:data:`NUCLEUS_WIDTHS`) as certainly hold its nucleus: every token more
    likely than the last candidate is a candidate, so once those carry ``top_p`` of the mass,
    every other token lies outside the nucleus.
    """
    B, V = scaled.shape
    if u is None:
        u = torch.rand((B, 1), dtype=torch.float64, device=scaled.device, generator=generator)
    if 0 < top_k < V:  # top-k first: keep those k logits, in token-id order
        values, index = scaled.topk(top_k, dim=-1, sorted=False)
        index, by_id = index.sort(dim=-1)
        choice = _sample_truncated(values.gather(-1, by_id), 0, top_p, None, u)
        return index.gather(-1, choice[:, None])[:, 0]
    if top_p == 1.0:
        return _draw(scaled.softmax(dim=-1), None, u)  # no truncation: no ranking either
    tokens = torch.empty(B, dtype=torch.long, device=scaled.device)
    rows = torch.arange(B, device=scaled.device)  # the rows still to draw
    top = scaled.amax(dim=-1, keepdim=True)
    total = (scaled - top).exp().sum(dim=-1, keepdim=True)  # softmax's denominator, (B, 1)
    for width in (*(w for w in NUCLEUS_WIDTHS if w < V), V):
        values, index = _ranked(scaled[rows], width)  # (R, width)
        probs = (values - top[rows]).exp() / total[rows]
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        kept = probs.masked_fill(mass_before >= top_p, 0.0)  # the top one stays
        done = ((values > values[:, -1:]) * probs).sum(dim=-1) >= top_p
        if width == V:
            done.fill_(True)
        choice = _draw(kept[done], None, u[rows[done]])
        tokens[rows[done]] = index[done].gather(-1, choice[:, None])[:, 0]
        rows = rows[~done]
        if not len(rows):
            break
    return tokens


def _ranked(scaled: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row of ``scaled`` ``(B, V)`` and their ids, ``(B, k)``
    each: descending, equal values in ascending id order."""
    if k == scaled.shape[-1]:
        return scaled.sort(dim=-1, descending=True, stable=True)
    values, index = scaled.topk(k, dim=-1, sorted=False)
    index, by_id = index.sort(dim=-1)
    values, order = values.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)
    return values, index.gather(-1, order)


def _draw(probs: Tensor, generator: torch.Generator | None, u: Tensor | None = None) -> Tensor:
    """One inverse-CDF sample per row of ``probs`` ``(B, V)`` (>= 0, not necessarily
    normalised), ``(B,)``; ``u`` ``(B, 1)`` float64 uniforms, drawn from ``generator`` if None.

    Equivalent in distribution to ``torch.multinomial(probs, 1)`` but one uniform number per row:
    on CPU, ``multinomial`` over a 49k vocabulary costs ~9 ms for 8 rows, this ~0.3 ms. The CDF
    is accumulated in float64 (a float32 running sum over 50k entries drifts); ``right=True``
    means a zero-probability token is never chosen.
    """
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    if u is None:
        u = torch.rand((probs.shape[0], 1), dtype=cdf.dtype, device=cdf.device, generator=generator)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return index.clamp_(max=probs.shape[-1] - 1)


# --- the decode loop --------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while sampling; the previous train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def _decode_in_float32(model: nn.Module, cfg: SamplingConfig) -> bool:
    """Whether the fast decoder should run with bf16 autocast off: the weights are float32 on
    the CPU and autocast is on.

    Why: a decode step multiplies a few rows by every weight matrix, so it streams the weights
    whatever the precision, and autocast adds a bf16 copy of each matrix per token (SmolLM2 with
    LoRA, 8 rows x 24 tokens, AVX-512 CPU: 2.5 s under autocast vs 1.0 s in float32 with the C
    row kernel; 32 rows: 3.5 vs 2.8 s). Where bf16 is fast the decoder then multiplies by
    bf16 copies of the weights, made once per call (``SamplingConfig.bf16_weights``: half the
    bytes per token; SmolLM2 with LoRA on 2 AVX-512-BF16 cores, 24 tokens: 8 rows 0.88-1.0 ->
    0.59-0.67 s, 32 rows 2.3-2.4 -> 1.6-1.9 s); otherwise the samples come from the float32
    policy. Every log-prob a trainer uses is recomputed under its own precision.
    """
    return (
        cfg.fast
        and torch.is_autocast_enabled("cpu")
        and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    )


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Tensor,
    attention_mask: Tensor | None = None,
    cfg: SamplingConfig | None = None,
    record: bool = False,
) -> Rollout:
    """Sample a response for every prompt, with a KV cache, returning ids, masks and log-probs.

    One prefill forward over the prompts (logits of the last position only), then one forward
    per new token. Rows that have emitted an EOS keep being fed pad tokens (their outputs are
    ignored) until every row is done or ``max_new_tokens`` is reached. The model is put in eval
    mode for the call. Works with Hugging Face causal LMs (and PEFT wrappers of them): anything
    whose ``forward`` takes ``input_ids, attention_mask, position_ids, past_key_values,
    use_cache, logits_to_keep`` and returns ``.logits`` and ``.past_key_values``.

    Args:
        model: the policy.
        prompt_ids: ``(B, P)`` long, left-padded (see :func:`left_pad`).
        attention_mask: ``(B, P)``, 1 on real tokens; ``None`` means no padding.
        cfg: sampling settings; ``None`` is ``SamplingConfig()``.
        record: keep the fast decoder's linear outputs and logits (``Rollout.tape``) so that the
            policy's next forward over these sequences can replay them
            (:mod:`pavlov.llm.cpu.tape`); ``B x (P + T)`` rows of ~5k floats a layer.

    Returns:
        A :class:`Rollout`.
    """
    cfg = SamplingConfig() if cfg is None else cfg
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    _check_prompts(prompt_ids, attention_mask)
    prime_vector_math()  # the prefill's rotary tables are a first call (see its docstring)
    B, P = prompt_ids.shape
    T, device = cfg.max_new_tokens, prompt_ids.device
    generator = _new_generator(cfg.seed, device)

    responses = torch.full((B, T), cfg.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, T), dtype=torch.float32, device=device)
    response_mask = torch.zeros((B, T), dtype=torch.bool, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)  # no EOS emitted yet
    eos = torch.tensor(cfg.eos_token_ids, dtype=torch.long, device=device)
    # Without prompt padding no mask is needed at all (the cache only holds this batch's keys);
    # with it, the mask grows by a column of ones per step: what a row does after its EOS only
    # affects that row's own, discarded, outputs.
    mask = None
    if not bool(attention_mask.all()):
        mask = torch.cat([attention_mask.long(), attention_mask.new_ones((B, T)).long()], dim=1)

    positions = position_ids_from_mask(attention_mask)  # (B, P)
    float32 = _decode_in_float32(model, cfg)
    with _eval_mode(model), contextlib.ExitStack() as precision:
        if float32:
            precision.enter_context(torch.autocast("cpu", enabled=False))
        # a tape recorded in float32 is not what a bf16 update forward computes: none then
        fast = cfg.fast and device.type == "cpu"  # the CPU seam: plain PyTorch elsewhere
        bf16 = float32 and cfg.bf16_weights and onednn_bf16()  # bf16 copies of the weights
        decoder = fast_decoder(model, B, P + T, record and not float32, bf16) if fast else None
        if decoder is None:
            precision.close()  # the generic path runs under the caller's autocast
        if decoder is not None:
            logits = decoder.prefill(prompt_ids, attention_mask, positions)
        else:
            out = model(
                input_ids=prompt_ids,
                attention_mask=None if mask is None else mask[:, :P],
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            cache, next_position = out.past_key_values, positions[:, -1:] + 1  # (B, 1)
            logits = out.logits[:, -1, :]
        steps = 0
        while True:
            tokens, token_logprobs = sample_next(logits, cfg, generator)
            responses[:, steps] = torch.where(alive, tokens, cfg.pad_token_id)
            logprobs[:, steps] = torch.where(alive, token_logprobs, 0.0)
            response_mask[:, steps] = alive
            if eos.numel():
                alive &= ~torch.isin(tokens, eos)
            steps += 1
            if steps == T or not bool(alive.any()):
                break
            if decoder is not None:
                logits = decoder.step(responses[:, steps - 1])
                continue
            out = model(
                input_ids=responses[:, steps - 1 : steps],
                attention_mask=None if mask is None else mask[:, : P + steps],
                position_ids=next_position + (steps - 1),
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
    tape = None if decoder is None else decoder.tape
    del decoder, logits
    out = _finish(prompt_ids, attention_mask, responses, response_mask, logprobs, steps, alive)
    if tape is not None:
        tape.sequences = out.sequences
    out.tape = tape
    return out


def _check_prompts(prompt_ids: Tensor, attention_mask: Tensor) -> None:
    if prompt_ids.dim() != 2 or attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_ids must be (B, P) and attention_mask the same shape, got "
            f"{tuple(prompt_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if prompt_ids.shape[1] == 0 or not bool(attention_mask[:, -1].all()):
        raise ValueError(
            "prompts must be left-padded with at least one real token each: the last column of "
            "attention_mask must be all ones (see pavlov.llm.generation.rollout.left_pad)"
        )


def _finish(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    responses: Tensor,
    response_mask: Tensor,
    logprobs: Tensor,
    steps: int,
    alive: Tensor,
) -> Rollout:
    """Trim the preallocated ``(B, max_new_tokens)`` buffers to ``steps`` and assemble."""
    responses, response_mask = responses[:, :steps], response_mask[:, :steps]
    return Rollout(
        sequences=torch.cat([prompt_ids.long(), responses], dim=1),
        attention_mask=torch.cat([prompt_mask.long(), response_mask.long()], dim=1),
        response_mask=response_mask,
        logprobs=logprobs[:, :steps],
        prompt_length=prompt_ids.shape[1],
        response_lengths=response_mask.sum(dim=1),
        eos_reached=~alive,
    )
