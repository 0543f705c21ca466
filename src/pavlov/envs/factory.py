"""Making environments from user input, with one-line errors instead of tracebacks."""

from __future__ import annotations

import difflib
import json
from typing import Any

import gymnasium as gym
import numpy as np

from pavlov.errors import PavlovError


def parse_env_kwargs(text: str | dict | None) -> dict[str, Any]:
    """``--env-kwargs`` as a dict: a JSON object string, a dict, or nothing."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PavlovError(f"--env-kwargs is not valid JSON: {e.msg} (at char {e.pos})") from None
    if not isinstance(value, dict):
        raise PavlovError(f"--env-kwargs must be a JSON object, got {type(value).__name__}")
    return value


class FlattenDiscreteTuple(gym.ObservationWrapper):
    """``Tuple(Discrete(n1), ..., Discrete(nk))`` observations as one ``Discrete(n1 * ... * nk)``
    index (mixed radix, the first component most significant), so that tables and one-hot
    encoders see one state: Blackjack-v1's (player sum, dealer card, usable ace) -> 704 states.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.sizes = [int(s.n) for s in space.spaces]
        self.starts = [int(s.start) for s in space.spaces]
        self.observation_space = gym.spaces.Discrete(int(np.prod(self.sizes)))

    def observation(self, obs: tuple[int, ...]) -> int:
        index = 0
        for value, size, start in zip(obs, self.sizes, self.starts, strict=True):
            index = index * size + int(value) - start
        return index


def needs_flattening(space: gym.Space) -> bool:
    """A tuple of Discrete spaces (:class:`FlattenDiscreteTuple` turns it into one)."""
    return isinstance(space, gym.spaces.Tuple) and len(space.spaces) > 0 and all(
        isinstance(s, gym.spaces.Discrete) for s in space.spaces)


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, **make_kwargs) -> gym.Env:
    """``gymnasium.make`` with pavlov's envs registered and user errors turned into PavlovError;
    tuples of Discrete observations become one Discrete index (:class:`FlattenDiscreteTuple`)."""
    import pavlov.envs  # noqa: F401  registers pavlov/* ids

    kwargs = {**(env_kwargs or {}), **make_kwargs}
    try:
        env = gym.make(env_id, **kwargs)
        return FlattenDiscreteTuple(env) if needs_flattening(env.observation_space) else env
    except gym.error.DependencyNotInstalled as e:
        # the id exists (not "unknown env ... did you mean <the same id>?"): say what to install
        reason = _first_line(e)
        if "Box2D" in reason:  # gymnasium's hint builds box2d-py with swig; the wheel needs none
            reason = "Box2D is not installed; pip install 'pavlov[box2d]' (the Box2D wheel)"
        raise PavlovError(f"cannot make {env_id}: {reason}") from None
    except gym.error.Error as e:
        hint = difflib.get_close_matches(env_id, list(gym.registry), n=1)
        more = f"; did you mean {hint[0]!r}?" if hint else "; `pavlov envs` lists them"
        raise PavlovError(f"unknown env {env_id!r}: {str(e).splitlines()[0]}{more}") from None
    except PavlovError:
        raise
    except (TypeError, KeyError, ValueError) as e:
        msg = str(e).split(" was raised from the environment creator")[0]
        if isinstance(e, KeyError):  # str(KeyError) is just the key: say what it is
            msg = f"no such value {msg}"
        raise PavlovError(f"cannot make {env_id!r} with kwargs {kwargs}: {msg}") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def require_discrete(env: gym.Env, what: str) -> tuple[int, int]:
    """(n_states, n_actions) of an env with Discrete observation and action spaces, else a
    PavlovError naming the method, the env and the offending space."""
    env_id = env.spec.id if env.spec else type(env.unwrapped).__name__
    for role, space in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(space, gym.spaces.Discrete):
            raise PavlovError(
                f"{what} needs a discrete {role} space; {env_id} has {space}"
            )
    return int(env.observation_space.n), int(env.action_space.n)


def env_id_of(env: gym.Env) -> str:
    return env.spec.id if env.spec else type(env.unwrapped).__name__
