"""`pavlov rlhf` / :mod:`pavlov.llm.case_study.pipeline`: the pipeline on tiny random models
(fast), and the demo on the embedded assets (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pavlov.cli import main
from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.case_study.pipeline import (
    CaseStudyAssets,
    CaseStudyConfig,
    run_case_study,
    stage_configs,
)
from pavlov.llm.case_study.steps import JudgeTap
from pavlov.llm.data.datasets import PreferenceExample, SFTExample
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_tokenizer
from pavlov.llm.scoring.policy_eval import evaluate_policy, module_logprobs
from pavlov.llm.scoring.text import distinct_n, on_topic
from pavlov.run.checkpoint import read_latest

# peft 0.21 calls a helper transformers 5 deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

PNG = b"\x89PNG\r\n\x1a\n"
TINY = dict(
    precision="fp32", sft_steps=2, sft_batch_size=2, sft_max_length=48, rm_steps=2,
    rm_batch_size=2, rl_steps=2, dpo_batch_size=2, max_new_tokens=6, eval_prompts=3,
    eval_samples=2, eval_batch_size=4, sft_learning_rate=1e-2, rm_learning_rate=1e-2,
    rl_learning_rate=1e-2, dpo_learning_rate=1e-2,
)  # fmt: skip


def tiny_encoder():
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return BertModel(config).eval(), tok


def _sft(split):
    words = ["great", "dull", "warm and funny", "a mess"]
    return [SFTExample(f"Review of Film {i}:", f" {words[i % 4]}") for i in range(8)]


def _prefs(split):
    return [PreferenceExample(f"Review of Film {i}:", " great, funny", " dull") for i in range(6)]


def _prompts(split):
    n = 5 if split == "test" else 8
    return [(f"Film {i}", f"Review of Film {i}:") for i in range(n)]


def tiny_assets() -> CaseStudyAssets:
    return CaseStudyAssets(
        load_policy=lambda name: tiny_causal_lm(),
        load_reward_backbone=lambda kind, policy: (
            tiny_encoder() if kind == "encoder" else tiny_causal_lm(seed=1)
        ),
        sft_data=_sft,
        preferences=_prefs,
        prompts=_prompts,
        topics=lambda split: {"Review of Film 1:": frozenset({"great", "dull"})},
        loglines=lambda split: {"Review of Film 1:": "A dog learns to sing."},
        load_sentence_encoder=tiny_encoder,
    )


def run_tiny(tmp_path, **overrides) -> dict:
    cfg = CaseStudyConfig(**{**TINY, **overrides})
    return run_case_study(cfg, tmp_path / "runs" / "cs", assets=tiny_assets())


# ---------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("algo", "a2c"),
        ("precision", "fp16"),
        ("rm_backbone", "bert"),
        ("sft_steps", 0),
        ("eval_samples", 0),
        ("rl_learning_rate", 0.0),
        ("beta", -0.1),
        ("target_kl", -1.0),
        ("beta_min", -0.1),
        ("relevance_weight", -1.0),
        ("relevance_cap", 0.0),
        ("relevance_cap", 1.5),
        ("fluency_weight", -1.0),
        ("fluency_surprise", -1.0),
        ("repetition_weight", -1.0),
        ("rl_interpolation", 0.0),
        ("rl_interpolation", 1.5),
        ("fluency_hinge", True),  # with the default surprise threshold: alternatives
        ("eval_top_p", 0.0),
        ("prompt_style", "instruct"),
        ("rl_options", "n_epochs=2"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        CaseStudyConfig(**{field: value})


def test_the_fluency_hinge_needs_a_weight_and_no_surprise_threshold():
    with pytest.raises(ConfigError, match="^fluency_hinge needs fluency_weight > 0"):
        CaseStudyConfig(fluency_hinge=True, fluency_weight=0.0, fluency_surprise=0.0)
    with pytest.raises(ConfigError, match="^fluency_hinge and fluency_surprise are alternatives"):
        CaseStudyConfig(fluency_hinge=True)
    CaseStudyConfig(fluency_hinge=True, fluency_surprise=0.0)


def test_group_defaults_keep_eight_completions_per_step():
    assert (CaseStudyConfig().prompts_per_step, CaseStudyConfig().group_size) == (2, 4)  # RLOO
    ppo = CaseStudyConfig(algo="ppo")
    assert (ppo.prompts_per_step, ppo.group_size) == (8, 1)
    grpo = CaseStudyConfig(algo="grpo")
    assert (grpo.prompts_per_step, grpo.group_size) == (2, 4)
    with pytest.raises(ConfigError, match="group_size"):
        CaseStudyConfig(algo="rloo", group_size=1)


def test_stage_configs_carry_the_shared_fields_and_the_options():
    cfg = CaseStudyConfig(seed=3, sft_options={"warmup_steps": 0}, rl_options={"n_epochs": 2})
    stages = stage_configs(cfg)
    assert {s.seed for s in stages.values()} == {3}
    assert {s.precision for s in stages.values()} == {"auto"}
    assert stages["sft"].lora and stages["sft"].packing and stages["sft"].warmup_steps == 0
    assert stages["rl"].algo == "rloo" and stages["rl"].n_epochs == 2 and stages["rl"].lora
    assert (stages["rl"].temperature, stages["rl"].target_kl, stages["rl"].kl_horizon) == (
        0.7, 3.5, 100)  # fmt: skip
    assert stage_configs(CaseStudyConfig(beta_min=0.1))["rl"].beta_min == 0.1
    grpo = stage_configs(CaseStudyConfig(algo="grpo"))["rl"]
    assert grpo.kl_place == "loss" and grpo.target_kl == 0.0  # no controller for a loss KL
    assert type(stage_configs(CaseStudyConfig(algo="dpo"))["rl"]).__name__ == "DPOConfig"
    with pytest.raises(ConfigError, match="unknown rl_options key"):
        stage_configs(CaseStudyConfig(rl_options={"ppo_epoch": 2}))


def test_the_reward_model_batches_pairs_of_similar_length_unless_told_not_to():
    assert stage_configs(CaseStudyConfig())["reward_model"].group_by_length
    off = CaseStudyConfig(rm_options={"group_by_length": False})
    assert not stage_configs(off)["reward_model"].group_by_length


def test_the_demo_config_file_states_the_defaults():
    """configs/rlhf-movie-reviews.yaml (what `make demo` runs) lists every case-study field
    with the dataclass default: the file a reader opens is what runs."""
    import dataclasses

    import yaml

    path = Path(__file__).parents[2] / "configs" / "rlhf-movie-reviews.yaml"
    listed = yaml.safe_load(path.read_text())["case_study"]
    assert CaseStudyConfig(**listed) == CaseStudyConfig()
    fields = {f.name for f in dataclasses.fields(CaseStudyConfig)}
    assert fields - set(listed) <= {"device", "policy"}


# ---------------------------------------------------------------------------------------------
# Evaluation pieces


def test_evaluation_is_seeded_and_a_policy_has_zero_kl_to_itself():
    model, tok = tiny_causal_lm()
    reward = lambda prompts, completions: [float(len(c)) for c in completions]
    args = dict(reward=reward, samples_per_prompt=2, max_new_tokens=5, batch_size=3)
    prompts = ["Review of Up:", "Review of Heat:"]
    first = evaluate_policy(model, tok, prompts, **args, reference=module_logprobs(model))
    again = evaluate_policy(model, tok, prompts, **args)
    assert [s.completion for s in first.samples] == [s.completion for s in again.samples]
    assert [s.prompt for s in first.samples] == prompts * 2  # sample j of prompt i: row j*n+i
    # KL from the sampler's log-probs against a forward of the same model: 0 to round-off
    assert first.metrics["kl/ref"] == pytest.approx(0.0, abs=1e-5)
    assert first.metrics["samples"] == 4.0
    assert first.metrics["reward/mean"] == pytest.approx(
        sum(len(s.completion) for s in first.samples) / 4
    )
    assert -1.0 <= first.metrics["judge/mean"] <= 1.0
    assert 1 <= first.metrics["response/length"] <= 5


def test_kl_on_a_second_draw_at_the_kl_temperature_is_zero_for_the_policy_itself():
    # The reader's draw is truncated (top-p) at another temperature, so KL is estimated on a
    # second, untruncated draw at kl_temperature from that draw's own sampler log-probs; a
    # reference at another temperature than kl_temperature must show up as KL > 0.
    model, tok = tiny_causal_lm()
    args = dict(reward=lambda p, c: [0.0] * len(c), samples_per_prompt=3, max_new_tokens=6,
                temperature=0.5, top_p=0.8, kl_temperature=0.9)  # fmt: skip
    prompts = ["Review of Up:", "Review of Heat:"]
    same = evaluate_policy(model, tok, prompts, reference=module_logprobs(model, temperature=0.9),
                           **args)  # fmt: skip
    assert same.metrics["kl/ref"] == pytest.approx(0.0, abs=1e-5)
    other = evaluate_policy(model, tok, prompts, reference=module_logprobs(model, temperature=0.5),
                            **args)  # fmt: skip
    assert abs(other.metrics["kl/ref"]) > 1e-3


def test_kl_to_a_different_reference_is_positive_on_average():
    model, tok = tiny_causal_lm(seed=0)
    other, _ = tiny_causal_lm(seed=1)
    ev = evaluate_policy(model, tok, ["Review of Up:"] * 4, reward=lambda p, c: [0.0] * len(c),
                         reference=module_logprobs(other), samples_per_prompt=4,
                         max_new_tokens=8)  # fmt: skip
    assert ev.metrics["kl/ref"] > 0


def test_distinct_2_counts_distinct_word_bigrams_over_all_texts():
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # (a b) twice
    assert distinct_n(["Great film!", "great  FILM."], 2) == 0.5  # case and punctuation ignored
    assert distinct_n(["a", ""], 2) == 0.0  # no bigram at all
    assert distinct_n(["x y"] * 10, 2) == pytest.approx(1 / 10)  # one phrase again and again


def test_on_topic_needs_one_topic_word():
    topic = frozenset({"elvira", "hills"})
    assert on_topic("Elvira's best night!", topic)  # "elvira's" -> elvira, s
    assert not on_topic("A fine, warm comedy.", topic)


def test_reader_sampling_kl_at_the_training_temperature_and_base_model_fluency():
    model, tok = tiny_causal_lm(seed=0)
    other, _ = tiny_causal_lm(seed=1)
    zero = lambda p, c: [0.0] * len(c)
    args = dict(reward=zero, judge=zero, samples_per_prompt=3, max_new_tokens=6, seed=5)
    prompts = ["Review of Up:", "Review of Heat:"]
    plain = evaluate_policy(model, tok, prompts, reference=module_logprobs(other), **args)
    reader = evaluate_policy(model, tok, prompts, reference=module_logprobs(other),
                             fluency=module_logprobs(model), temperature=0.5, top_p=0.8,
                             topics=[frozenset({"up"}), frozenset()], **args)  # fmt: skip
    # the reader's reviews are other draws; KL is estimated on the training-temperature draws
    assert [s.completion for s in reader.samples] != [s.completion for s in plain.samples]
    # (there from a forward pass, here from the sampler's own log-probs: equal to round-off)
    assert [s.kl for s in reader.samples] == pytest.approx([s.kl for s in plain.samples],
                                                          abs=1e-5)
    # fluency: a model giving the k-th response token log-prob -(k + 1) costs a review of n text
    # tokens n (n + 1) / 2; the EOS does not count
    columns = lambda seq, mask, start: -torch.arange(1.0, seq.shape[1] - start + 1).expand(
        len(seq), -1)  # fmt: skip
    ranked = evaluate_policy(model, tok, prompts, fluency=columns, temperature=0.5, top_p=0.8,
                             **args)  # fmt: skip
    n = [s.tokens - s.eos for s in ranked.samples]
    assert any(s.eos for s in ranked.samples) or max(n) == 6
    assert [s.nll for s in ranked.samples] == [k * (k + 1) / 2 for k in n]
    assert ranked.metrics["fluency/nll"] == pytest.approx(sum(k * (k + 1) / 2 for k in n) / sum(n))
    assert reader.metrics["fluency/nll"] > 0
    assert "fluency/nll" not in plain.metrics and "topic/on_topic" not in plain.metrics
    topical = [s.on_topic for s in reader.samples]
    assert topical[1::2] == [False] * 3  # no topic words: never on topic
    assert reader.metrics["topic/on_topic"] == pytest.approx(sum(topical) / 6)
    assert reader.metrics["text/distinct2"] == distinct_n([s.completion for s in reader.samples])


def test_goal_checks_compare_with_the_sft_model_and_the_fixed_bounds():
    from pavlov.llm.case_study.report import goal_checks

    before = {"judge/positive_fraction": 0.5, "judge/mean": 0.1, "fluency/nll": 2.2,
              "text/distinct2": 0.8, "topic/on_topic": 0.2, "kl/ref": 0.0}  # fmt: skip
    after = {"judge/positive_fraction": 0.9, "judge/mean": 0.59, "fluency/nll": 2.3,
             "text/distinct2": 0.56, "topic/on_topic": 0.2, "kl/ref": 6.5}  # fmt: skip
    checks = goal_checks(before, after)
    assert {k: c["ok"] for k, c in checks.items()} == {
        "judge/positive_fraction": True, "judge/mean": False, "fluency/nll": False,
        "text/distinct2": True, "topic/on_topic": True, "kl/ref": False,
    }  # fmt: skip
    assert checks["text/distinct2"]["bound"] == pytest.approx(0.56)
    del before["topic/on_topic"], after["fluency/nll"]
    assert set(goal_checks(before, after)) == set(checks) - {"topic/on_topic", "fluency/nll"}


def test_judge_tap_logs_the_judge_but_returns_the_reward():
    tap = JudgeTap(lambda p, c: [1.0] * len(c), lambda p, c: [0.5, -0.5][: len(c)])
    assert tap(["a", "b"], ["x", "y"]) == [1.0, 1.0]
    assert tap.take() == 0.0 and tap.take() is None


# ---------------------------------------------------------------------------------------------
# The pipeline on tiny models


def _check_outputs(s: dict, run) -> None:
    for stage in ("sft", "reward_model", "rl"):
        assert (run / stage / "metrics.jsonl").read_text().strip(), stage
        assert (run / stage / "model").is_dir(), stage
    assert json.loads((run / "summary.json").read_text())["algo"] == s["algo"]
    for key in ("reward/mean", "judge/mean", "judge/positive_fraction", "kl/ref",
                "response/length", "response/eos_rate", "fluency/nll", "text/distinct2",
                "topic/on_topic"):  # fmt: skip
        assert key in s["before"] and key in s["after"], key
    assert s["before"]["kl/ref"] == 0.0 and s["after"]["samples"] == 6.0
    assert set(s["seconds"]) >= {"load", "sft", "reward_model", "eval_before", "rl", "total"}
    assert 0.0 <= s["reward_model"]["accuracy"] <= 1.0
    for name in ("curves", "judge_vs_kl"):
        assert (run / f"{name}.png").read_bytes()[:8] == PNG
    text = (run / "samples.md").read_text()
    assert "| movie | SFT review | judge | RM |" in text
    assert sum(line.startswith("| Film ") for line in text.splitlines()) == 3  # one per movie
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 2]  # before and after


def test_chat_prompts_train_the_policy_and_the_reward_model_reads_the_plain_ones():
    from pavlov.llm.case_study.pipeline import PromptForms

    tok = tiny_tokenizer()
    forms = PromptForms.chat(tok, _prompts("train"))
    chat = forms.prompt("Review of Film 1:")
    assert chat.chat and "Review of the movie Film 1." in chat.prompt
    assert chat.prompt.endswith(
        tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                add_generation_prompt=True).split("x", 1)[1]
    )  # fmt: skip
    assert forms.prompt("Review of Unknown:") == "Review of Unknown:"
    ex = forms.sft(_sft("train")[1])
    # the reply is the template's rendering of the assistant turn: text, then end of turn
    whole = tok.apply_chat_template(
        [{"role": "system", "content": "You are a film critic."},
         {"role": "user", "content": "Review of the movie Film 1."},
         {"role": "assistant", "content": "dull"}], tokenize=False,
    )  # fmt: skip
    assert ex.chat and ex.prompt + ex.completion == whole and ex.completion.startswith("dull")
    pair = forms.preference(_prefs("train")[1])
    assert pair.chat and pair.chosen.startswith("great, funny") and pair.prompt == chat.prompt
    seen = []
    score = forms.scorer(lambda p, c: seen.extend(p) or [0.0] * len(p))
    score([chat.prompt, "other"], ["a", "b"])
    assert seen == ["Review of Film 1:", "other"]


def test_synopsis_prompts_name_the_plot_and_the_reward_model_reads_the_plain_ones(tmp_path):
    from pavlov.llm.case_study.pipeline import PromptForms
    from pavlov.llm.data.rt import rt_logline, rt_movies, rt_synopsis

    forms = PromptForms.synopsis({"Review of Film 1:": "A dog learns to sing."})
    assert forms.prompt("Review of Film 1:").prompt == "Review of Film 1 (A dog learns to sing.):"
    assert forms.prompt("Review of Film 2:") == "Review of Film 2:"  # no synopsis: plain
    ex = forms.sft(_sft("train")[1])
    assert (ex.prompt, ex.completion, ex.chat) == ("Review of Film 1 (A dog learns to sing.):",
                                                   " dull", False)  # fmt: skip
    pair = forms.preference(_prefs("train")[1])
    assert pair.chosen == " great, funny" and pair.prompt == ex.prompt and not pair.chat
    seen = []
    forms.scorer(lambda p, c: seen.extend(p) or [0.0] * len(p))([ex.prompt, "x"], ["a", "b"])
    assert seen == ["Review of Film 1:", "x"]
    # the corpus' lines: one sentence (initials do not end it), at most 24 words
    movie = next(m for m in rt_movies("test") if "Joe R. Lansdale" in rt_synopsis(m))
    line = rt_logline(movie)
    assert "Joe R. Lansdale, Bubba Ho-tep" in line and len(line.split()) == 25  # 24 + "..."
    assert rt_logline("no-such-movie") == ""

    s = run_tiny(tmp_path, prompt_style="synopsis")
    _check_outputs(s, tmp_path / "runs" / "cs")


def test_chat_case_study_runs_end_to_end(tmp_path):
    s = run_tiny(tmp_path, prompt_style="chat")
    _check_outputs(s, tmp_path / "runs" / "cs")
    prompts = (tmp_path / "runs" / "cs" / "samples.md").read_text()
    assert "| Film 0 |" in prompts


def test_dpo_case_study_writes_every_output(tmp_path):
    s = run_tiny(tmp_path, algo="dpo")
    run = tmp_path / "runs" / "cs"
    _check_outputs(s, run)
    assert s["after"]["kl/ref"] != 0.0  # the DPO adapters moved the policy
    assert (run / "rl" / "model" / "adapter_config.json").is_file()


def test_ppo_case_study_logs_the_judge_on_training_rollouts(tmp_path):
    s = run_tiny(tmp_path, algo="ppo")
    run = tmp_path / "runs" / "cs"
    _check_outputs(s, run)
    records = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "judge/train_mean" in r] == [1, 2]
    assert all(r["reward/mean"] is not None for r in records if "reward/mean" in r)


@pytest.mark.parametrize("style", ["plain", "synopsis"])
def test_the_relevance_term_joins_the_reward_and_is_logged_per_term(style, tmp_path):
    from pavlov.llm.case_study import pipeline

    s = run_tiny(tmp_path, relevance_weight=2.0, prompt_style=style)
    run = tmp_path / "runs" / "cs"
    _check_outputs(s, run)
    records = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "reward/relevance" in r)
    assert -1 <= step["reward/relevance"] <= 1
    assert step["reward/mean"] == pytest.approx(  # the weighted sum the trainer got (the
        step["reward/reward_model"] + 2.0 * step["reward/relevance"]  # default fluency term too)
        + CaseStudyConfig().fluency_weight * step["reward/fluency"], abs=1e-5)
    no_term = CaseStudyConfig(**TINY, relevance_weight=0.0)  # the default is 2: switched off
    assert pipeline._load_inputs(no_term, tiny_assets()).relevance is None


def test_the_fluency_term_joins_the_reward_and_is_logged_per_term(tmp_path):
    def first_step(surprise: float) -> dict:
        s = run_tiny(tmp_path / str(surprise), relevance_weight=0.0, fluency_weight=0.5,
                     fluency_surprise=surprise)  # fmt: skip
        run = tmp_path / str(surprise) / "runs" / "cs"
        _check_outputs(s, run)
        records = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in records if "reward/fluency" in r)

    plain = first_step(0.0)
    assert plain["reward/fluency"] < 0 and "reward/relevance" not in plain  # a log-likelihood
    assert plain["reward/mean"] == pytest.approx(
        plain["reward/reward_model"] + 0.5 * plain["reward/fluency"], abs=1e-5
    )
    # The default: only each token's surprisal beyond 6 nats pays. Step 1 samples the same
    # reviews in both runs; a review's -(1/T) sum max(0, n_t - 6) lies in [f + 6, 0] for its
    # plain f = -(1/T) sum n_t (the tiny random model: n_t near log 512 = 6.2, f near -6.2;
    # an empty review scores -10 either way).
    sharp = first_step(CaseStudyConfig().fluency_surprise)
    assert CaseStudyConfig().fluency_surprise == 6.0
    assert plain["reward/fluency"] + 1.0 < sharp["reward/fluency"] <= 0.0


def test_the_repetition_term_joins_the_reward_and_is_logged_per_term(tmp_path):
    s = run_tiny(tmp_path, relevance_weight=0.0, fluency_weight=0.0, repetition_weight=1.5)
    run = tmp_path / "runs" / "cs"
    _check_outputs(s, run)
    records = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "reward/repetition" in r)
    assert -1 <= step["reward/repetition"] <= 0 and "reward/fluency" not in step
    assert step["reward/mean"] == pytest.approx(
        step["reward/reward_model"] + 1.5 * step["reward/repetition"], abs=1e-5)
    assert CaseStudyConfig().repetition_weight == 0.0  # off by default: no term, no metric
    assert not any("reward/repetition" in r for r in _first_steps(tmp_path / "off"))


def test_rl_interpolation_keeps_a_share_of_step_3s_change_and_the_trained_policy(tmp_path):
    """The evaluated policy (``rl/model``) is the trained one (``rl/trained_model``, bitwise the
    run without interpolation) with each LoRA B matrix scaled by the share kept."""
    s = run_tiny(tmp_path / "half", rl_interpolation=0.5)
    whole = run_tiny(tmp_path / "whole")
    run, whole_run = tmp_path / "half" / "runs" / "cs", tmp_path / "whole" / "runs" / "cs"
    _check_outputs(s, run)
    assert s["stages"]["rl"]["interpolation"] == 0.5
    kept, trained = _weights(run / "rl" / "model"), _weights(run / "rl" / "trained_model")
    plain = _weights(whole_run / "rl" / "model")
    assert not (whole_run / "rl" / "trained_model").exists()
    assert set(kept) == set(trained) == set(plain)
    assert any("lora_B" in k for k in kept)
    for k, v in trained.items():
        assert torch.equal(v, plain[k]), k  # training is the same; the share is taken after
        assert torch.equal(kept[k], v * 0.5 if "lora_B" in k else v), k
    assert s["after"]["kl/ref"] != whole["after"]["kl/ref"]


def _first_steps(path) -> list[dict]:
    run_tiny(path, relevance_weight=0.0, fluency_weight=0.0)
    rl = path / "runs" / "cs" / "rl" / "metrics.jsonl"
    return [json.loads(x) for x in rl.read_text().splitlines()]


def test_the_fluency_hinge_pays_only_below_the_sft_models_own_level(tmp_path):
    def first_step(hinge: bool) -> tuple[dict, dict]:
        s = run_tiny(tmp_path / str(hinge), relevance_weight=0.0, fluency_weight=0.5,
                     fluency_surprise=0.0, fluency_hinge=hinge)  # fmt: skip
        run = tmp_path / str(hinge) / "runs" / "cs"
        _check_outputs(s, run)
        records = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in records if "reward/fluency" in r), records[0]

    plain, _ = first_step(False)
    hinged, head = first_step(True)
    floor = head["reward/fluency_floor"]  # the SFT model's own mean, logged before step 1
    assert floor < 0
    # Step 1 samples the same reviews f_i in both runs (the floor's reviews have their own seed
    # stream); each pays min(0, f_i - floor), which lies in (f_i, min(0, f_i - floor)].
    assert plain["reward/fluency"] < hinged["reward/fluency"] <= min(
        0.0, plain["reward/fluency"] - floor) + 1e-5


def test_the_relevance_term_compares_a_review_with_its_films_title_and_synopsis(monkeypatch):
    from pavlov.llm.case_study import pipeline
    from pavlov.llm.scoring import rewards

    refs = {}

    def fake(references, encoder, tokenizer, cap):
        assert cap == 0.5
        refs.update(references)
        return rewards.NamedReward(lambda p, c: [len(refs[x]) for x in p], "relevance")

    monkeypatch.setattr(rewards, "relevance_reward", fake)
    inputs = pipeline._load_inputs(CaseStudyConfig(**TINY, relevance_weight=1.0, relevance_cap=0.5,
                                                   prompt_style="synopsis"), tiny_assets())
    assert refs["Review of Film 1:"] == "Film 1. A dog learns to sing."  # a synopsis line
    assert refs["Review of Film 2:"] == "Film 2"  # none: the title alone
    assert set(refs) == {f"Review of Film {i}:" for i in range(8)}  # train and held-out films
    policy_prompt = inputs.forms.prompt("Review of Film 1:").prompt  # read as the plain one
    assert inputs.relevance([policy_prompt], ["x"]) == [len("Film 1. A dog learns to sing.")]


def test_a_causal_reward_model_scores_the_policy(tmp_path):
    s = run_tiny(tmp_path, algo="dpo", rm_backbone="causal", rm_options={"lora": False})
    config = json.loads((tmp_path / "runs" / "cs" / "reward_model" / "model" /
                         "reward_config.json").read_text())  # fmt: skip
    assert config["kind"] == "causal" and s["reward_model"]["backbone"] == "causal"


def test_grpo_case_study_runs(tmp_path):
    s = run_tiny(tmp_path, algo="grpo", group_size=2, prompts_per_step=2)
    assert s["stages"]["rl"]["steps"] == 2


def test_a_failure_inside_the_sft_step_leaves_nothing(tmp_path):
    assets = tiny_assets()
    assets.sft_data = lambda split: [SFTExample("word " * 300, " great")]  # prompt too long
    with pytest.raises(PavlovError, match="prompt"):
        run_case_study(CaseStudyConfig(**TINY), tmp_path / "runs" / "cs", assets=assets)
    assert not (tmp_path / "runs" / "cs").exists()


def test_a_later_failure_keeps_the_finished_steps(tmp_path):
    assets = tiny_assets()
    assets.preferences = lambda split: [PreferenceExample("word " * 300, " a", " b")]
    with pytest.raises(PavlovError, match="prompt"):
        run_case_study(CaseStudyConfig(**TINY), tmp_path / "runs" / "cs", assets=assets)
    run = tmp_path / "runs" / "cs"
    assert (run / "sft" / "model").is_dir() and not (run / "reward_model").exists()
    assert json.loads((run / "run.json").read_text()) == {"status": "failed"}


def test_an_existing_run_dir_is_refused(tmp_path):
    (tmp_path / "runs" / "cs").mkdir(parents=True)
    with pytest.raises(PavlovError, match="already exists"):
        run_case_study(CaseStudyConfig(**TINY), tmp_path / "runs" / "cs", assets=tiny_assets())


# ---------------------------------------------------------------------------------------------
# Resume after a kill


RESUMABLE = {**TINY, "sft_steps": 3, "rm_steps": 3, "rl_steps": 3, "checkpoint_every": 1}


class Killed(Exception):
    """Stands for a SIGKILL: raised inside a step, with the run's cleanup switched off."""


