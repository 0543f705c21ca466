"""Rollout engines: one interface for sampling responses with per-token log-probs.

An engine is a function ``engine(model, prompt_ids, attention_mask, cfg, record=False) ->
Rollout`` (:class:`~pavlov.llm.generation.rollout.Rollout`: left-padded prompts, responses, masks
and the log-prob of every sampled token under the distribution it was drawn from, at the
sampling temperature and before top-k / top-p truncation). The trainers take one by name
(``OnlineConfig.engine``):

* ``"pavlov"``: :func:`pavlov.llm.generation.rollout.generate`, our KV-cache loop with the CPU
  fast path (the C decode step) and the rollout tape for the update's replay;
* ``"hf"``: Hugging Face ``model.generate`` (any architecture, any device), the log-probs taken
  from the logits it returns (``output_logits``), so they are the same quantity;
* ``"vllm"``: a vLLM engine colocated on the trainer's GPU, the policy's weights (LoRA merged
  out of place) pushed in before each generation
  (:mod:`pavlov.llm.generation.vllm_engine`; the ``vllm`` extra, CUDA only, not run in this
  project: no GPU with vLLM reaches it).

The engines sample the same distribution with their own random streams: with the same seed
they give different samples, each reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pavlov.errors import ConfigError
from pavlov.llm.generation.rollout import Rollout, SamplingConfig, _eval_mode, _finish, generate
from pavlov.llm.generation.vllm_engine import vllm_generate

Engine = Callable[..., Rollout]


def hf_generate(model: nn.Module, prompt_ids: Tensor, attention_mask: Tensor | None,
                cfg: SamplingConfig | None = None, record: bool = False) -> Rollout:
    """:func:`~pavlov.llm.generation.rollout.generate`'s contract through ``model.generate``
    (``record`` is ignored: there is no tape to keep). Seeded with ``cfg.seed`` in a forked RNG
    (the global random state is left as it was)."""
    cfg = SamplingConfig() if cfg is None else cfg
    if cfg.draw_rows:
        raise ConfigError("the hf engine cannot sample part of a batch with the batch's draws "
                          "(data parallel): use engine='pavlov'")
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    P = prompt_ids.shape[1]
    sample = cfg.temperature > 0
    with _eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        out = model.generate(
            input_ids=prompt_ids, attention_mask=attention_mask, do_sample=sample,
            temperature=cfg.temperature if sample else None, top_k=cfg.top_k if sample else None,
            top_p=cfg.top_p if sample else None, max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=0, eos_token_id=list(cfg.eos_token_ids) or None,
            pad_token_id=cfg.pad_token_id, return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
    responses = out.sequences[:, P:]  # (B, T)
    logits = torch.stack(out.logits, dim=1).float()  # (B, T, V), before any warper
    scaled = logits / cfg.temperature if sample and cfg.temperature != 1 else logits
    logprobs = torch.log_softmax(scaled, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    eos = torch.tensor(cfg.eos_token_ids, dtype=torch.long, device=responses.device)
    is_eos = torch.isin(responses, eos) if eos.numel() else torch.zeros_like(responses, dtype=bool)
    before = is_eos.long().cumsum(1) - is_eos.long()  # EOS tokens strictly before each column
    mask = before == 0  # up to and including the first EOS
    responses = torch.where(mask, responses, cfg.pad_token_id)
    return _finish(prompt_ids, attention_mask, responses, mask, torch.where(mask, logprobs, 0.0),
                   responses.shape[1], ~is_eos.any(1))  # fmt: skip


ENGINES: dict[str, Engine] = {"pavlov": generate, "hf": hf_generate, "vllm": vllm_generate}
"""Engine name -> the function (``OnlineConfig.engine``)."""
