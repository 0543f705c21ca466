"""pavlov's own environments, registered with Gymnasium when this package is imported.

==========================  =====================================================  =========
id                          what                                                   max steps
==========================  =====================================================  =========
``pavlov/GridWorld-v0``     :class:`GridWorld` (kwargs: ``map=...``, rewards, ...)   100
``pavlov/Grid2x3-v0``       the course's 2x3 grid, :func:`grid2x3`                  100
``pavlov/Battle-v0``        :class:`BattleMDP`, the tabletop-battle MDP             50
``pavlov/TextGame-v0``      a generated text game (:mod:`pavlov.envs.text`)         50
``pavlov/BattleText-v0``    the battle MDP in words (:mod:`pavlov.envs.text.battle`)  50
==========================  =====================================================  =========

``gymnasium.make("pavlov/Grid2x3-v0", slip=0.2)`` passes keyword overrides through. Every env
exposes FrozenLake-style tables ``env.unwrapped.P`` and ``env.unwrapped.initial_state_distrib``.
"""

from __future__ import annotations

import gymnasium

from pavlov.envs.battle import BattleMDP
from pavlov.envs.gridworld import GRID2X3_KWARGS, GridWorld, grid2x3

__all__ = ["BattleMDP", "GridWorld", "grid2x3", "register_envs", "ENV_IDS"]

# id -> (entry point, default kwargs, max_episode_steps)
_SPECS = {
    "pavlov/GridWorld-v0": ("pavlov.envs.gridworld:GridWorld", {}, 100),
    "pavlov/Grid2x3-v0": ("pavlov.envs.gridworld:GridWorld", dict(GRID2X3_KWARGS), 100),
    "pavlov/Battle-v0": ("pavlov.envs.battle:BattleMDP", {}, 50),
    "pavlov/PointMass-v0": ("pavlov.envs.pointmass:PointMassEnv", {}, 50),  # torch dynamics (apg)
    "pavlov/TextGame-v0": ("pavlov.envs.text.env:TextGameEnv", {}, 50),  # text obs and actions
    "pavlov/BattleText-v0": ("pavlov.envs.text.battle:BattleTextEnv", {}, 50),
}
ENV_IDS = tuple(_SPECS)


def register_envs() -> None:
    """Register pavlov's envs with Gymnasium; ids already registered are left alone."""
    for env_id, (entry_point, kwargs, max_steps) in _SPECS.items():
        if env_id not in gymnasium.registry:  # idempotent: re-registering would warn
            gymnasium.register(
                id=env_id, entry_point=entry_point, kwargs=kwargs, max_episode_steps=max_steps
            )


register_envs()