def _kill_in(stage, monkeypatch):
    """Make ``stage`` die at its step 2 (after step 1's checkpoint), or the evaluation after
    step 3, leaving the directory as a killed process would (no cleanup, no ``run.json``)."""
    import pavlov.llm.trainers as trainers
    import pavlov.llm.trainers.online as online
    from pavlov.llm.case_study import steps
    from pavlov.run import Run

    def dying(train, module, name):
        def wrapped(*args, **kwargs):
            inner = kwargs.get("callback")

            def callback(step, record):
                if inner is not None:
                    inner(step, record)
                if step == 2:
                    raise Killed

            return train(*args, **{**kwargs, "callback": callback})

        monkeypatch.setattr(module, name, wrapped)

    if stage == "sft":
        dying(trainers.train_sft, trainers, "train_sft")
    elif stage == "reward_model":
        dying(trainers.train_reward_model, trainers, "train_reward_model")
    elif stage == "rl":  # online RL or DPO
        dying(online.train_online, online, "train_online")
        dying(trainers.train_dpo, trainers, "train_dpo")
    else:
        real = steps.evaluate

        def evaluate(cfg, model, inputs, scorer, reference):
            if reference is not None:
                raise Killed
            return real(cfg, model, inputs, scorer, reference)

        monkeypatch.setattr(steps, "evaluate", evaluate)
    close = Run.close
    monkeypatch.setattr(Run, "close", lambda self, ok=True, status="failed": close(self))


