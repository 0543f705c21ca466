"""Text games: generated interactive fiction with text observations and actions
(``pavlov/TextGame-v0``), the parser, and the baselines an agent is measured against.

Why our own generator and not TextWorld: ``textworld`` (MIT, installs from PyPI) pulls jericho
and spacy (~380 MB) and speaks the old 4-tuple gym API; pavlov's games install with pavlov, run
in CI, expose their state graph (the planner's optimum is exact) and step ~100x faster in pure
Python. See docs/text-games.md.
"""

from pavlov.envs.text.env import TextGameEnv
from pavlov.envs.text.parser import parse
from pavlov.envs.text.world import Action, GameConfig, State, World, admissible, apply, generate

__all__ = ["Action", "GameConfig", "State", "TextGameEnv", "World", "admissible", "apply",
           "generate", "parse"]  # fmt: skip
