"""Multi-turn agent RL: a language model learns to play text games with the online trainers
(GRPO, RLOO, REINFORCE, PPO) on whole episodes.

A step plays ``prompts_per_step`` training games, ``group_size`` episodes each (a GRPO / RLOO
group is several episodes of the same game), with the whole history as context and one key/value
cache per episode (:mod:`pavlov.llm.generation.episodes`). The episode's return is the reward of
every one of its agent tokens' advantage; the loss and the KL to the reference cover the agent's
own tokens only (the environment's answers and the prompt are context), through the rollout's
``response_mask``. PPO's value and GAE run over the agent's tokens only, each bootstrapping from
the value at the agent's next token across the game's answer. Training games are seeds
``0 .. train_games - 1``; evaluation uses held-out seeds
(:data:`pavlov.envs.text.baselines.HELD_OUT` onwards).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn

from pavlov.devices import module_device
from pavlov.envs.text import GameConfig, TextGameEnv
from pavlov.errors import check_choice, check_count
from pavlov.llm.data.datasets import PromptExample, SFTExample
from pavlov.llm.generation.episodes import (
    ChatTurns,
    Episode,
    episodes_rollout,
    first_command,
    play_group,
    with_commands,
)
from pavlov.llm.generation.rollout import SamplingConfig
from pavlov.llm.models.loading import ensure_pad_token
from pavlov.llm.trainers.online import OnlineConfig, OnlineResult, Played, train_online

REWARDS = ("score", "win")


@dataclass
class AgentConfig:
    """The games an agent trains on and how an episode is played and rewarded."""

    rooms: int = 2
    """Rooms per game (:class:`pavlov.envs.text.GameConfig`)."""
    locks: int = 0
    """Locks per game."""
    objects: int = 1
    """Distractor objects per game."""
    containers: int = 0
    """Extra containers per game."""
    train_games: int = 64
    """Training games: seeds ``0 .. train_games - 1``."""
    max_turns: int = 6
    """Commands per episode at most (the episode is cut after it: truncated, not lost)."""
    show_commands: bool = True
    """Append the admissible commands to every observation the model reads (TextWorld's
    ``admissible_commands``): the task becomes choosing, which a 135M model can start from."""
    extract_command: bool = True
    """Play the admissible command the reply names first ("I'll go east." plays ``go east``),
    else the reply as typed; the tokens trained on are the reply's either way."""
    reward: str = "score"
    """``"score"``: the episode's return (a point per milestone: key taken, lock opened,
    treasure taken); ``"win"``: 1 for a win, else 0."""

    def __post_init__(self) -> None:
        self.game  # noqa: B018  validates the game settings
        check_count("train_games", self.train_games)
        check_count("max_turns", self.max_turns)
        check_choice("reward", self.reward, REWARDS)

    @property
    def game(self) -> GameConfig:
        return GameConfig(self.rooms, self.locks, self.objects, self.containers)

    def show(self, obs: str, info: dict) -> str:
        return with_commands(obs, info) if self.show_commands else obs

    def act(self, reply: str, info: dict) -> str:
        return first_command(reply, info) if self.extract_command else reply

    def make_env(self) -> TextGameEnv:
        return TextGameEnv(self.rooms, self.locks, self.objects, self.containers)


def episode_sampler(agent: AgentConfig, tokenizer, games: list[int]):
    """The online trainer's sampler: the rows of a step played as episodes of ``games``."""
    pad_id = ensure_pad_token(tokenizer)

    def sample(model: nn.Module, idx: list[int], sampling: SamplingConfig) -> Played:
        episodes = play_group(model, tokenizer, agent.make_env, [games[j] for j in idx],
                              sampling, agent.max_turns, agent.show, agent.act)  # fmt: skip
        rewards = [e.reward if agent.reward == "score" else float(e.won) for e in episodes]
        metrics = {
            "episode/won": statistics.fmean(float(e.won) for e in episodes),
            "episode/score": statistics.fmean(float(e.score) for e in episodes),
            "episode/turns": statistics.fmean(float(e.turns) for e in episodes),
            "episode/tokens": statistics.fmean(float(len(e.ids)) for e in episodes),
        }
        return Played(
            episodes_rollout(episodes, pad_id, module_device(model)),
            [" | ".join(e.commands) for e in episodes],
            torch.tensor(rewards, dtype=torch.float64), metrics,
        )  # fmt: skip

    return sample