def _full_and_killed(cfg, stage, tmp_path, monkeypatch) -> tuple[dict, Path]:
    """An uninterrupted run's summary (``tmp_path/a/cs``) and the same run killed in ``stage``
    (:func:`_kill_in`; its directory ``tmp_path/b/cs`` is returned)."""
    full = run_case_study(cfg, tmp_path / "a" / "cs", assets=tiny_assets())
    run = tmp_path / "b" / "cs"
    with monkeypatch.context() as m:
        _kill_in(stage, m)
        with pytest.raises(Killed):
            run_case_study(cfg, run, assets=tiny_assets())
    return full, run


def _watch_steps(monkeypatch) -> dict[str, list[int]]:
    """``{step name: [optimizer steps taken]}`` of what the trainers do from now on."""
    import pavlov.llm.trainers as trainers
    import pavlov.llm.trainers.online as online

    seen: dict[str, list[int]] = {}
    for name, module, attr in [("sft", trainers, "train_sft"),
                               ("reward_model", trainers, "train_reward_model"),
                               ("rl", online, "train_online")]:  # fmt: skip
        def wrapped(*args, _train=getattr(module, attr), _name=name, **kwargs):
            inner = kwargs.get("callback")

            def callback(step, record):
                seen.setdefault(_name, []).append(step)
                if inner is not None:
                    inner(step, record)

            return _train(*args, **{**kwargs, "callback": callback})

        monkeypatch.setattr(module, attr, wrapped)
    return seen


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))  # the reward model: encoder and head
    assert files
    return {f"{f.name}/{k}": v for f in files for k, v in load_file(f).items()}


