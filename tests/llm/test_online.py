"""Online RL trainers (PPO-RLHF, GRPO, RLOO, REINFORCE) and their math, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.cpu import CpuConfig
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.llm.trainers import load_resume
from pavlov.llm.trainers.online import OnlineConfig, train_online
from pavlov.math import (
    adaptive_kl_coef,
    aggregate_token_loss,
    apply_missing_eos_penalty,
    gae,
    group_advantages,
    last_token_index,
    ppo_clip_loss,
    ppo_clip_terms,
    rlhf_token_rewards,
    rloo_advantages,
    token_gae,
)
from pavlov.run import Run

PROMPTS = ["hello there", "the cat", "a dog sat", "we"]
ALGOS = ["ppo", "grpo", "rloo", "reinforce"]


def vowel_share(prompts, completions):
    """Share of vowels in the completion: ~0.2 for a random tiny model, 1 at best."""
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def config(algo: str, **kw) -> OnlineConfig:
    base = dict(algo=algo, max_steps=1, prompts_per_step=4, max_new_tokens=8, learning_rate=1e-3)
    return OnlineConfig(**{**base, **kw})


# --- math ------------------------------------------------------------------------------------


def test_rlhf_rewards_put_the_score_on_the_last_real_token_only():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0, -9.0], [-0.5, -9.0, -9.0, -9.0]])
    rewards, kl = rlhf_token_rewards(torch.tensor([3.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    expected_kl = torch.tensor([[0.5, 0.0, 0.5, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(kl, expected_kl)
    expected = torch.tensor([[-0.05, 0.0, -0.05 + 3.0, 0.0], [0.05 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    assert last_token_index(mask).tolist() == [2, 0]


def test_token_gae_over_a_mask_with_holes_steps_over_the_environments_tokens():
    """A multi-turn episode's agent tokens are the time steps: the last token of a turn
    bootstraps from the value of the next turn's first token, across the game's answer."""
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    rewards = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    values = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    adv, ret = token_gae(rewards, values, mask, gamma=0.99, lam=0.9)
    for b in range(2):
        idx = mask[b].nonzero().flatten()
        dense = torch.ones(1, len(idx), dtype=torch.bool)
        a, r = token_gae(rewards[b, idx][None], values[b, idx][None], dense, 0.99, 0.9)
        torch.testing.assert_close(adv[b, idx], a[0])
        torch.testing.assert_close(ret[b, idx], r[0])
        assert adv[b, ~mask[b]].abs().sum() == 0 and ret[b, ~mask[b]].abs().sum() == 0
    assert last_token_index(mask).tolist() == [6, 2]
    assert last_token_index(torch.zeros(1, 3, dtype=torch.bool)).tolist() == [-1]


def test_token_gae_is_gae_on_each_response_as_an_episode():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    rewards = torch.tensor([[0.1, -0.2, 2.0, 7.0], [0.3, 1.0, 5.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0], [0.2, 0.1, 9.0, 9.0]])
    adv, ret = token_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for b, n in enumerate([3, 2]):  # hand loop over the real tokens only
        a, expected = 0.0, []
        for t in reversed(range(n)):
            nxt = values[b, t + 1] if t + 1 < n else 0.0
            a = rewards[b, t] + 0.9 * nxt - values[b, t] + 0.9 * 0.8 * a
            expected.insert(0, float(a))
        torch.testing.assert_close(adv[b, :n], torch.tensor(expected))
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0
        torch.testing.assert_close(ret[b, :n], adv[b, :n] + values[b, :n])
    # and it is pavlov.math.returns.gae, time-major, terminated at the last token
    term = torch.tensor([[0, 0], [0, 1], [1, 0], [0, 0]], dtype=torch.bool)
    ref, _ = gae(rewards.T * mask.T, values.T * mask.T, term, torch.zeros_like(term),
                 torch.zeros(2), 0.9, 0.8)  # fmt: skip
    torch.testing.assert_close(adv, ref.T * mask)


def test_group_and_leave_one_out_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    torch.testing.assert_close(
        group_advantages(r, 4, scale_std=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    )
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, 0.57735
    torch.testing.assert_close(group_advantages(r, 4)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) /
                               (std + 1e-4))  # fmt: skip
    # RLOO: 1 - mean(0, 0, 1) = 2/3; 0 - mean(1, 0, 1) = -2/3
    torch.testing.assert_close(
        rloo_advantages(r, 4), torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    )


def test_loss_aggregations_weigh_tokens_or_sequences():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert float(aggregate_token_loss(x, mask, "token")) == pytest.approx(7 / 5)
    assert float(aggregate_token_loss(x, mask, "sequence")) == pytest.approx(2.0)
    assert float(aggregate_token_loss(x, mask, "constant")) == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_token_loss(x, mask, "mean")


def test_ppo_clip_terms_reduce_to_ppo_clip_loss():
    g = torch.Generator().manual_seed(0)
    new, old, adv = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.rand(3, 5, generator=g) > 0.3
    terms, ratio = ppo_clip_terms(new, old, adv, 0.2)
    loss, _ = ppo_clip_loss(new, old, adv, 0.2, mask)
    torch.testing.assert_close(loss, terms[mask].mean())
    torch.testing.assert_close(ratio, (new - old).exp())


def test_adaptive_kl_and_missing_eos_penalty():
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(
        0.1 * (1 + 0.2 * 0.1)
    )  # error clipped at +0.2
    assert adaptive_kl_coef(0.1, kl=5.4, target=6.0, horizon=100, n_steps=10) == pytest.approx(
        0.1 * (1 - 0.1 * 0.1)
    )
    # a floor: the leash relaxes no further than beta_min, and tightens freely above it
    assert adaptive_kl_coef(0.1, kl=0.0, target=6.0, horizon=100, n_steps=10, minimum=0.1) == 0.1
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=100, n_steps=10,
                            minimum=0.1) == pytest.approx(0.102)  # fmt: skip
    # a ceiling: the leash tightens no further than beta_max (no windup after a KL peak)
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=100, n_steps=10,
                            maximum=0.101) == 0.101  # fmt: skip
    assert adaptive_kl_coef(0.1, kl=0.0, target=6.0, horizon=100, n_steps=10,
                            maximum=0.101) == pytest.approx(0.098)  # fmt: skip
    out = apply_missing_eos_penalty(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), 3.0)
    assert out.tolist() == [1.0, -1.0]


# --- trainers --------------------------------------------------------------------------------


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("algo", ALGOS)
def test_first_step_has_zero_kl_ratio_one_and_changes_every_parameter(algo, replay):
    model, tok = tiny_causal_lm()
    before = snapshot(model)
    cfg = config(algo, cpu=CpuConfig(replay_rollout=replay))
    out = train_online(cfg, model, tok, PROMPTS, vowel_share)
    rec = out.history[0]
    if replay:  # the policy's log-probs are the decode's: the reference's to float32 round-off
        assert abs(rec["kl/ref"]) <= 1e-6
    else:  # policy = reference at step 0, computed alike
        assert rec["kl/ref"] == 0.0
    assert rec["policy/ratio_mean"] == 1.0 and rec["policy/clip_fraction"] == 0.0
    assert rec["policy/approx_kl"] == 0.0
    after = snapshot(out.model)
    unchanged = [n for n, w in before.items() if torch.equal(w, after[n])]
    assert not unchanged
    n = 4 * (1 if algo in ("ppo", "reinforce") else 4)
    assert rec["response/length"] == 8.0 and out.steps == 1
    assert 0.0 <= rec["reward/mean"] <= 1.0 and rec["time/step"] > 0
    assert ("value/loss" in rec) == (algo == "ppo")
    assert ("kl/loss" in rec) == (algo == "grpo")
    assert len(out.history) == 1 and n > 0


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_several_updates_per_batch_start_from_ratio_one(algo):
    """With a negligible learning rate every minibatch's ratio stays 1: the old pass matches."""
    model, tok = tiny_causal_lm()
    cfg = config(algo, n_epochs=2, num_minibatches=2, learning_rate=1e-12)
    rec = train_online(cfg, model, tok, PROMPTS, vowel_share).history[0]
    assert rec["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert rec["policy/approx_kl"] < 1e-9


@pytest.mark.parametrize("algo", ALGOS)
def test_each_algorithm_learns_a_simple_reward(algo):
    """Vowel share of the completion: ~0.2 for the random model; >= 0.45 after 80 steps (PPO,
    GRPO and RLOO reach 1.0; REINFORCE plateaus at 0.5)."""
    model, tok = tiny_causal_lm()
    lr = 1e-2 if algo in ("grpo", "rloo") else 2e-2  # 2e-2 makes the group methods collapse
    cfg = config(algo, max_steps=80, learning_rate=lr, beta=0.01 if algo == "ppo" else 0.0)
    hist = train_online(cfg, model, tok, PROMPTS, vowel_share).history
    first = sum(r["reward/mean"] for r in hist[:5]) / 5
    last = sum(r["reward/mean"] for r in hist[-5:]) / 5
    assert first < 0.3
    assert last >= 0.45, (first, last)


def test_lora_uses_the_base_as_reference_and_trains_adapters_only():
    model, tok = tiny_causal_lm()
    cfg = config("grpo", lora=True, lora_r=4, max_steps=2, learning_rate=1e-2)
    out = train_online(cfg, model, tok, PROMPTS, vowel_share)
    assert out.history[0]["kl/ref"] == 0.0 and out.history[1]["kl/ref"] != 0.0
    trained = {n for n, p in out.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)


def test_bad_rewards_stop_the_run_before_any_update():
    model, tok = tiny_causal_lm()
    before = snapshot(model)

    def broken(prompts, completions):
        return [float("nan")] * len(completions)

    with pytest.raises(PavlovError, match="broken"):
        train_online(config("ppo"), model, tok, PROMPTS, broken)
    for name, w in snapshot(model).items():
        assert torch.equal(w, before[name])

    def short(prompts, completions):
        return [1.0]

    with pytest.raises(PavlovError, match="short.*1 value"):
        train_online(config("grpo"), tiny_causal_lm()[0], tok, PROMPTS, short)


def test_missing_eos_penalty_and_adaptive_kl_show_in_the_records():
    model, tok = tiny_causal_lm()
    cfg = config("rloo", max_steps=3, beta=0.1, target_kl=1e-6, missing_eos_penalty=5.0,
                 learning_rate=1e-2, normalize_advantage=False)  # fmt: skip
    hist = train_online(cfg, model, tok, PROMPTS, vowel_share).history
    rec = hist[0]
    assert rec["response/eos_rate"] == 0.0  # 8 tokens of a random model: never EOS
    assert rec["reward/with_kl"] == pytest.approx(rec["reward/mean"] - 5.0, abs=1e-5)
    assert hist[0]["kl/coef"] == 0.1 and hist[1]["kl/coef"] == pytest.approx(
        0.1 * (1 - 0.2 * 16 / 10000)
    )
    for prev, nxt in zip(hist, hist[1:], strict=False):  # the controller, each step
        expected = adaptive_kl_coef(prev["kl/coef"], prev["kl/ref"], 1e-6, 10000, 16)
        assert nxt["kl/coef"] == pytest.approx(expected, rel=1e-6)
    assert hist[2]["kl/coef"] != hist[1]["kl/coef"]


def test_the_kl_controller_reads_a_moving_average_with_kl_smoothing():
    """``kl_smoothing`` s: the controller reads ``ema = s * ema + (1 - s) * kl`` of the batches'
    KL instead of each batch's own (one batch of 8 reviews swings 1-18 nats in the demo)."""
    model, tok = tiny_causal_lm()
    cfg = config("rloo", max_steps=4, beta=0.1, target_kl=0.2, kl_smoothing=0.5, kl_horizon=16,
                 learning_rate=1e-2)  # fmt: skip
    hist = train_online(cfg, model, tok, PROMPTS, vowel_share).history
    ema, coef, raw = None, 0.1, []
    for rec in hist:
        assert rec["kl/coef"] == pytest.approx(coef, rel=1e-9)
        raw.append(adaptive_kl_coef(coef, rec["kl/ref"], 0.2, 16, 16))
        ema = rec["kl/ref"] if ema is None else 0.5 * ema + 0.5 * rec["kl/ref"]
        coef = adaptive_kl_coef(coef, ema, 0.2, 16, 16)
    assert hist[2]["kl/ref"] > 0.1  # the policy moved: the average lags the batch's KL
    assert hist[3]["kl/coef"] != pytest.approx(raw[2], rel=1e-3)  # what the raw KL would give
    with pytest.raises(ConfigError, match=r"kl_smoothing must be in \[0, 1\), got 1.0"):
        config("rloo", target_kl=1.0, kl_smoothing=1.0)


def test_beta_min_keeps_the_controller_from_relaxing_the_leash_below_it():
    model, tok = tiny_causal_lm()
    cfg = config("rloo", max_steps=3, beta=0.1, target_kl=1e3, beta_min=0.08, kl_horizon=16,
                 learning_rate=1e-2)  # fmt: skip
    coefs = [r["kl/coef"] for r in train_online(cfg, model, tok, PROMPTS, vowel_share).history]
    assert coefs == pytest.approx([0.1, 0.1 * 0.8, 0.08])  # 0.064 without the floor
    with pytest.raises(ConfigError, match="beta_min"):
        config("rloo", target_kl=1.0, beta_min=-0.1)


def test_beta_max_keeps_the_controller_from_tightening_the_leash_above_it():
    model, tok = tiny_causal_lm()
    cfg = config("rloo", max_steps=4, beta=0.1, target_kl=1e-6, beta_max=0.09, kl_horizon=16,
                 learning_rate=1e-2)  # fmt: skip
    coefs = [r["kl/coef"] for r in train_online(cfg, model, tok, PROMPTS, vowel_share).history]
    # the first step's KL is 0 (the policy is its reference): 20% down; then up, at most to 0.09
    assert coefs == pytest.approx([0.1, 0.08, 0.09, 0.09])  # 0.096, 0.1152 without it
    with pytest.raises(ConfigError, match="beta_max"):
        config("rloo", target_kl=1.0, beta_min=0.2, beta_max=0.1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(algo="grpo", group_size=1), "group_size >= 2"),
        (dict(algo="ppo", prompts_per_step=3, num_minibatches=2), "num_minibatches"),
        (dict(algo="dpo"), "algo"),
        (dict(algo="grpo", target_kl=1.0), "target_kl"),
        (dict(algo="ppo", beta=-1.0), "beta"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        OnlineConfig(**kw)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    class Interrupt(Exception):
        pass

    def stop_at(n):
        def cb(step, _):
            if step == n:
                raise Interrupt

        return cb

    def go(run=None, resume=None, callback=None):
        model, tok = tiny_causal_lm()
        cfg = config("ppo", max_steps=4, checkpoint_every=2, learning_rate=1e-2,
                     n_epochs=2, num_minibatches=2)  # fmt: skip
        return train_online(cfg, model, tok, PROMPTS, vowel_share, run=run, resume=resume,
                            callback=callback)  # fmt: skip

    full = snapshot(go().model)
    with pytest.raises(Interrupt), Run.create(tmp_path, "r", {}) as run:
        go(run=run, callback=stop_at(3))
    ckpt, state = load_resume(tmp_path / "r")
    assert state["step"] == 2 and "value_head" in state["task"]
    with Run.reopen(tmp_path / "r", {}) as run:
        out = go(run=run, resume=(ckpt, state))
    assert out.steps == 4
    for name, w in snapshot(out.model).items():
        torch.testing.assert_close(w, full[name], atol=0, rtol=0)
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()
