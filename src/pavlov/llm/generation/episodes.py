"""Multi-turn episodes: a language model plays a text environment, one command per turn, the
whole history as its context, with one key/value cache kept across the turns.

An episode is one token sequence: the prompt (system turn, the first observation as a user turn,
the assistant header), then for each turn the agent's sampled tokens (ending with its EOS) and
the environment's answer as the next user turn and assistant header. Only the agent's tokens are
trained on: ``agent`` marks them (verl's ``response_mask``), and the environment's tokens are
context. The sampled ids are kept exactly as sampled (never decoded and re-encoded with the
history: no re-tokenization drift), and the environment's fragments are tokenized alone and
appended, so the sequence is what the model read while it played.

Each turn runs one forward over the new fragment (the agent's last token and the environment's
answer) on top of the cache, then one forward per sampled token: the history is never prefilled
again. :func:`episodes_rollout` pads a batch of episodes into a
:class:`~pavlov.llm.generation.rollout.Rollout` whose ``response_mask`` is the agent mask, which
the online trainers' losses and KL already honour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from pavlov.devices import module_device
from pavlov.llm.data.datasets import chat_reply_form
from pavlov.llm.generation.rollout import Rollout, SamplingConfig, sample_next
from pavlov.llm.scoring.logprobs import cache_argument

SYSTEM = (
    "You are playing a text adventure. Each turn, reply with exactly one of the listed commands "
    "and nothing else, for example: go east"
)


class ChatTurns:
    """The chat template's token fragments of a conversation with an environment: the prompt
    (system + first observation + assistant header) and what follows the agent's EOS (the end of
    its turn, the observation as a user turn, the next assistant header)."""

    def __init__(self, tokenizer, system: str = SYSTEM) -> None:
        self.tokenizer, self.system = tokenizer, system
        eos = tokenizer.eos_token
        first, reply_end = chat_reply_form(tokenizer, self._messages("\x01"))
        later, _ = chat_reply_form(
            tokenizer, [*self._messages("\x01"), {"role": "assistant", "content": "\x00"},
                        {"role": "user", "content": "\x02"}],  # fmt: skip
        )
        between = later[len(first) :].split("\x00", 1)[1]  # reply_end + user turn + header
        if eos and between.startswith(eos):
            between = between[len(eos) :]  # the agent samples its EOS itself
        self._prompt, self._between = first.split("\x01"), between.split("\x02")
        if len(self._prompt) != 2 or len(self._between) != 2:
            raise ValueError("the chat template must render each message's text once")

    def _messages(self, observation: str) -> list[dict]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": observation}]  # fmt: skip

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, observation: str) -> str:
        return self._prompt[0] + observation + self._prompt[1]

    def prompt(self, observation: str) -> list[int]:
        return self._ids(self.prompt_text(observation))

    def between_text(self, observation: str) -> str:
        return self._between[0] + observation + self._between[1]

    def between(self, observation: str) -> list[int]:
        return self._ids(self.between_text(observation))


@dataclass
class Episode:
    """One played episode: its tokens, the agent mask, the transcript and the outcome."""

    game: int
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    """The tokens after the prompt: agent turns and the environment's fragments."""
    agent: list[bool] = field(default_factory=list)
    """Per token of ``ids``: sampled by the agent (trained on) or the environment's (context)."""
    logprobs: list[float] = field(default_factory=list)
    """Sampling log-prob of each agent token (0 for the environment's)."""
    commands: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    """The first observation, then the answer to each command."""
    reward: float = 0.0
    """The episode's return (sum of the environment's rewards)."""
    won: bool = False
    score: int = 0
    max_score: int = 0

    @property
    def turns(self) -> int:
        return len(self.commands)

    def agent_ids(self) -> list[int]:
        return [t for t, a in zip(self.ids, self.agent, strict=True) if a]