def _records(path: Path) -> list[dict]:
    """The logged records without their wall-clock fields."""
    timed = ("time", "seconds")
    return [{k: v for k, v in json.loads(line).items() if not any(t in k for t in timed)}
            for line in path.read_text().splitlines()]  # fmt: skip


@pytest.mark.parametrize("stage", ["sft", "reward_model", "rl", "eval_after"])
def test_a_run_killed_in_any_step_resumes_to_the_uninterrupted_result(stage, tmp_path,
                                                                       monkeypatch):
    """Killed at step 2 of a step (its step-1 checkpoint on disk), or in the evaluation after
    step 3, then resumed: the before/after figures, the final weights of every step and the
    step logs equal an uninterrupted run's, bitwise; the finished steps are not trained again."""
    cfg = CaseStudyConfig(**RESUMABLE)
    full, run = _full_and_killed(cfg, stage, tmp_path, monkeypatch)
    assert run.is_dir() and not (run / "summary.json").exists()
    order = ["sft", "reward_model", "rl"]
    done = order[: order.index(stage)] if stage in order else order
    assert [s for s in order if (run / s / "stage.json").is_file()] == done

    trained = _watch_steps(monkeypatch)
    s = run_case_study(cfg, run, assets=tiny_assets(), resume=True)
    after = order[order.index(stage) + 1 :] if stage in order else []
    assert trained == {**({stage: [2, 3]} if stage in order else {}),
                       **{later: [1, 2, 3] for later in after}}  # fmt: skip
    assert s["before"] == full["before"] and s["after"] == full["after"]
    assert s["stages"]["rl"]["steps"] == 3 and s["stages"]["sft"]["steps"] == 3
    for sub in ("sft", "reward_model", "rl"):
        a, b = _weights(tmp_path / "a" / "cs" / sub / "model"), _weights(run / sub / "model")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
        assert _records(run / sub / "metrics.jsonl") == _records(
            tmp_path / "a" / "cs" / sub / "metrics.jsonl")
    logged = [r["step"] for r in _records(run / "rl" / "metrics.jsonl")
              if "judge/train_mean" in r]  # fmt: skip
    assert logged == [1, 2, 3]  # the killed step's judge record was not lost with it
    assert not (run / "run.json").exists() and (run / "summary.json").is_file()


