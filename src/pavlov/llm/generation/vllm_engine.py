"""The ``"vllm"`` rollout engine: sampling through a vLLM engine colocated in the trainer's
process, on its GPU, with the policy's weights pushed in before every generation.

What it does, in the order of a call (the engine contract of
:mod:`pavlov.llm.generation.engines`):

1. The first call starts one ``vllm.LLM`` per process on the policy's architecture: its
   ``config.json`` only, ``load_format="dummy"`` (no checkpoint is read) and no tokenizer
   (prompts go in as token ids, responses come back as token ids). It runs in-process
   (``distributed_executor_backend="external_launcher"``), so its model is reachable for
   weight loading; ``gpu_memory_utilization`` (:class:`VLLMOptions`, set from
   ``OnlineConfig.vllm_gpu_memory_utilization``) is its share of the GPU.
2. Every call first pushes the policy's effective weights
   (:func:`~pavlov.llm.models.loading.sampler_weights`): all of them on the first call, then
   only what training changes (a LoRA policy: each adapted linear with its update ``B A``
   merged *out of place*, so the trainer's weights never round-trip through merge / unmerge; the
   silent failure in a peer, verl #7495, was adapters that never reached the sampler), then
   clears vLLM's prefix cache (cached prompt states were computed by the old weights).
3. It samples with ``SamplingParams(n=1, temperature, top_p, top_k, max_tokens, logprobs=0,
   seed, stop_token_ids=eos)`` and reads each token's log-probability. The engine reports them
   as ``logprobs_mode="processed_logprobs"``: ``log_softmax(logits / temperature)`` of the
   sampled token, the quantity pavlov's trainers use. vLLM takes those *after* top-k / top-p
   truncation (renormalised over the kept tokens), pavlov's contract *before* it, so this engine
   refuses top-k / top-p (they are off by default; TRL documents the same mismatch).
4. The samples become a :class:`~pavlov.llm.generation.rollout.Rollout` exactly as the other
   engines build theirs (:func:`rollout_from_samples`, tested on CPU).

The API calls are those of Hugging Face TRL's colocated mode (``trl/generation/
vllm_generation.py``, vLLM 0.17-0.25) on vLLM 0.34, the release built for torch 2.13 (the
``vllm`` extra). **Not run in this project**: vLLM needs a CUDA GPU and its wheel, and neither
reaches this project's machines; the weight export (:func:`sampler_weights`) and the rollout
assembly are tested on CPU, the vLLM calls are not. Data-parallel sampling with vLLM (one engine
per rank) is refused for now.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pavlov.errors import ConfigError
from pavlov.llm.generation.rollout import Rollout, SamplingConfig, _finish
from pavlov.llm.models.loading import sampler_weights

__all__ = ["VLLMEngine", "VLLMOptions", "check_vllm", "configure_vllm", "rollout_from_samples",
           "vllm_generate"]


@dataclass(frozen=True)
class VLLMOptions:
    """How the colocated vLLM engine is started (fixed for the process)."""

    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM takes for its weights and KV cache (TRL's colocated
    default); the trainer keeps the rest."""
    max_model_len: int | None = None
    """Longest prompt + response vLLM plans for; None: the model config's."""
    model_impl: str = "auto"
    """vLLM's model implementation: ``"auto"`` (its own where it has one, else Transformers'),
    ``"vllm"`` or ``"transformers"``."""


