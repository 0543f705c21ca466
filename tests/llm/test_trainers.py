"""pavlov.llm.trainers on tiny random models: SFT, reward model, DPO and the shared loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.data.datasets import (
    LabeledText,
    PreferenceExample,
    SFTExample,
    collate_packed,
    collate_sft,
    pack_sequences,
    tokenize_sft,
)
from pavlov.llm.models.loading import is_peft_model
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_tokenizer
from pavlov.llm.trainers import (
    DPOConfig,
    RewardConfig,
    SFTConfig,
    load_resume,
    load_reward_model,
    sft_loss,
    train_dpo,
    train_reward_model,
    train_sft,
)
from pavlov.llm.trainers.common import BatchPlan, lr_factor
from pavlov.llm.trainers.loop import Task, accumulate_gradients
from pavlov.llm.trainers.reward_model import RewardModel
from pavlov.llm.trainers.sft import label_tokens
from pavlov.run import Run
from pavlov.run.checkpoint import read_latest

# peft 0.21 calls a helper transformers 5 deprecated (when tests load adapters directly)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

FAST = dict(checkpoint_every=0, learning_rate=1e-2, max_grad_norm=0.0)

SFT_DATA = [
    SFTExample("Review of Up:", " great movie, warm and funny"),
    SFTExample("What is 2 + 3?", " The answer is 5."),
    SFTExample("Review of Cats:", " bad"),
    SFTExample("User asks a question", " and the assistant gives a short, helpful answer."),
    SFTExample("Review of Heat:", " a bold and beautiful story with a terrific cast"),
    SFTExample("What is 7 - 4?", " 3"),
]
PREFS = [
    PreferenceExample(f"Review of film {i}:", " great, funny and warm" * (1 + i % 2), " dull")
    for i in range(6)
] + [PreferenceExample("What is 2 + 3?", " The answer is 5.", " The answer is 7, a mess.")]
LABELED = [LabeledText("a bold and beautiful story", 1), LabeledText("dull, slow mess", 0)] * 3


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_trainable_changed(before, model):
    """Every trainable parameter moved; every frozen one stayed (TRL's smoke test)."""
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[name], p.detach()), f"{name} did not change"
        else:
            assert torch.equal(before[name], p.detach()), f"frozen {name} changed"


def initial_weights(cfg, kind=None):
    """The weights a trainer starts from (same seed, same LoRA / head initialisation)."""
    from pavlov.llm.trainers.common import maybe_lora, seed_all
    from pavlov.llm.trainers.reward_model import freeze_unused

    model, _ = tiny_encoder() if kind == "encoder" else tiny_causal_lm()
    seed_all(cfg.seed)
    model = maybe_lora(model, cfg)
    if kind is not None:
        model = RewardModel(model, kind, bias=cfg.mode == "pointwise")
        freeze_unused(model)
    return snapshot(model)


def tiny_encoder():
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return BertModel(config).eval(), tok


# ---------------------------------------------------------------------------------------------
# Configs and the shared pieces


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (SFTConfig, "batch_size", 0),
        (SFTConfig, "learning_rate", 0.0),
        (SFTConfig, "precision", "fp16"),
        (SFTConfig, "max_grad_norm", -1.0),
        (SFTConfig, "lr_schedule", "cosine"),
        (RewardConfig, "mode", "listwise"),
        (DPOConfig, "beta", 0.0),
        (DPOConfig, "loss_type", "kto"),
        (DPOConfig, "label_smoothing", 0.7),
        (DPOConfig, "reference", "none"),
    ],
)
def test_config_errors_name_the_field(cls, field, value):
    with pytest.raises(ConfigError, match=field):
        cls(**{field: value})


def test_label_smoothing_is_for_the_sigmoid_loss_only():
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)