def test_a_dpo_step_3_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path,
                                                                         monkeypatch):
    cfg = CaseStudyConfig(**{**RESUMABLE, "algo": "dpo"})
    full, run = _full_and_killed(cfg, "rl", tmp_path, monkeypatch)
    s = run_case_study(cfg, run, assets=tiny_assets(), resume=True)
    assert s["after"] == full["after"] and s["stages"]["rl"]["steps"] == 3
    a, b = _weights(tmp_path / "a" / "cs" / "rl" / "model"), _weights(run / "rl" / "model")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)


def test_a_run_stopped_before_its_first_checkpoint_starts_that_step_again(tmp_path,
                                                                          monkeypatch):
    cfg = CaseStudyConfig(**{**RESUMABLE, "checkpoint_every": 0})
    full, run = _full_and_killed(cfg, "rl", tmp_path, monkeypatch)
    assert not (run / "rl" / "checkpoints" / "latest").exists()
    s = run_case_study(cfg, run, assets=tiny_assets(), resume=True)
    assert s["after"] == full["after"]


def test_resume_refuses_a_finished_run_and_a_directory_that_is_no_run(tmp_path):
    cfg = CaseStudyConfig(**TINY)
    run_case_study(cfg, tmp_path / "cs", assets=tiny_assets())
    with pytest.raises(PavlovError, match="has finished"):
        run_case_study(cfg, tmp_path / "cs", assets=tiny_assets(), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PavlovError, match="not a pavlov run directory"):
        run_case_study(cfg, tmp_path / "empty", assets=tiny_assets(), resume=True)