def train_agent(cfg: OnlineConfig, agent: AgentConfig, model: nn.Module, tokenizer, *,
                run=None, quiet: bool = True, callback=None) -> OnlineResult:  # fmt: skip
    """Train ``model`` to play ``agent``'s games with ``cfg.algo``: GRPO, RLOO, REINFORCE, or
    PPO (its value and token GAE run over the agent's tokens only, stepping over the game's
    answers: :func:`pavlov.math.rlhf.token_gae` on a mask with holes)."""
    games = list(range(agent.train_games))
    turns, env = ChatTurns(tokenizer), agent.make_env()
    prompts = [PromptExample(turns.prompt_text(agent.show(*env.reset(options={"game": g}))),
                             chat=True, source=f"game {g}") for g in games]  # fmt: skip
    return train_online(cfg, model, tokenizer, prompts, None, run=run, quiet=quiet,
                        callback=callback, sampler=episode_sampler(agent, tokenizer, games))


def planner_examples(agent: AgentConfig, tokenizer, games: list[int]) -> list[SFTExample]:
    """Behaviour cloning data: each turn of the planner's optimal play of ``games`` as an SFT
    example, the conversation so far (chat-rendered, as the agent reads it) -> the command and
    the end of the turn. A warm start for RL, like the RLHF pipeline's step 1."""
    from pavlov.envs.text.baselines import optimal_actions

    turns, env = ChatTurns(tokenizer), agent.make_env()
    eos = tokenizer.eos_token or ""
    out = []
    for game in games:
        obs, info = env.reset(options={"game": game})
        history = turns.prompt_text(agent.show(obs, info))
        for action in optimal_actions(env.world):  # type: ignore[arg-type]
            command = action.text()
            out.append(SFTExample(history, command + eos, True, f"game {game}"))
            obs, _, terminated, truncated, info = env.step(command)
            history += command + eos + turns.between_text(agent.show(obs, info))
            if terminated or truncated:
                break
    return out


def play_games(model: nn.Module, tokenizer, agent: AgentConfig, games: list[int],
               sampling: SamplingConfig) -> list[Episode]:
    """``model`` plays each of ``games`` once (at most ``agent.max_turns`` commands)."""
    return play_group(model, tokenizer, agent.make_env, games, sampling, agent.max_turns,
                      agent.show, agent.act)  # fmt: skip


def summarize_episodes(episodes: list[Episode]) -> dict[str, float]:
    """Success rate (Wilson 95%), mean moves and score (normal 95%) of played episodes."""
    from pavlov.envs.text.baselines import summarize

    return summarize([e.won for e in episodes], [e.turns for e in episodes],
                     [e.score for e in episodes])  # fmt: skip


def evaluate_agent(model: nn.Module, tokenizer, agent: AgentConfig, games: list[int],
                   sampling: SamplingConfig) -> dict[str, float]:  # fmt: skip
    """Success rate (Wilson 95%), mean moves and score (normal 95%) of ``model`` playing each of
    ``games`` once (at most ``agent.max_turns`` commands)."""
    return summarize_episodes(play_games(model, tokenizer, agent, games, sampling))


def transcript(episode: Episode) -> str:
    """A played episode as Markdown: the game's text and each command, then the outcome."""
    lines = [f"Game {episode.game}:", "", "> " + episode.observations[0].replace("\n", "\n> ")]
    for command, answer in zip(episode.commands, episode.observations[1:], strict=True):
        lines += ["", f"**{command}**", "", "> " + answer.replace("\n", "\n> ")]
    outcome = "won" if episode.won else "not won"
    lines += ["", f"*{outcome}: score {episode.score}/{episode.max_score} in {episode.turns} "
                  "commands*"]
    return "\n".join(lines)