def test_lr_schedule_warmup_then_linear_decay_never_zero():
    factors = [lr_factor(s, 6, 2, "linear") for s in range(6)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert [lr_factor(s, 4, 0, "constant") for s in range(4)] == [1.0] * 4


def test_batch_plan_visits_every_example_once_per_epoch_deterministically():
    plan = BatchPlan(n_examples=7, batch_size=2, grad_accum_steps=2, seed=3)
    assert plan.steps_per_epoch == 2
    epoch0 = [i for s in range(2) for micro in plan.step(s) for i in micro]
    assert sorted(epoch0) == list(range(7))
    assert plan.step(1) == BatchPlan(7, 2, 2, 3).step(1)  # a pure function of (seed, step)
    assert plan.step(2) != plan.step(0)  # reshuffled next epoch
    assert plan.indices(0, 1) == sorted(i for m in plan.step(0) for i in m)
    lengths = (5, 1, 9, 3, 7, 2, 8)
    grouped = BatchPlan(7, 2, 2, 3, lengths)
    assert sorted(grouped.order(0).tolist()) == list(range(7))
    micro = [[lengths[i] for i in m] for m in grouped.step(0) + grouped.step(1)]
    assert sorted(micro) == [[1], [3, 2], [7, 5], [9, 8]]  # pairs of neighbours in length


# ---------------------------------------------------------------------------------------------
# SFT


def _padded_batch(tok, data=SFT_DATA):
    return collate_sft(tokenize_sft(data, tok, 64), tok.pad_token_id)


def test_sft_loss_is_masked_cross_entropy_on_completions_only():
    model, tok = tiny_causal_lm()
    batch = _padded_batch(tok)
    with torch.no_grad():
        loss, _ = sft_loss(model, batch)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    terms = [  # a plain loop over the labelled positions
        -logits[b, t - 1].log_softmax(-1)[batch["labels"][b, t]]
        for b in range(logits.shape[0])
        for t in range(1, logits.shape[1])
        if batch["labels"][b, t] != -100
    ]
    assert len(terms) == label_tokens(batch)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)

    # Logits at prompt positions (whose targets are prompt tokens) do not enter the loss...
    fixed = logits.clone()
    fake = SimpleNamespace(logits=None)
    model_fn = lambda **_: fake  # noqa: E731
    shifted = batch["labels"][:, 1:]
    prompt_pos = (shifted == -100).nonzero()[0]
    completion_pos = (shifted != -100).nonzero()[0]
    fake.logits = fixed
    base, _ = sft_loss(model_fn, batch)
    fake.logits = fixed.clone()
    fake.logits[prompt_pos[0], prompt_pos[1]] += torch.randn(fixed.shape[-1]) * 10
    assert sft_loss(model_fn, batch)[0].item() == base.item()
    # ... while those at completion positions do.
    fake.logits = fixed.clone()
    fake.logits[completion_pos[0], completion_pos[1]] += torch.randn(fixed.shape[-1]) * 10
    assert sft_loss(model_fn, batch)[0].item() != base.item()


def test_bf16_autocast_loss_is_close_to_fp32():
    from pavlov.llm.trainers.common import autocast

    model, tok = tiny_causal_lm()
    batch = _padded_batch(tok)
    with torch.no_grad():
        fp32, _ = sft_loss(model, batch)
        with autocast("bf16"):
            bf16, _ = sft_loss(model, batch)
    assert bf16.dtype == torch.float32  # the loss itself is computed in float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2) and bf16.item() != fp32.item()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packing_gives_the_padded_loss(arch):
    model, tok = tiny_causal_lm(arch=arch)
    features = tokenize_sft(SFT_DATA, tok, 64)
    packed = collate_packed(pack_sequences(features, 64, tok.pad_token_id))
    assert packed["input_ids"].shape[0] < len(SFT_DATA)  # really packed
    with torch.no_grad():
        padded, _ = sft_loss(model, collate_sft(features, tok.pad_token_id))
        blocks, _ = sft_loss(model, packed)
    assert blocks.item() == pytest.approx(padded.item(), abs=1e-5)


