"""pavlov.llm.scoring.rewards: VADER, reward models, weighted sums, spec resolution and the
checks."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.scoring.rewards import (
    NamedReward,
    RewardError,
    WeightedSum,
    compute_rewards,
    fluency_reward,
    relevance_reward,
    resolve_reward,
    reward_model_fn,
    reward_name,
    vader_reward,
    weighted_sum,
)

POSITIVE = "The movie was great, funny and warm; I loved every minute of it."
NEGATIVE = "The film is a dull, slow mess and the plot makes no sense at all."
PROMPTS = ["Review of Up:", "Review of Cats:", "Say something:"]
REPLIES = [" ab", " abcd", " "]


def length(prompts, completions):
    return [float(len(c)) for c in completions]


def prompt_length(prompts, completions):
    return np.array([len(p) for p in prompts])  # int array: accepted


# ---------------------------------------------------------------------------------------------
# Names and VADER


def test_reward_name():
    def outer():
        def inner(p, c): ...

        return inner

    class Judge:
        def __call__(self, p, c): ...

        def score(self, p, c): ...

    assert reward_name(length) == "length"
    assert reward_name(outer()) == "inner"
    assert reward_name(lambda p, c: c) == "<lambda>"
    assert reward_name(Judge()) == "Judge"
    assert reward_name(Judge().score) == "Judge.score"
    assert reward_name(functools.partial(length)) == "length"
    assert reward_name(NamedReward(length, "chars")) == "chars"


def test_vader_scores_sentiment_and_ignores_the_prompt():
    vader = vader_reward()
    assert vader.name == "vader"
    pos, neg, neutral = vader(["x", "y", "z"], [POSITIVE, NEGATIVE, ""])
    assert pos > 0.5 and neg < -0.3 and neutral == 0.0
    assert pos == pytest.approx(0.9153) and neg == pytest.approx(-0.7506)  # vadersentiment 3.3
    assert vader([NEGATIVE], [POSITIVE]) == [pos]
    assert vader_reward("pos")(["x"], [POSITIVE]) == [pytest.approx(0.587)]
    assert vader_reward("neg").name == "vader_neg"
    with pytest.raises(ConfigError, match="vader field must be one of"):
        vader_reward("positive")


# ---------------------------------------------------------------------------------------------
# Weighted sums and compute_rewards


def test_weighted_sum_is_the_hand_computed_sum_and_keeps_each_term():
    total = weighted_sum([(length, 0.5), (prompt_length, -2.0), (length, 1.0)])
    assert [n for n, _, _ in total.terms] == ["length", "prompt_length", "length_2"]
    assert total.name == "0.5*length + -2*prompt_length + 1*length_2"
    rewards, metrics = compute_rewards(total, PROMPTS, REPLIES)
    # lengths (3, 5, 1), prompt lengths (13, 15, 14)
    expected = [1.5 * 3 - 2 * 13, 1.5 * 5 - 2 * 15, 1.5 * 1 - 2 * 14]
    assert rewards.dtype == torch.float32 and rewards.shape == (3,)
    assert rewards.tolist() == expected
    assert total.last_values["prompt_length"].tolist() == [13.0, 15.0, 14.0]
    assert total.last_values["length_2"].tolist() == [3.0, 5.0, 1.0]
    assert metrics == {"reward/length": 3.0, "reward/prompt_length": 14.0, "reward/length_2": 3.0}


def test_weighted_sum_from_a_mapping_names_its_terms_and_checks_weights():
    total = weighted_sum({"chars": (length, 2.0), "judge": (vader_reward(), 0.0)})
    rewards, metrics = compute_rewards(total, ["p", "q"], [POSITIVE, NEGATIVE])
    assert rewards.tolist() == [2.0 * len(POSITIVE), 2.0 * len(NEGATIVE)]  # weight 0: logged only
    assert metrics["reward/judge"] == pytest.approx((0.9153 - 0.7506) / 2)
    assert set(metrics) == {"reward/chars", "reward/judge"}
    for bad in (math.nan, math.inf, "1", True):
        with pytest.raises(ConfigError, match="weight of reward 'length'"):
            weighted_sum([(length, bad)])
    with pytest.raises(ConfigError, match="at least one term"):
        weighted_sum([])


def test_compute_rewards_of_one_function_and_of_tensors_and_arrays():
    rewards, metrics = compute_rewards(length, PROMPTS, REPLIES)
    assert rewards.tolist() == [3.0, 5.0, 1.0] and metrics == {"reward/length": 3.0}
    as_tensor = NamedReward(lambda p, c: torch.tensor([1, 2, 3], requires_grad=False), "t")
    assert compute_rewards(as_tensor, PROMPTS, REPLIES)[0].tolist() == [1.0, 2.0, 3.0]
    as_bools = NamedReward(lambda p, c: np.array([True, False, True]), "b")
    rewards, metrics = compute_rewards(as_bools, PROMPTS, REPLIES)
    assert rewards.tolist() == [1.0, 0.0, 1.0] and metrics == {"reward/b": pytest.approx(2 / 3)}
    empty, metrics = compute_rewards(length, [], [])
    assert empty.shape == (0,) and metrics == {}


def _raises(p, c):
    raise ValueError("model exploded\nsecond line")


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1.0, 2.0], r"reward function 'bad' returned 2 values for 3 completions"),
        ([1.0, math.nan, 0.0], r"'bad' returned nan for completions\[1\] \(' abcd'\)"),
        ([1.0, 0.0, -math.inf], r"'bad' returned -inf for completions\[2\] \(' '\)"),
        ([1.0, 1e300, 0.0], r"'bad' returned 1e\+300 for completions\[1\]"),  # inf in float32
        ([1.0, "0.5", 0.0], r"'bad' returned '0.5' for completions\[1\], not a number"),
        ([1.0, None, 0.0], r"'bad' returned None for completions\[1\], not a number"),
        ([1.0, [2.0], 0.0], r"'bad' returned \[2.0\] for completions\[1\], not a number"),
        (0.5, r"'bad' returned a float, not a list of 3 numbers"),
        ("abc", r"'bad' returned a str, not a list of 3 numbers"),
        (torch.ones(3, 1), r"'bad' returned a tensor of shape \(3, 1\) for 3 completions"),
        (torch.ones(3, dtype=torch.complex64), r"'bad' returned a torch.complex64 tensor"),
        (np.array([0.0, np.nan, 1.0]), r"'bad' returned nan for completions\[1\]"),
    ],
)
def test_bad_rewards_raise_naming_the_function(returned, message):
    bad = NamedReward(lambda p, c: returned, "bad")
    with pytest.raises(RewardError, match=message) as info:
        compute_rewards(bad, PROMPTS, REPLIES)
    assert isinstance(info.value, PavlovError) and "\n" not in str(info.value)


def test_a_raising_function_is_named_with_the_first_line_of_its_error():
    with pytest.raises(RewardError) as info:
        compute_rewards(_raises, PROMPTS, REPLIES)
    assert str(info.value) == "reward function '_raises' raised ValueError: model exploded"
    assert isinstance(info.value.__cause__, ValueError)


def test_a_failing_term_of_a_weighted_sum_is_named():
    total = weighted_sum([(length, 1.0), (NamedReward(lambda p, c: [0.0] * 2, "short"), 1.0)])
    with pytest.raises(RewardError, match="^reward function 'short' returned 2 values for 3"):
        compute_rewards(total, PROMPTS, REPLIES)
    total = weighted_sum([(length, 1.0), (_raises, 0.5)])
    with pytest.raises(RewardError, match="^reward function '_raises' raised ValueError"):
        total(PROMPTS, REPLIES)  # checked when called directly, too


def test_prompt_and_completion_counts_must_match():
    with pytest.raises(ValueError, match="2 prompts but 3 completions"):
        compute_rewards(length, PROMPTS[:2], REPLIES)


# ---------------------------------------------------------------------------------------------
# resolve_reward


def test_resolve_reward_of_callables_names_lists_and_dicts():
    assert resolve_reward(length) is length
    assert resolve_reward("vader").name == "vader"
    assert resolve_reward("VADER")(["p"], [POSITIVE]) == [pytest.approx(0.9153)]
    assert resolve_reward([length]) is length  # one term of weight 1: the function itself

    total = resolve_reward(["vader", (length, 0.5)])
    assert isinstance(total, WeightedSum)
    assert [(n, w) for n, _, w in total.terms] == [("vader", 1.0), ("length", 0.5)]
    rewards, _ = compute_rewards(total, ["p"], [POSITIVE])
    assert rewards.item() == pytest.approx(0.9153 + 0.5 * len(POSITIVE))

    total = resolve_reward({"vader": -1.0, length: 2})
    assert [(n, w) for n, _, w in total.terms] == [("vader", -1.0), ("length", 2.0)]
    assert compute_rewards(total, ["p"], [NEGATIVE])[0].item() == pytest.approx(
        0.7506 + 2 * len(NEGATIVE)
    )
    single = resolve_reward((length, 3.0))  # one (spec, weight) pair
    assert compute_rewards(single, ["p"], ["abcd"])[0].tolist() == [12.0]


def test_resolve_reward_rejects_unknown_specs_in_one_line(tmp_path):
    cases = [
        ("vadr", r"^unknown reward 'vadr': not 'vader' and no such reward-model directory$"),
        (str(tmp_path / "missing"), r"unknown reward '.*missing': not 'vader'"),
        (tmp_path, r"is not a pavlov reward model \(no reward_config.json\)$"),
        (3, r"a reward must be a callable, 'vader', .*; got int 3$"),
        ([], r"no reward function given"),
        (["vader", "nope"], r"unknown reward 'nope'"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            resolve_reward(spec)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Reward models


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    """A tiny untrained causal reward model saved as ``<run>/model``; its in-memory copy."""
    from pavlov.llm.models.tiny import tiny_causal_lm
    from pavlov.llm.trainers.reward_model import RewardModel, save_reward_model

    backbone, tok = tiny_causal_lm()
    torch.manual_seed(0)
    rm = RewardModel(backbone, "causal")
    run = tmp_path_factory.mktemp("rewards") / "my_rm"
    meta = {"mode": "pairwise", "max_length": 64, "chat": False, "use_prompt": True}
    save_reward_model(rm, tok, run / "model", {**meta, "base_model": None})
    return run, rm.eval(), tok


def test_a_saved_reward_model_resolves_to_a_named_reward(saved_rm):
    from pavlov.llm.trainers.reward_model import collate_rows, encode

    run, rm, tok = saved_rm
    ids, mask = collate_rows(encode(tok, "causal", PROMPTS, REPLIES, 64), tok.pad_token_id)
    with torch.no_grad():
        expected = rm(ids, mask)  # (3,)
    assert len(set(expected.tolist())) == 3  # distinct inputs give distinct rewards

    for spec in (run, str(run / "model")):
        fn = resolve_reward(spec)
        assert fn.name == "my_rm"
        rewards, metrics = compute_rewards(fn, PROMPTS, REPLIES)
        assert rewards.shape == (3,) and torch.isfinite(rewards).all()
        assert rewards.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
        assert metrics == {"reward/my_rm": pytest.approx(expected.mean().item(), abs=1e-5)}

    scorer = resolve_reward(run).fn  # an already loaded RewardScorer
    assert resolve_reward(scorer).name == "my_rm"
    assert reward_model_fn(scorer, name="judge").name == "judge"
    assert reward_model_fn(length).name == "reward_model"  # no saved path to name it after


# ---------------------------------------------------------------------------------------------
# Relevance (the embedded MiniLM sentence encoder)


CATCH = ("Catch Me If You Can. An FBI agent tracks down and catches a young con artist who "
         "successfully impersonated an airline pilot, doctor, assistant attorney general")


def test_relevance_ranks_reviews_by_how_much_they_are_about_the_film():
    catch = "Review of Catch Me If You Can:"
    term = relevance_reward({
        catch: CATCH,
        "Review of Alien:": "Alien. A commercial spaceship crew meets a deadly creature.",
    })  # fmt: skip
    reviews = ["A wonderful film about a con artist who impersonates a pilot.",
               "Catch Me If You Can is a wonderful film.", "A wonderful film.",
               "A great addition to any holiday decor."]  # fmt: skip
    rewards, metrics = compute_rewards(term, [catch] * 4, reviews)
    assert rewards[0] > rewards[1] > rewards[2] > rewards[3]  # plot > title > generic > other
    assert rewards[0] > 0.6 and abs(rewards[3]) < 0.1 and set(metrics) == {"reward/relevance"}
    same, _ = compute_rewards(term, ["Review of Alien:"],
                              ["Alien. A commercial spaceship crew meets a deadly creature."])
    assert same[0] == pytest.approx(1.0, abs=1e-5)  # its own reference
    with pytest.raises(RewardError, match="no reference text for prompt 'Review of Up:'"):
        compute_rewards(term, ["Review of Up:"], ["A fine film."])
    # Capped at 0.4: the plot and title reviews earn the cap, the others their own cosine.
    capped, _ = compute_rewards(relevance_reward({catch: CATCH}, cap=0.4), [catch] * 4, reviews)
    assert capped[:2].tolist() == pytest.approx([0.4, 0.4])
    assert capped[2:].tolist() == pytest.approx(rewards[2:].tolist(), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Repetition


def test_repetition_is_minus_the_share_of_a_reviews_bigrams_seen_before_in_it():
    from pavlov.llm.scoring.rewards import repetition_reward

    term = repetition_reward()
    replies = [
        "A gripping, moving drama.",  # 3 bigrams, all distinct
        "Harvard Man: Harvard Man: Harvard Man: Harvard Man:",  # 7 bigrams, 2 distinct
        "Fubar is a sweeping, sweeping, sweeping masterpiece.",  # 6 bigrams, 5 distinct
        "Wow",  # no bigram
        "",
    ]
    rewards, metrics = compute_rewards(term, ["Review of X:"] * 5, replies)
    assert term.name == "repetition" and set(metrics) == {"reward/repetition"}
    assert rewards.tolist() == pytest.approx([0.0, 2 / 7 - 1, 5 / 6 - 1, 0.0, 0.0])
    # Word unigrams: "gripping and gripping" repeats a word, not a bigram.
    once = repetition_reward(n=1)(["p"], ["gripping and gripping"])
    assert once == pytest.approx([2 / 3 - 1])
    with pytest.raises(ValueError, match="n must be >= 1"):
        repetition_reward(n=0)


# ---------------------------------------------------------------------------------------------
# Fluency (a frozen causal LM)


def test_fluency_is_the_mean_log_likelihood_of_each_completion_given_its_prompt():
    from pavlov.llm.models.tiny import tiny_causal_lm

    model, tok = tiny_causal_lm(seed=3)
    term = fluency_reward(model, tok, batch_size=2, empty=-99.0)  # 4 rows: two batches
    prompts = ["Review of Up:", "Review of a long film title:", "Say:", "Review of Up:"]
    replies = [" great fun", " dull", "", " a warm and funny tale"]
    rewards, metrics = compute_rewards(term, prompts, replies)
    assert set(metrics) == {"reward/fluency"} and term.name == "fluency"
    for i, (p, c) in enumerate(zip(prompts, replies, strict=True)):
        if not c:
            assert rewards[i] == -99.0  # nothing to average: `empty`
            continue
        x = tok(p)["input_ids"]
        y = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():  # one unpadded row: log p(y_t | x, y_<t), averaged over y
            logp = model(torch.tensor([x + y])).logits[0].float().log_softmax(-1)
        expected = np.mean([logp[len(x) + t - 1, y[t]].item() for t in range(len(y))])
        assert rewards[i].item() == pytest.approx(expected, abs=1e-4)
    assert -math.log(512) - 3 < rewards[0] < 0  # about log(1/V) under a random tiny model
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # With a floor only the shortfall below it pays (a hinge): 0 at or above it.
    floor = float(np.median(rewards.numpy()))
    hinged = fluency_reward(model, tok, batch_size=2, empty=-99.0, floor=floor)
    got, _ = compute_rewards(hinged, prompts, replies)
    expected = [min(0.0, float(r) - floor) for r in rewards]
    assert got.tolist() == pytest.approx(expected, abs=1e-4)  # float32 rewards
    assert sum(g == 0 for g in got.tolist()) >= 2 and min(got.tolist()) < 0
    # With a surprise threshold tau only each token's surprisal beyond tau pays, averaged.
    tau = 6.3  # between the tiny model's token surprisals (about log 512 = 6.24, +-)
    sharp = fluency_reward(model, tok, batch_size=2, empty=-99.0, surprise=tau)
    got, _ = compute_rewards(sharp, prompts, replies)
    for i, (p, c) in enumerate(zip(prompts, replies, strict=True)):
        if not c:
            assert got[i] == -99.0
            continue
        x, y = tok(p)["input_ids"], tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([x + y])).logits[0].float().log_softmax(-1)
        nats = [-logp[len(x) + t - 1, y[t]].item() for t in range(len(y))]
        assert got[i].item() == pytest.approx(-np.mean([max(0.0, n - tau) for n in nats]),
                                              abs=1e-4)  # fmt: skip
        assert rewards[i] < got[i] < 0  # only the excess: above the plain mean, below 0
    # a threshold above every token's surprisal (all are < 6.5 nats here): nothing pays
    lax, _ = compute_rewards(fluency_reward(model, tok, batch_size=2, empty=-99.0, surprise=6.5),
                             prompts, replies)  # fmt: skip
    assert lax.tolist() == [0.0, 0.0, -99.0, 0.0]
    with pytest.raises(ValueError, match="alternatives"):
        fluency_reward(model, tok, floor=-3.0, surprise=6.0)
    with pytest.raises(ValueError, match="surprise must be > 0"):
        fluency_reward(model, tok, surprise=0.0)
