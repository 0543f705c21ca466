"""Multi-turn episodes (`pavlov.llm.generation.episodes`) and agent training
(`pavlov.llm.trainers.agent`) on a tiny random model: the cache across turns, the chat fragments,
exact token ids, the agent mask in the loss, determinism."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from pavlov.envs.text import TextGameEnv
from pavlov.llm.generation.episodes import ChatTurns, episodes_rollout, play_group
from pavlov.llm.generation.rollout import SamplingConfig
from pavlov.llm.models.tiny import tiny_causal_lm
from pavlov.llm.scoring.logprobs import token_logprobs
from pavlov.llm.trainers.agent import AgentConfig, episode_sampler, train_agent
from pavlov.llm.trainers.online import OnlineConfig, Played, train_online

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


def sampling(tok, seed=0, tokens=6):
    return SamplingConfig(max_new_tokens=tokens, temperature=1.0, eos_token_ids=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, seed=seed)  # fmt: skip


def test_chat_fragments_are_the_template_of_the_whole_conversation():
    _, tok = tiny_causal_lm()
    turns = ChatTurns(tok)
    reply = list(tok("go north", add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    ids = turns.prompt("You are in a hall.") + reply + turns.between("You can't go north.")
    conversation = [{"role": "system", "content": turns.system},
                    {"role": "user", "content": "You are in a hall."},
                    {"role": "assistant", "content": "go north"},
                    {"role": "user", "content": "You can't go north."}]  # fmt: skip
    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == text


def test_the_cache_across_turns_gives_the_log_probs_of_one_forward_over_the_episode():
    model, tok = tiny_causal_lm()
    episodes = play_group(model, tok, TextGameEnv, [3, 4], sampling(tok), max_turns=3)
    assert all(e.turns == 3 for e in episodes)  # a random model never wins
    r = episodes_rollout(episodes, tok.pad_token_id)
    with torch.no_grad():
        full = token_logprobs(model.eval(), r.sequences, r.attention_mask, r.prompt_length)
    mask = r.response_mask
    torch.testing.assert_close(full[mask], r.logprobs[mask], atol=1e-4, rtol=0)
    # the environment's tokens are context: attended to, never in the mask
    env_tokens = r.attention_mask[:, r.prompt_length:].bool() & ~mask
    assert int(env_tokens.sum()) > int(mask.sum())


def test_token_ids_are_kept_as_sampled_never_re_tokenized():
    model, tok = tiny_causal_lm()
    episodes = play_group(model, tok, TextGameEnv, [1, 2, 3, 4], sampling(tok, seed=5),
                          max_turns=2)  # fmt: skip
    r = episodes_rollout(episodes, tok.pad_token_id)
    drift = 0
    for i, e in enumerate(episodes):
        P, n = r.prompt_length, len(e.ids)
        assert r.sequences[i, P : P + n].tolist() == e.ids
        assert r.sequences[i, P - len(e.prompt_ids) : P].tolist() == e.prompt_ids
        # the commands the game received are the decoded samples ...
        first_turn = e.ids[: e.agent.index(False)]
        assert e.commands[0] == tok.decode(first_turn, skip_special_tokens=True).strip()
        # ... and re-encoding the decoded history would not give the sampled ids back
        text = tok.decode(e.prompt_ids + e.ids)
        drift += tok(text, add_special_tokens=False)["input_ids"] != e.prompt_ids + e.ids
    assert drift >= 1  # random tokens do not round-trip: why the ids are kept


def test_episodes_are_deterministic_per_seed():
    model, tok = tiny_causal_lm()
    a = play_group(model, tok, TextGameEnv, [7, 7], sampling(tok, seed=3), max_turns=2)
    b = play_group(model, tok, TextGameEnv, [7, 7], sampling(tok, seed=3), max_turns=2)
    c = play_group(model, tok, TextGameEnv, [7, 7], sampling(tok, seed=4), max_turns=2)
    assert [e.ids for e in a] == [e.ids for e in b] != [e.ids for e in c]
    assert a[0].ids != a[1].ids  # the two episodes of a group differ


def _fixed_sampler(rollout, scores):
    def sample(model, idx, sampling):
        return Played(copy.deepcopy(rollout), ["x"] * len(idx), scores.clone(), {})

    return sample


def _one_step(model, tok, rollout, scores):
    cfg = OnlineConfig(algo="reinforce", max_steps=1, prompts_per_step=2, group_size=1,
                       max_new_tokens=4, learning_rate=1e-2, beta=0.0, seed=0)  # fmt: skip
    model = copy.deepcopy(model)
    train_online(cfg, model, tok, ["a", "b"], None, sampler=_fixed_sampler(rollout, scores))
    return model


def test_the_environment_s_tokens_are_masked_out_of_the_loss():
    model, tok = tiny_causal_lm()
    episodes = play_group(model, tok, TextGameEnv, [3, 4], sampling(tok), max_turns=2)
    r = episodes_rollout(episodes, tok.pad_token_id)
    scores = torch.tensor([1.0, -1.0], dtype=torch.float64)
    base = _one_step(model, tok, r, scores)
    # the final answer of the game comes after the last agent token: changing it can change
    # nothing the agent's tokens condition on, so only a loss on it could move the weights
    last_agent = int(r.response_mask[0].nonzero().max()) + r.prompt_length
    perturbed = replace(r, sequences=r.sequences.clone())
    tail = perturbed.sequences[0, last_agent + 1 :]
    live = r.attention_mask[0, last_agent + 1 :].bool()
    tail[live] = (tail[live] + 7) % 200
    same = _one_step(model, tok, perturbed, scores)
    for (name, p), q in zip(base.named_parameters(), same.parameters(), strict=True):
        assert torch.equal(p, q), name
    # the control: the same perturbation with those tokens in the mask moves the weights
    masked = replace(perturbed, response_mask=r.response_mask.clone())
    masked.response_mask[0, last_agent + 1 - r.prompt_length :] = live
    moved = _one_step(model, tok, masked, scores)
    assert any(not torch.equal(p, q) for p, q in zip(base.parameters(), moved.parameters(),
                                                      strict=True))  # fmt: skip


def test_agent_training_runs_and_reports_episodes():
    model, tok = tiny_causal_lm()
    cfg = OnlineConfig(algo="grpo", max_steps=2, prompts_per_step=1, group_size=2,
                       max_new_tokens=5, learning_rate=1e-3, beta=0.04)  # fmt: skip
    out = train_agent(cfg, AgentConfig(train_games=4, max_turns=2), model, tok)
    last = out.history[-1]
    assert out.steps == 2 and last["episode/turns"] == 2.0 and last["episode/won"] == 0.0
    assert last["episode/tokens"] > 0 and last["kl/ref"] == pytest.approx(0.0, abs=1e-6)
    sample = episode_sampler(AgentConfig(train_games=2), tok, [0, 1])
    played = sample(model, [0, 1], sampling(tok))
    assert played.rollout.sequences.shape[0] == 2 and played.scores.shape == (2,)


def test_ppo_trains_agents_with_a_value_on_the_agents_tokens():
    model, tok = tiny_causal_lm()
    cfg = OnlineConfig(algo="ppo", max_steps=2, prompts_per_step=1, group_size=2,
                       max_new_tokens=5, learning_rate=1e-3, beta=0.04)  # fmt: skip
    out = train_agent(cfg, AgentConfig(train_games=4, max_turns=2), model, tok)
    last = out.history[-1]  # (a tiny random model scores nothing: the GAE itself is tested
    # on masks with holes in test_online.py)
    assert out.steps == 2 and "value/explained_variance" in last and "value/loss" in last
    assert last["episode/turns"] == 2.0 and last["kl/ref"] == pytest.approx(0.0, abs=1e-6)


def test_planner_examples_are_the_conversation_so_far_and_the_optimal_command():
    from pavlov.envs.text.baselines import optimal_actions
    from pavlov.envs.text.world import generate
    from pavlov.llm.trainers.agent import planner_examples

    _, tok = tiny_causal_lm()
    agent = AgentConfig(rooms=3, locks=1)
    examples = planner_examples(agent, tok, [5])
    plan = [a.text() for a in optimal_actions(generate(agent.game, 5))]
    assert [e.completion for e in examples] == [c + tok.eos_token for c in plan]
    assert all(e.chat and e.source == "game 5" for e in examples)
    for earlier, later in zip(examples, examples[1:], strict=False):  # the history grows
        assert later.prompt.startswith(earlier.prompt + earlier.completion)
    assert examples[0].prompt == ChatTurns(tok).prompt_text(
        agent.show(*agent.make_env().reset(options={"game": 5})))


def test_evaluate_agent_reports_success_with_intervals():
    from pavlov.llm.trainers.agent import evaluate_agent

    model, tok = tiny_causal_lm()
    r = evaluate_agent(model, tok, AgentConfig(max_turns=2), [1_000_000, 1_000_001],
                       sampling(tok))  # fmt: skip
    assert r["games"] == 2 and r["success"] == 0.0 and r["moves"] == 2.0
    assert r["success_low"] == 0.0 < r["success_high"] < 1.0


def test_first_command_extracts_the_earliest_admissible_command():
    from pavlov.llm.generation.episodes import first_command

    info = {"admissible_commands": ["look", "go east", "take brass key", "take brass"]}
    assert first_command("I will go east, then look.", info) == "go east"
    assert first_command("Take brass key now", info) == "take brass key"  # the longer at a tie
    assert first_command("dance", info) == "dance"