def test_gradient_accumulation_2_by_half_equals_1_by_full():
    """Token-weighted: micro-batches with different completion lengths still sum exactly."""
    grads = []
    items = tokenize_sft(SFT_DATA, tiny_causal_lm()[1], 64)
    lengths = [len(f.input_ids) for f in items]
    for micro in ([[0, 1, 2, 3]], [[0, 1], [2, 3]]):
        model, _ = tiny_causal_lm()
        cfg = SFTConfig(max_grad_norm=0.0)
        task = Task(
            "sft", model, lengths, lambda idx: collate_sft([items[i] for i in idx], 0),
            lambda batch, m=model: sft_loss(m, batch), label_tokens, lambda *_: None,
        )  # fmt: skip
        params = list(model.parameters())
        accumulate_gradients(cfg, task, micro, params, step=1)
        grads.append([p.grad.clone() for p in params])
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)

    # and end to end: the same weights after two optimizer steps. A small lr: Adam's first
    # update g / (|g| + eps) turns float noise on near-zero gradients into changes of O(lr).
    weights = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model, tok = tiny_causal_lm()
        cfg = SFTConfig(batch_size=batch_size, grad_accum_steps=accum, **{**FAST,
                        "learning_rate": 1e-4})  # fmt: skip
        weights.append(snapshot(train_sft(cfg, model, tok, SFT_DATA).model))
    for name, w in weights[0].items():
        torch.testing.assert_close(w, weights[1][name], atol=1e-5, rtol=1e-5)


def test_sft_changes_every_parameter_and_evaluates():
    model, tok = tiny_causal_lm()
    before = snapshot(model)
    out = train_sft(SFTConfig(batch_size=3, **FAST), model, tok, SFT_DATA, SFT_DATA[:2])
    assert out.fit.steps == 2
    assert_trainable_changed(before, out.model)
    assert out.fit.eval["eval/perplexity"] == pytest.approx(math.exp(out.fit.eval["eval/loss"]))
    assert all(math.isfinite(v) for v in out.fit.train.values())


