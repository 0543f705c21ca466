"""A scalar reward head on a causal LM or an encoder: the model, its inputs, saving and loading.

* ``kind="causal"``: the hidden state of the last real token (right padding; the appended eos)
  of the decoder's final layer -> ``Linear(H, 1)``. The backbone may carry LoRA adapters.
* ``kind="encoder"`` (e.g. the embedded all-MiniLM-L6-v2): the mean of the last hidden states
  over real tokens (its sentence-embedding pooling, without the L2 norm) -> ``Linear(H, 1)``.

Other poolings (``pooling``, :data:`POOLINGS`): ``"cls"`` (an encoder's first token, BERT's
classification read-out) and ``"max"`` (the largest value of each feature over real tokens).
A mean rewards a *density* of sentiment: every neutral token (the film's title, a plot word)
dilutes the praise, so an RL policy learns to drop them for strings of adjectives; the first
token's attention, or a max, is not diluted that way (docs/benchmarks.md, issue 17).

The text scored is ``prompt + completion`` for both kinds (a causal backbone tokenizes them
separately and appends eos, exactly as :func:`pavlov.llm.data.datasets.tokenize_sft` does). A model
trained pointwise on bare texts (``use_prompt=False``) scores the completion alone.

Saved directory (:func:`save_reward_model`, atomic)::

    reward_config.json        {"format": "pavlov-reward-model", "kind", "pooling", ...}
    reward_head.safetensors   head weight (1, H) [and bias]
    config.json + model.safetensors | adapter_config.json + adapter_model.safetensors
    tokenizer files

The backbone loads with transformers (``AutoModel`` / ``AutoModelForCausalLM``) or peft;
:func:`load_reward_model` rebuilds the scorer the RL trainers use as a reward function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pavlov.devices import module_device, resolve_device
from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.data.datasets import SFTExample, tokenize_sft
from pavlov.llm.models.loading import ensure_pad_token, is_peft_model, pad_right

FORMAT = "pavlov-reward-model"
CONFIG_FILE = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"
KINDS = {"causal": "last", "encoder": "mean"}  # kind -> its default pooling
POOLINGS = {"causal": ("last", "mean", "max"), "encoder": ("mean", "cls", "max")}
"""The poolings each kind allows (a decoder's first token has seen nothing but itself)."""


def resolve_pooling(kind: str, pooling: str) -> str:
    """The pooling ``pooling`` means for a ``kind`` backbone (``"auto"``: the kind's own);
    :class:`ConfigError` naming it where the kind does not allow it."""
    if kind not in KINDS:
        raise PavlovError(f"reward model kind must be one of {sorted(KINDS)}, got {kind!r}")
    pooling = KINDS[kind] if pooling == "auto" else pooling
    if pooling not in POOLINGS[kind]:
        raise ConfigError(
            f"pooling: {pooling!r} does not apply to a {kind} reward model "
            f"(one of {', '.join(POOLINGS[kind])}, or auto)"
        )
    return pooling


class RewardModel(nn.Module):
    """``r(x) = w . pool(h(x)) [+ b]``: backbone, pooling, linear head; ``(B, T) -> (B,)``."""

    def __init__(
        self, backbone: nn.Module, kind: str, bias: bool = False, pooling: str = "auto"
    ) -> None:
        super().__init__()
        self.backbone, self.kind, self.pooling = backbone, kind, resolve_pooling(kind, pooling)
        self.head = nn.Linear(backbone.config.hidden_size, 1, bias=bias)  # GPT-2: n_embd alias
        nn.init.normal_(self.head.weight, std=0.02)  # transformers' initializer_range
        if bias:
            nn.init.zeros_(self.head.bias)

    def body(self) -> nn.Module:
        """The module returning ``last_hidden_state``: the decoder of a causal LM (below its LM
        head, inside any peft wrapper), or the encoder itself."""
        if self.kind == "encoder":
            return self.backbone
        lm = self.backbone.get_base_model() if is_peft_model(self.backbone) else self.backbone
        return lm.base_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Rewards ``(B,)`` float32 of right-padded ``(B, T)`` inputs."""
        hidden = self.body()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.long()  # (B, T)
        if self.pooling == "last":
            last = (mask.sum(-1) - 1).clamp(min=0)  # (B,)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, H): [CLS], attending to every real token
        elif self.pooling == "max":
            pad = mask.unsqueeze(-1) == 0  # (B, T, 1)
            pooled = hidden.masked_fill(pad, torch.finfo(hidden.dtype).min).amax(1)  # (B, H)
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(pooled).squeeze(-1).float()


def freeze_unused(rm: RewardModel) -> None:
    """Freeze weights the reward never uses, so that every trainable parameter gets a gradient:
    an untied LM head (causal) and BERT's CLS pooler (encoder)."""
    lm = rm.backbone.get_base_model() if is_peft_model(rm.backbone) else rm.backbone
    if rm.kind == "causal":
        out, inp = lm.get_output_embeddings(), lm.get_input_embeddings()
        if out is not None and out.weight is not inp.weight:
            out.weight.requires_grad_(False)
    elif getattr(lm, "pooler", None) is not None:
        lm.pooler.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Inputs


def encode(
    tokenizer,
    kind: str,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    *,
    chat: bool = False,
    sources: Sequence[str] | None = None,
) -> list[list[int]]:
    """Token ids of ``prompt + completion`` for each pair, at most ``max_length`` long.

    Causal: prompt and completion tokenized separately, eos appended to plain text (what
    :func:`~pavlov.llm.data.datasets.tokenize_sft` does). Encoder: the concatenated text,
    truncated. A
    prompt that leaves no room for its completion raises :class:`PavlovError` naming its source.
    """
    sources = list(sources) if sources is not None else [f"example {i + 1}" for i in range(
        len(prompts))]  # fmt: skip
    if kind == "causal":
        examples = [
            SFTExample(p, c, chat, s) for p, c, s in zip(prompts, completions, sources, strict=True)
        ]
        return [list(f.input_ids) for f in tokenize_sft(examples, tokenizer, max_length)]
    out = []
    for p, c, s in zip(prompts, completions, sources, strict=True):
        if p and len(tokenizer(p)["input_ids"]) >= max_length:
            raise PavlovError(f"{s}: prompt leaves no room for a reply within {max_length} tokens")
        out.append(list(tokenizer(p + c, truncation=True, max_length=max_length)["input_ids"]))
    return out


def collate_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad id lists: ``(input_ids, attention_mask)``, each ``(B, T)``."""
    ids, mask, _ = pad_right(rows, pad_id)
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Saving and loading


def save_reward_model(
    rm: RewardModel, tokenizer, out_dir: str | Path, meta: dict, *, merge: bool = False,
    weights: dict | None = None,
) -> Path:
    """Write ``rm`` (backbone, head, :data:`CONFIG_FILE`) into ``out_dir`` atomically.

    ``meta`` holds ``mode``, ``max_length``, ``chat``, ``use_prompt`` and ``base_model`` (where
    a LoRA backbone's base weights load from). ``merge=True`` merges LoRA adapters into a copy.
    ``weights``: ``rm``'s whole state dict when the live model is sharded (gathered to rank 0,
    :mod:`pavlov.llm.trainers.sharding`); ``merge`` is refused then.
    """
    import copy

    from safetensors.torch import save_file

    from pavlov.llm.models.assets import atomic_dir

    backbone, lora = rm.backbone, is_peft_model(rm.backbone)
    backbone_weights, head = None, rm.head.state_dict()
    if weights is not None:
        if merge and lora:
            raise PavlovError("merge_lora with a sharded model: save the adapters, merge later")
        backbone_weights = {k.removeprefix("backbone."): v for k, v in weights.items()
                            if k.startswith("backbone.")}  # fmt: skip
        head = {k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")}
    if merge and lora:
        backbone, lora = copy.deepcopy(backbone).merge_and_unload(), False
    head = {k: v.detach().float().contiguous() for k, v in head.items()}
    config = {"format": FORMAT, "kind": rm.kind, "pooling": rm.pooling, "lora": lora, **meta}
    with atomic_dir(out_dir) as tmp:
        backbone.save_pretrained(
            tmp, **({} if backbone_weights is None else {"state_dict": backbone_weights})
        )
        tokenizer.save_pretrained(tmp)
        save_file(head, str(tmp / HEAD_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return Path(out_dir)


def read_reward_config(path: str | Path) -> dict:
    """The :data:`CONFIG_FILE` of a reward-model directory (or of a run's ``model/``)."""
    path = Path(path)
    if (path / "model" / CONFIG_FILE).is_file():
        path = path / "model"
    file = path / CONFIG_FILE
    if not file.is_file():
        raise PavlovError(f"{path} is not a pavlov reward model (no {CONFIG_FILE})")
    config = json.loads(file.read_text())
    if config.get("format") != FORMAT or config.get("kind") not in KINDS:
        raise PavlovError(f"{file} is not a {FORMAT} config")
    return {**config, "path": str(path)}


def load_head(rm: RewardModel, directory: str | Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(Path(directory) / HEAD_FILE))
    rm.head.load_state_dict({k: v.to(rm.head.weight.dtype) for k, v in state.items()})


def _load_backbone(config: dict, dtype: torch.dtype):
    from pavlov.llm.models.loading import load_causal_lm, load_encoder

    path = config["path"]
    if config["kind"] == "encoder":
        return load_encoder(path)
    if not config.get("lora"):
        return load_causal_lm(path, dtype=dtype)
    from transformers import AutoTokenizer

    from pavlov.llm.trainers.common import load_adapters

    base, _ = load_causal_lm(config.get("base_model"), dtype=dtype)
    return load_adapters(base, path), AutoTokenizer.from_pretrained(path)


class RewardScorer:
    """``score(prompts, completions) -> list[float]``: batched, no grad, eval mode."""

    def __init__(self, model: RewardModel, tokenizer, config: dict, batch_size: int = 16):
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.batch_size = batch_size
        self.pad_id = ensure_pad_token(tokenizer)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not self.config.get("use_prompt", True):
            prompts = [""] * len(completions)
        rows = encode(
            self.tokenizer, self.model.kind, prompts, completions, self.config["max_length"],
            chat=bool(self.config.get("chat")),
        )  # fmt: skip
        out: list[float] = []
        device = module_device(self.model)
        for i in range(0, len(rows), self.batch_size):
            ids, mask = collate_rows(rows[i : i + self.batch_size], self.pad_id)
            out.extend(self.model(ids.to(device), mask.to(device)).float().tolist())
        return out


def load_reward_model(
    path: str | Path,
    *,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> RewardScorer:
    """Load a reward model saved by :func:`save_reward_model` (or a run directory holding one
    in ``model/``) as a scorer: ``load_reward_model(dir)(prompts, completions) -> [float]``;
    ``device`` as a trainer's ``device`` field (``"auto"``, ``"cuda"``, ...)."""
    config = read_reward_config(path)
    backbone, tokenizer = _load_backbone(config, dtype)
    rm = RewardModel(backbone, config["kind"], bias=config.get("mode") == "pointwise",
                     pooling=config.get("pooling", "auto"))  # fmt: skip
    load_head(rm, config["path"])
    return RewardScorer(rm.to(resolve_device(device)), tokenizer, config, batch_size)