def check_vllm() -> None:
    """One line (:class:`ConfigError`) unless the ``vllm`` package can be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ConfigError(
            "engine 'vllm' needs the vllm package, which runs on CUDA GPUs: pip install "
            "'pavlov[vllm]' there, or use engine='pavlov' or 'hf'") from None


def rollout_from_samples(prompt_ids: Tensor, attention_mask: Tensor,
                         samples: Sequence[tuple[Sequence[int], Sequence[float]]],
                         cfg: SamplingConfig) -> Rollout:
    """The :class:`Rollout` of sampled responses given as token ids and their log-probs, one
    ``(ids, logprobs)`` pair per prompt row (a response ends at its first EOS, inclusive, or at
    ``cfg.max_new_tokens``); the same layout every engine returns."""
    B = len(samples)
    if len(prompt_ids) != B:
        raise ValueError(f"{B} samples for {len(prompt_ids)} prompts")
    eos = set(cfg.eos_token_ids)
    rows, alive = [], torch.ones(B, dtype=torch.bool)
    for i, (ids, lps) in enumerate(samples):
        ids = list(ids)[: cfg.max_new_tokens]
        for t, token in enumerate(ids):
            if token in eos:  # the EOS belongs to the response; nothing after it does
                ids, alive[i] = ids[: t + 1], False
                break
        rows.append((ids, list(lps)[: len(ids)]))
    T = max((len(ids) for ids, _ in rows), default=0)
    responses = torch.full((B, max(T, 1)), cfg.pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, max(T, 1), dtype=torch.bool)
    logprobs = torch.zeros(B, max(T, 1), dtype=torch.float32)
    for i, (ids, lps) in enumerate(rows):
        responses[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = True
        logprobs[i, : len(ids)] = torch.tensor(lps, dtype=torch.float32)
    device = prompt_ids.device
    return _finish(prompt_ids, attention_mask, responses.to(device), mask.to(device),
                   logprobs.to(device), T, alive.to(device))


class VLLMEngine:
    """A vLLM engine in this process, kept across calls (one per process: vLLM takes the GPU
    memory it is given for its life). ``engine(model, prompt_ids, attention_mask, cfg)`` pushes
    ``model``'s weights and samples; see the module docstring."""

    def __init__(self, options: VLLMOptions | None = None) -> None:
        self.options = options or VLLMOptions()
        self.llm: Any = None
        self.architecture: dict[str, Any] | None = None
        self.synced: int | None = None  # id() of the model whose weights vLLM holds in full

    def __call__(self, model: nn.Module, prompt_ids: Tensor, attention_mask: Tensor | None,
                 cfg: SamplingConfig | None = None, record: bool = False) -> Rollout:
        cfg = SamplingConfig() if cfg is None else cfg
        if cfg.draw_rows:
            raise ConfigError("the vllm engine samples one process's batch: data-parallel "
                              "sampling takes engine='pavlov'")
        if cfg.temperature > 0 and (cfg.top_k or cfg.top_p < 1):
            raise ConfigError("the vllm engine reports log-probs after top-k / top-p "
                              "truncation, pavlov's trainers use them before it: set top_k=0 "
                              "and top_p=1, or use engine='pavlov' or 'hf'")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        self.push_weights(model)
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": row[keep.bool()].tolist()}
                   for row, keep in zip(prompt_ids, attention_mask, strict=True)]
        base = None if cfg.seed is None else cfg.seed * 1_000_003 + cfg.row_offset
        params = [SamplingParams(
            n=1, temperature=cfg.temperature, top_p=1.0, top_k=0, max_tokens=cfg.max_new_tokens,
            logprobs=0, seed=None if base is None else base + i, detokenize=False,
            stop_token_ids=list(cfg.eos_token_ids) or None,
        ) for i in range(len(prompts))]  # fmt: skip
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        samples = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            lps = [_sampled_logprob(position, token)
                   for position, token in zip(completion.logprobs or [], ids, strict=False)]
            if len(lps) != len(ids):
                raise RuntimeError("vLLM returned no log-prob for some sampled tokens")
            samples.append((ids, lps))
        return rollout_from_samples(prompt_ids, attention_mask, samples, cfg)

    def push_weights(self, model: nn.Module) -> None:
        """Start vLLM on the first call; load ``model``'s effective weights into it (all of
        them for a model it has not held, else what training changes); clear its prefix cache.
        """
        architecture = _architecture(model)
        if self.llm is None:
            self.llm = self._start(model, architecture)
        elif architecture != self.architecture:
            raise ConfigError("the vllm engine holds one model architecture per process; this "
                              "policy's config differs from the one it was started with")
        self.architecture = architecture
        full = self.synced != id(model)
        target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with torch.no_grad():
            for name, weight in sampler_weights(model, changed_only=not full):
                target.load_weights([(name, weight)])
        self.synced = id(model)
        self.llm.reset_prefix_cache()

    def _start(self, model: nn.Module, architecture: dict[str, Any]) -> Any:
        check_vllm()
        from vllm import LLM

        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ConfigError(f"the vllm engine runs on CUDA GPUs; the policy is on {device}")
        # one process of its own "world" unless a launcher set one: vLLM's in-process executor
        # reads these (TRL's colocated mode sets them the same way)
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "localhost")
        if os.environ.get("MASTER_PORT", "0") in ("", "0", "auto"):
            os.environ["MASTER_PORT"] = str(_free_port())
        config = _plain_config(model)
        dtype = (torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda")
                 else next(model.parameters()).dtype)
        self._dir = tempfile.TemporaryDirectory(prefix="pavlov-vllm-")
        config.save_pretrained(self._dir.name)  # the architecture; weights come from us
        o = self.options
        return LLM(
            model=self._dir.name, load_format="dummy", skip_tokenizer_init=True,
            dtype=str(dtype).removeprefix("torch."),
            gpu_memory_utilization=o.gpu_memory_utilization, max_model_len=o.max_model_len,
            model_impl=o.model_impl, distributed_executor_backend="external_launcher",
            seed=0, logprobs_mode="processed_logprobs", enable_prefix_caching=True,
        )  # fmt: skip


def _sampled_logprob(position: Any, token: int) -> float:
    """The sampled token's log-prob from one position of vLLM's ``logprobs`` (a dict of token
    id -> ``Logprob``; with ``logprobs=0`` it holds the sampled token)."""
    entry = position[token] if token in position else next(iter(position.values()))
    return float(entry.logprob)


def _plain_config(model: nn.Module) -> Any:
    """The policy's transformers config without the quantization record of a GGUF load."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.__class__.from_dict(base.config.to_dict())
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    return config


def _architecture(model: nn.Module) -> dict[str, Any]:
    config = _plain_config(model).to_dict()
    return {k: config.get(k) for k in ("architectures", "hidden_size", "num_hidden_layers",
                                       "vocab_size", "num_attention_heads")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


_ENGINE: VLLMEngine | None = None
_OPTIONS = VLLMOptions()


def configure_vllm(options: VLLMOptions) -> None:
    """The options this process's vLLM engine starts with (``OnlineConfig`` sets them); one
    line (:class:`ConfigError`) if the engine already runs with other ones."""
    global _OPTIONS
    if _ENGINE is not None and _ENGINE.llm is not None and _ENGINE.options != options:
        raise ConfigError("the vllm engine of this process already runs with other options "
                          f"({_ENGINE.options}); one engine per process")
    _OPTIONS = options
    if _ENGINE is not None and _ENGINE.llm is None:
        _ENGINE.options = options


def vllm_generate(model: nn.Module, prompt_ids: Tensor, attention_mask: Tensor | None,
                  cfg: SamplingConfig | None = None, record: bool = False) -> Rollout:
    """The engine function of ``engine='vllm'``: this process's :class:`VLLMEngine` (started
    with the :func:`configure_vllm` options on the first call; ``record`` is ignored)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = VLLMEngine(_OPTIONS)
    return _ENGINE(model, prompt_ids, attention_mask, cfg, record)