def test_sft_lora_changes_only_adapters():
    model, tok = tiny_causal_lm()
    cfg = SFTConfig(batch_size=3, lora=True, lora_r=4, **FAST)
    out = train_sft(cfg, model, tok, SFT_DATA)  # 2 steps: lora_B first, then lora_A too
    assert is_peft_model(out.model)
    trainable = [n for n, p in out.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert_trainable_changed(initial_weights(cfg), out.model)


@pytest.mark.parametrize(("cls", "off"), [(SFTConfig, False), (RewardConfig, True),
                                          (DPOConfig, True)])  # fmt: skip
def test_dropout_is_off_by_default_except_for_sft(cls, off):
    """TRL's defaults: the reward model and DPO train without dropout, SFT with the model's
    (and LoRA's); ``disable_dropout`` overrides either way."""
    from pavlov.llm.trainers.common import maybe_lora

    def dropouts(cfg):
        # BERT: hidden and attention dropout 0.1; the Llama LM has none but LoRA's own
        model = maybe_lora(tiny_causal_lm()[0] if cfg.lora else tiny_encoder()[0], cfg)
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    assert cls().disable_dropout is off
    assert dropouts(cls()) == ({0.0} if off else {0.1})
    assert dropouts(cls(disable_dropout=not off)) == ({0.1} if off else {0.0})
    lora = dropouts(cls(lora=True, lora_dropout=0.05))  # LoRA's own dropout follows too
    assert lora == ({0.0} if off else {0.05})


# ---------------------------------------------------------------------------------------------
# Reward model


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_reward_model_changes_every_parameter_and_reloads(kind, tmp_path):
    from pavlov.llm.trainers.reward_model import collate_rows, encode, save_reward_model

    backbone, tok = tiny_causal_lm() if kind == "causal" else tiny_encoder()
    cfg = RewardConfig(batch_size=4, max_length=64, **FAST)
    out = train_reward_model(cfg, backbone, tok, PREFS, PREFS, kind=kind)
    assert out.fit.steps == 2
    assert {"eval/accuracy", "eval/margin", "eval/loss"} <= set(out.fit.eval)
    assert {"train/accuracy", "train/margin"} <= set(out.fit.train)
    assert_trainable_changed(initial_weights(cfg, kind), out.model)

    meta = {"mode": "pairwise", "max_length": 64, "chat": False, "use_prompt": True}
    save_reward_model(out.model, tok, tmp_path / "rm", {**meta, "base_model": None})
    scorer = load_reward_model(tmp_path / "rm")
    prompts, replies = [p.prompt for p in PREFS], [p.chosen for p in PREFS]
    ids, mask = collate_rows(encode(tok, kind, prompts, replies, 64), tok.pad_token_id)
    with torch.no_grad():
        expected = out.model.eval()(ids, mask)
    assert scorer(prompts, replies) == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize(("kind", "pooling"), [("encoder", "cls"), ("encoder", "max"),
                                               ("causal", "mean"), ("causal", "max")])
def test_reward_model_poolings_read_real_tokens_and_reload(kind, pooling, tmp_path):
    from pavlov.llm.trainers.reward_model import collate_rows, encode

    backbone, tok = tiny_causal_lm() if kind == "causal" else tiny_encoder()
    cfg = RewardConfig(batch_size=4, max_length=64, pooling=pooling, **FAST)
    with Run.create(tmp_path, "rm", {}) as run:
        out = train_reward_model(cfg, backbone, tok, PREFS, kind=kind, run=run)
    rm = out.model.eval()
    assert rm.pooling == pooling
    prompts, replies = [p.prompt for p in PREFS], [p.chosen for p in PREFS]
    rows = encode(tok, kind, prompts, replies, 64)
    ids, mask = collate_rows(rows, tok.pad_token_id)
    with torch.no_grad():
        batched = rm(ids, mask)
        alone = [rm(*collate_rows([r], tok.pad_token_id)) for r in rows]  # no padding at all
        hidden = rm.body()(input_ids=ids[:1], attention_mask=mask[:1]).last_hidden_state[0]
        n = int(mask[0].sum())
        want = {"cls": hidden[0], "max": hidden[:n].amax(0), "mean": hidden[:n].mean(0)}[pooling]
        head = float(rm.head(want))
    assert batched.tolist() == pytest.approx(torch.cat(alone).tolist(), abs=1e-5)
    assert head == pytest.approx(float(batched[0]), abs=1e-5)
    assert load_reward_model(tmp_path / "rm" / "model")(prompts, replies) == pytest.approx(
        batched.tolist(), abs=1e-5
    )  # the pooling is saved with the model


def test_reward_model_refuses_a_pooling_its_kind_lacks():
    backbone, tok = tiny_causal_lm()
    with pytest.raises(ConfigError, match="pooling: 'cls' does not apply to a causal"):
        train_reward_model(RewardConfig(pooling="cls", **FAST), backbone, tok, PREFS)
    with pytest.raises(ConfigError, match="pooling"):
        RewardConfig(pooling="attention")


def test_reward_model_lora_and_pointwise_round_trip(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pavlov.llm.models.loading import save_model

    model, tok = tiny_causal_lm()
    save_model(model, tok, tmp_path / "base")  # LoRA reward models reload their base from here
    backbone, tok = tiny_causal_lm()
    cfg = RewardConfig(batch_size=4, max_length=64, lora=True, lora_r=4, max_steps=2, **FAST)
    with Run.create(tmp_path, "lora", {}) as run:
        out = train_reward_model(cfg, backbone, tok, PREFS, kind="causal", run=run,
                                 base_model=str(tmp_path / "base"))  # fmt: skip
    trainable = [n for n, p in out.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                              tmp_path / "lora" / "model")  # fmt: skip
    scores = load_reward_model(tmp_path / "lora")([p.prompt for p in PREFS], [" great"] * 7)
    assert len(scores) == 7 and all(math.isfinite(s) for s in scores)

    backbone, tok = tiny_causal_lm()
    cfg = RewardConfig(batch_size=3, mode="pointwise", **FAST)
    with Run.create(tmp_path, "point", {}) as run:
        out = train_reward_model(cfg, backbone, tok, LABELED, LABELED, run=run)
    assert out.model.head.bias is not None and "eval/accuracy" in out.fit.eval
    scorer = load_reward_model(tmp_path / "point" / "model")
    assert scorer(["ignored", ""], ["dull, slow mess"] * 2)[0] == pytest.approx(
        scorer(["", ""], ["dull, slow mess"] * 2)[1], abs=1e-6
    )  # pointwise models score the completion alone


# ---------------------------------------------------------------------------------------------
# DPO


@pytest.mark.parametrize(
    ("reference", "lora"), [("precompute", False), ("live", False), ("auto", True)]
)
def test_dpo_starts_at_ln2_and_changes_every_trainable_parameter(reference, lora):
    model, tok = tiny_causal_lm()
    first = {}
    cfg = DPOConfig(batch_size=4, reference=reference, lora=lora, lora_r=4, **FAST)
    out = train_dpo(cfg, model, tok, PREFS, PREFS,
                    callback=lambda s, m: first.setdefault("m", m))  # fmt: skip
    assert first["m"]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["m"]["train/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert out.fit.steps == 2 and is_peft_model(out.model) == lora
    assert_trainable_changed(initial_weights(cfg), out.model)
    assert {
        "eval/rewards/accuracies", "eval/rewards/margins", "eval/rewards/chosen",
        "eval/rewards/rejected", "eval/loss",
    } <= set(out.fit.eval)  # fmt: skip
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert math.isfinite(out.fit.train[f"train/{key}"])


def test_dpo_ipo_and_hinge_run():
    for loss_type in ("ipo", "hinge"):
        model, tok = tiny_causal_lm()
        out = train_dpo(DPOConfig(batch_size=7, loss_type=loss_type, **FAST), model, tok, PREFS)
        assert out.fit.steps == 1 and math.isfinite(out.fit.train["train/loss"])


# ---------------------------------------------------------------------------------------------
# Resume, NaN guard, saved models


class Interrupt(Exception):
    pass


def _stop_at(n):
    def callback(step, _):
        if step == n:
            raise Interrupt

    return callback


@pytest.mark.parametrize("trainer", ["sft-lora", "dpo"])
def test_resume_continues_and_matches_an_uninterrupted_run(trainer, tmp_path):
    """Exact: batches are a function of (seed, step); weights, AdamW, schedule and RNG (LoRA
    dropout draws) are restored."""

    def go(run=None, resume=None, callback=None):
        model, tok = tiny_causal_lm()
        if trainer == "dpo":
            cfg = DPOConfig(batch_size=2, max_steps=4, checkpoint_every=2, learning_rate=1e-2)
            return train_dpo(cfg, model, tok, PREFS, run=run, resume=resume, callback=callback,
                             load_reference=lambda: tiny_causal_lm()[0])  # fmt: skip
        cfg = SFTConfig(batch_size=2, max_steps=4, checkpoint_every=2, learning_rate=1e-2,
                        lora=True, lora_r=4, lora_dropout=0.5)  # fmt: skip
        return train_sft(cfg, model, tok, SFT_DATA, run=run, resume=resume, callback=callback)

    full = snapshot(go().model)
    with pytest.raises(Interrupt), Run.create(tmp_path, "r", {}) as run:
        go(run=run, callback=_stop_at(3))
    assert read_latest(tmp_path / "r" / "checkpoints")[0] == "step_2"
    ckpt, state = load_resume(tmp_path / "r")
    assert state["step"] == 2
    steps = []
    with Run.reopen(tmp_path / "r", {}) as run:
        out = go(run=run, resume=(ckpt, state), callback=lambda s, _: steps.append(s))
    assert steps == [3, 4] and out.fit.steps == 4
    for name, w in snapshot(out.model).items():
        torch.testing.assert_close(w, full[name], atol=0, rtol=0)
    assert read_latest(tmp_path / "r" / "checkpoints")[0] == "step_4"


def test_the_last_checkpoint_is_written_once(tmp_path, monkeypatch):
    """A checkpoint that ``latest`` names is never rewritten: a kill while its weights were
    replaced and before its state file was written left ``latest`` naming an incomplete one
    (the kill harness found it)."""
    from pavlov.llm.trainers import loop

    written = []
    save = loop.save_trainer_checkpoint

    def counting(run, cfg, task, step, *args, **kwargs):
        written.append(step)
        return save(run, cfg, task, step, *args, **kwargs)

    monkeypatch.setattr(loop, "save_trainer_checkpoint", counting)
    for max_steps in (4, 3):  # the last step is a checkpoint step / is not
        model, tok = tiny_causal_lm()
        cfg = SFTConfig(batch_size=2, max_steps=max_steps, checkpoint_every=2,
                        learning_rate=1e-2)  # fmt: skip
        with Run.create(tmp_path, f"r{max_steps}", {}) as run:
            train_sft(cfg, model, tok, SFT_DATA, run=run)
        assert read_latest(tmp_path / f"r{max_steps}" / "checkpoints")[0] == f"step_{max_steps}"
    assert written == [2, 4, 2, 3]


def test_nan_guard_stops_before_the_step_and_saves_no_nan(tmp_path):
    model, tok = tiny_causal_lm()
    calls = {"n": 0}

    def poison(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second forward: optimizer step 2
            return output * float("nan")
        return output

    model.get_input_embeddings().register_forward_hook(poison)  # once per forward pass
    cfg = SFTConfig(batch_size=3, max_steps=3, checkpoint_every=1, learning_rate=1e-2)
    with (
        pytest.raises(PavlovError, match="not finite at step 2"),
        Run.create(tmp_path, "nan", {}) as run,
    ):
        train_sft(cfg, model, tok, SFT_DATA, run=run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ckpt, state = load_resume(tmp_path / "nan")
    assert state["step"] == 1 and not (tmp_path / "nan" / "model").exists()
    assert '"failed"' in (tmp_path / "nan" / "run.json").read_text()

    calls["n"] = 1  # fails at step 1, before any checkpoint: the run directory is removed
    with pytest.raises(PavlovError, match="step 1"), Run.create(tmp_path, "gone", {}) as run:
        train_sft(cfg, model, tok, SFT_DATA, run=run)
    assert not (tmp_path / "gone").exists()


def test_saved_models_load_with_transformers_and_peft(tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from pavlov.llm.models.loading import save_model

    model, tok = tiny_causal_lm()
    with Run.create(tmp_path, "full", {}) as run:
        out = train_sft(SFTConfig(batch_size=6, **FAST), model, tok, SFT_DATA, run=run)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, out.model.eval()(ids).logits)

    base, tok = tiny_causal_lm()
    save_model(base, tok, tmp_path / "base")
    model, _ = tiny_causal_lm()
    model.name_or_path = str(tmp_path / "base")  # what peft records as the base model
    cfg = SFTConfig(batch_size=6, lora=True, lora_r=4, merge_lora=True, **FAST)
    with Run.create(tmp_path, "lora", {}) as run:
        out = train_sft(cfg, model, tok, SFT_DATA, run=run)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model")  # merge_lora
    adapters = AutoPeftModelForCausalLM.from_pretrained(
        tmp_path / "lora" / "checkpoints" / "step_1"
    )
    with torch.no_grad():
        expected = out.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapters(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sft", "rm", "dpo"])
def test_shipped_llm_configs_build(name):
    from pathlib import Path

    from pavlov.config import build_config, load_yaml

    classes = {"sft": SFTConfig, "rm": RewardConfig, "dpo": DPOConfig}
    paths = sorted((Path(__file__).parents[2] / "configs").glob(f"{name}-*.yaml"))
    assert paths
    for path in paths:
        data = load_yaml(path)
        assert set(data) <= {"model", "data", "eval_data", "backbone", "chat_template", "trainer"}
        build_config(classes[name], data["trainer"], where="trainer")