def play_episode(
    model: nn.Module,
    tokenizer,
    env,
    game: int,
    sampling: SamplingConfig,
    *,
    turns: ChatTurns | None = None,
    max_turns: int = 10,
    generator: torch.Generator | None = None,
    show: Callable[[str, dict], str] | None = None,
    act: Callable[[str, dict], str] | None = None,
    reuse_cache: bool = True,
) -> Episode:
    """Play ``game`` of ``env`` (a text environment, ``reset(options={"game": g})``) for at most
    ``max_turns`` commands of at most ``sampling.max_new_tokens`` tokens each; ``show(obs, info)``
    is what the model reads of each observation (default: the observation itself);
    ``act(reply, info)`` the command sent for the model's reply (default: the reply);
    ``reuse_cache=False`` prefills the whole history again each turn (what a loop over
    ``generate`` would do; the benchmark's reference), same samples."""
    show = show or (lambda obs, info: obs)
    act = act or (lambda reply, info: reply)
    turns = turns or ChatTurns(tokenizer)
    device = module_device(model)
    eos = set(sampling.eos_token_ids) if isinstance(sampling.eos_token_ids, tuple | list) \
        else {sampling.eos_token_ids}  # fmt: skip
    obs, info = env.reset(options={"game": game})
    episode = Episode(game, turns.prompt(show(obs, info)), observations=[obs],
                      max_score=int(info.get("max_score", 0)))  # fmt: skip
    feed, cache = list(episode.prompt_ids), None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(max_turns):
                logits, cache = _forward(model, feed, cache, device)
                sampled, logps = [], []
                for _ in range(sampling.max_new_tokens):
                    token, logp = sample_next(logits, sampling, generator)
                    sampled.append(int(token[0]))
                    logps.append(float(logp[0]))
                    if sampled[-1] in eos or len(sampled) == sampling.max_new_tokens:
                        break
                    logits, cache = _forward(model, sampled[-1:], cache, device)
                episode.ids += sampled
                episode.agent += [True] * len(sampled)
                episode.logprobs += logps
                command = act(tokenizer.decode(sampled, skip_special_tokens=True).strip(), info)
                obs, reward, terminated, truncated, info = env.step(command)
                episode.commands.append(command)
                episode.observations.append(obs)
                episode.reward += float(reward)
                closed = [] if sampled[-1] in eos else [tokenizer.eos_token_id]  # cut: close it
                answer = closed + turns.between(show(obs, info))
                episode.ids += answer
                episode.agent += [False] * len(answer)
                episode.logprobs += [0.0] * len(answer)
                feed = [sampled[-1], *answer]
                if not reuse_cache:
                    feed, cache = episode.prompt_ids + episode.ids, None
                if terminated or truncated:
                    break
    finally:
        model.train(was_training)
    episode.won = bool(info.get("won", False))
    episode.score = int(info.get("score", 0))
    return episode


def _forward(model: nn.Module, ids: list[int], cache, device) -> tuple[Tensor, object]:
    """Next-token logits ``(1, V)`` after feeding ``ids`` on top of ``cache``."""
    name = cache_argument(model)
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1,
                **({name: cache} if cache is not None else {}))  # fmt: skip
    return out.logits[:, -1, :], getattr(out, name)


def episodes_rollout(episodes: list[Episode], pad_id: int, device: torch.device | str = "cpu"
                     ) -> Rollout:  # fmt: skip
    """A batch of episodes as one :class:`Rollout`: prompts left-padded to ``P``, the rest
    right-padded to ``T``; ``response_mask`` = the agent's tokens only; ``attention_mask`` covers
    the prompt, the agent's and the environment's tokens."""
    P = max(len(e.prompt_ids) for e in episodes)
    T = max(len(e.ids) for e in episodes)
    B = len(episodes)
    sequences = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    agent = torch.zeros((B, T), dtype=torch.bool)
    logprobs = torch.zeros((B, T), dtype=torch.float32)
    for i, e in enumerate(episodes):
        p, n = len(e.prompt_ids), len(e.ids)
        sequences[i, P - p : P] = torch.tensor(e.prompt_ids)
        sequences[i, P : P + n] = torch.tensor(e.ids, dtype=torch.long)
        attention[i, P - p : P + n] = 1
        agent[i, :n] = torch.tensor(e.agent)
        logprobs[i, :n] = torch.tensor(e.logprobs)
    return Rollout(
        sequences=sequences.to(device), attention_mask=attention.to(device),
        response_mask=agent.to(device), logprobs=logprobs.to(device), prompt_length=P,
        response_lengths=agent.sum(dim=1).to(device),
        eos_reached=torch.tensor([e.won for e in episodes], device=device),
    )  # fmt: skip


def with_commands(obs: str, info: dict) -> str:
    """The observation followed by the admissible commands (a choice for small models)."""
    options = info.get("admissible_commands") or []
    return f"{obs}\nCommands: {', '.join(options)}." if options else obs


def first_command(reply: str, info: dict) -> str:
    """The admissible command the reply names first (case ignored), else the reply: the action
    extraction of LLM-agent harnesses, so "I will go east now." plays ``go east``."""
    text = reply.lower()
    found = [(text.find(c), -len(c), c) for c in info.get("admissible_commands") or []
             if c in text]  # fmt: skip
    return min(found)[2] if found else reply


def play_group(
    model: nn.Module, tokenizer, make_env: Callable[[], object], games: list[int],
    sampling: SamplingConfig, max_turns: int = 10, show: Callable[[str, dict], str] | None = None,
    act: Callable[[str, dict], str] | None = None,
) -> list[Episode]:  # fmt: skip
    """One episode per entry of ``games`` (repeat a game for a group), episode ``i`` sampled
    with seed ``sampling.seed + i``."""
    turns, env = ChatTurns(tokenizer), make_env()
    out = []
    for i, game in enumerate(games):
        seed = None if sampling.seed is None else sampling.seed + i
        gen = torch.Generator(device=module_device(model))
        gen.manual_seed(seed if seed is not None else torch.seed())
        out.append(play_episode(model, tokenizer, env, game, replace(sampling, seed=seed),
                                turns=turns, max_turns=max_turns, generator=gen,
                                show=show, act=act))  # fmt: skip
    return out
