"""``pavlov envs``: the environments pavlov knows."""

from __future__ import annotations

import gymnasium as gym

from pavlov.run.console import stdout, table

# Gymnasium ids that the course uses; `--all` lists the whole registry.
FEATURED = [
    "pavlov/Grid2x3-v0",
    "pavlov/GridWorld-v0",
    "pavlov/Battle-v0",
    "pavlov/PointMass-v0",
    "pavlov/TextGame-v0",
    "FrozenLake-v1",
    "FrozenLake8x8-v1",
    "Taxi-v4",
    "CliffWalking-v1",
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Pendulum-v1",
]


def describe(env_id: str) -> dict:
    """Spaces, step limit and whether the MDP table is available (tabular planning)."""
    from pavlov.envs.factory import make_env

    env = make_env(env_id)
    try:
        return {
            "id": env_id,
            "observation_space": str(env.observation_space),
            "action_space": str(env.action_space),
            "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
            "tabular": hasattr(env.unwrapped, "P")
            and isinstance(env.observation_space, gym.spaces.Discrete),
        }
    finally:
        env.close()


def run_envs(all_: bool, json_out: bool) -> None:
    import pavlov.envs  # noqa: F401  registers pavlov/*

    if all_:
        ids = sorted(gym.registry)
        for i in ids:
            stdout.print(i, highlight=False)
        if json_out:
            from pavlov.run.console import emit_json

            emit_json({"envs": ids})
        return
    rows = [describe(i) for i in FEATURED]
    stdout.print(
        table(
            "Environments (pavlov envs --all lists every Gymnasium id)",
            ["id", "observations", "actions", "step limit", "tabular (solve)"],
            [
                [
                    r["id"],
                    r["observation_space"],
                    r["action_space"],
                    r["max_episode_steps"] or "-",
                    "yes" if r["tabular"] else "-",
                ]
                for r in rows
            ],
        )
    )
    if json_out:
        from pavlov.run.console import emit_json

        emit_json({"envs": rows})