# ---------------------------------------------------------------------------------------------
# CLI


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "a2c"], "algo must be one of"),
        (["-o", "rl_steps=0"], "rl_steps must be a positive integer"),
        (["-o", "rl_stepz=3"], "unknown case_study key"),
        (["-o", "rl.ppo_epoch=2"], "unknown rl_options key"),
        (["-o", "sft.packing=maybe"], "packing"),
        (["-o", "xx.beta=1"], "prefix must be one of"),
        (["--name", "bad name"], "run name"),
        (["-o", "eval_prompts=46"], "eval_prompts must be <= 45"),
        (["--config", "{tmp}/nope.yaml"], "cannot read config file"),
        (["--config", "{tmp}/bad.yaml"], "unknown rlhf option"),
    ],
)
def test_bad_input_one_line_exit_2_no_run_dir(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "bad.yaml").write_text("case_study: {algo: ppo}\ntrainer: {}\n")
    args = ["rlhf", *[a.format(tmp=tmp_path) for a in args], "--runs-dir", str(tmp_path / "runs")]
    if "--name" not in args:
        args += ["--name", "bad"]
    code, out, err = run_cli(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pavlov: error:") and message in lines[0], err
    assert not (tmp_path / "runs" / "bad").exists()
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_cli_runs_the_case_study_with_injected_assets(tmp_path, capsys, monkeypatch):
    """`pavlov rlhf --json` end to end, with the loaders swapped for tiny ones."""
    import pavlov.llm.case_study.pipeline as cs

    monkeypatch.setattr(cs, "CaseStudyAssets", tiny_assets)
    config = tmp_path / "rlhf.yaml"
    config.write_text(
        "case_study:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY.items()) + "  algo: ppo\n"
    )
    args = ["rlhf", "--config", str(config), "--algo", "dpo", "-o", "rl_steps=1", "-o",
            "rl.beta=0.2", "--runs-dir", str(tmp_path / "runs"), "--name", "r",
            "--json"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["algo"] == "dpo" and s["stages"]["rl"]["steps"] == 1
    assert "judge: VADER compound (held out)" in out  # the before/after table
    assert "goals: judge/positive_fraction" in out and "how to read them" in out
    assert f"results in {tmp_path / 'runs' / 'r'}/" in out
    assert set(s["goals"]) >= {"judge/positive_fraction", "fluency/nll", "kl/ref"}
    saved = (tmp_path / "runs" / "r" / "config.yaml").read_text()
    assert "beta: 0.2" in saved and "algo: dpo" in saved


def test_cli_resume_continues_a_stopped_run_with_its_saved_settings(tmp_path, capsys,
                                                                    monkeypatch):
    """`pavlov rlhf --resume runs/NAME` after a failure in step 3: the run finishes with the
    settings it started with (here a config file and overrides); other options are refused."""
    import pavlov.llm.case_study.pipeline as cs

    monkeypatch.setattr(cs, "CaseStudyAssets", tiny_assets)
    config = tmp_path / "rlhf.yaml"
    config.write_text("case_study:\n" + "".join(f"  {k}: {v}\n" for k, v in RESUMABLE.items()))
    run = tmp_path / "runs" / "r"
    args = ["rlhf", "--config", str(config), "-o", "rl.beta=0.2", "--runs-dir",
            str(tmp_path / "runs"), "--name", "r", "-q"]  # fmt: skip
    with monkeypatch.context() as m:
        _kill_in("rl", m)
        with pytest.raises(Killed):
            main(args)
    capsys.readouterr()
    code, out, err = run_cli(["rlhf", "--resume", str(run), "-o", "rl_steps=9"], capsys)
    assert code == 2 and "drop -o" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["rlhf", "--resume", str(run), "--json"], capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["stages"]["rl"]["steps"] == 3
    assert "beta: 0.2" in (run / "config.yaml").read_text()
    code, out, err = run_cli(["rlhf", "--resume", str(run)], capsys)
    assert code == 2 and "has finished" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["rlhf", "--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a pavlov run directory" in err


def test_sigterm_in_the_sft_step_saves_keeps_the_run_and_prints_the_resume_command(
        tmp_path, capsys, monkeypatch):
    """SIGTERM during step 1 (before any step is finished): the SFT trainer saves a checkpoint,
    the run stays (``run.json``: interrupted), the command to continue it is printed, and it
    continues from there."""
    import os
    import signal

    import pavlov.llm.case_study.pipeline as cs
    import pavlov.llm.trainers as trainers

    monkeypatch.setattr(cs, "CaseStudyAssets", tiny_assets)
    real = trainers.train_sft

    def train_sft(*args, **kwargs):
        def callback(step, record):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        return real(*args, **{**kwargs, "callback": callback})

    config = tmp_path / "rlhf.yaml"
    config.write_text("case_study:\n" + "".join(f"  {k}: {v}\n" for k, v in RESUMABLE.items()))
    run = tmp_path / "runs" / "r"
    with monkeypatch.context() as m:
        m.setattr(trainers, "train_sft", train_sft)
        code, out, err = run_cli(["rlhf", "--config", str(config), "--runs-dir",
                                  str(tmp_path / "runs"), "--name", "r", "-q"], capsys)
    assert code == 128 + signal.SIGTERM, err
    assert f"Continue with: pavlov rlhf --resume {run}" in err
    assert json.loads((run / "run.json").read_text()) == {"status": "interrupted"}
    assert read_latest(run / "sft" / "checkpoints")[0] == "step_2"
    trained = _watch_steps(monkeypatch)
    code, out, err = run_cli(["rlhf", "--resume", str(run), "-q"], capsys)
    assert code == 0, err
    assert trained == {"sft": [3], "reward_model": [1, 2, 3], "rl": [1, 2, 3]}


# ---------------------------------------------------------------------------------------------
# Slow: the shortened demo on the embedded assets


@pytest.mark.slow
def test_the_demo_turns_reviews_positive_within_the_guards(tmp_path, capsys):
    """`make demo`'s run (SmolLM2 + LoRA, MiniLM reward model, 80 RLOO steps against it) on the
    held-out movies: the share of positive reviews (held-out judge, VADER) rises by >= 25 points
    while the reviews stay as fluent under the untouched base model and KL stays under its
    bound (issue 17's acceptance)."""
    from pavlov.llm.case_study.report import KL_BOUND

    config = Path(__file__).parents[2] / "configs" / "rlhf-movie-reviews.yaml"
    args = ["rlhf", "--config", str(config), "--runs-dir", str(tmp_path), "--name", "demo",
            "--json"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    before, after = s["before"], s["after"]
    with capsys.disabled():
        print(f"\nrlhf demo: {s['seconds']}, before {before}, after {after}")
    assert s["reward_model"]["accuracy"] >= 0.75
    # Seed 0 measured +33 points (AMD AVX-512, bf16), NLL -0.19 against the SFT model's, KL 4.4
    # (docs/benchmarks-history.md, session 14); the previous defaults (relevance uncapped, KL
    # target 4): +37 (Intel AMX, bf16), +33 (Intel, fp32), +37 (AMD), NLL -0.06 / -0.10 / -0.07,
    # KL 5.2 / 4.0 / 3.7.
    # It runs the demo, not --quick: 40 step-3 steps stop near the run's mid-way KL peak, where
    # KL and the NLL are a draw (--quick's runs: KL 4.1-6.0, NLL -0.02..+0.09 against the SFT
    # model's; other --quick settings up to KL 11).
    assert after["judge/positive_fraction"] >= before["judge/positive_fraction"] + 0.25
    assert after["fluency/nll"] <= before["fluency/nll"] + 0.05  # the guard, a draw's slack
    assert after["kl/ref"] <= KL_BOUND
    assert after["reward/mean"] > before["reward/mean"]


def test_quick_halves_step_3_and_keeps_the_rest_of_the_config():
    from pavlov.commands.rlhf import resolve_config

    opts = {"case_study": {"rm_options": {"weight_decay": 0.1}, "rl_steps": 200, "seed": 4}}
    cfg = resolve_config(opts, True, ["rm.warmup_steps=2"])
    assert (cfg.rl_steps, cfg.beta_min, cfg.seed) == (40, 0.22, 4)  # --quick wins over the file
    assert cfg.rm_options == {"weight_decay": 0.1, "warmup_steps": 2}
    full = resolve_config(opts, False, [])
    assert (full.rl_steps, full.beta_min) == (200, CaseStudyConfig().beta_min)
    assert resolve_config({}, True, ["rl_steps=10"]).rl_steps == 10  # -o wins over --quick
    demo = CaseStudyConfig()
    assert (cfg.sft_steps, cfg.rm_steps) == (demo.sft_steps, demo.rm_steps)


def test_sample_cells_show_line_breaks_and_escape_pipes():
    from pavlov.llm.case_study.report import markdown_table

    table = markdown_table(["movie", "review"], [["Up", "\n\nUp:\nUp  |  fine"], ["Heat", "  "]])
    rows = table.splitlines()[2:]
    assert rows[0] == "| Up | ⏎⏎Up:⏎Up \\| fine |"
    assert rows[1] == "| Heat | (empty) |"
