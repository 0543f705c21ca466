"""The scheduler every deep agent shares: evaluations, checkpoints and the best model."""

import math

from pavlov.agents.common import Hooks, TrainClock


def _drive(returns, best_return=-math.inf):
    """Evaluate every 10 env steps with the given returns; what ``save_best`` receives."""
    saved, stops = [], iter(returns)
    hooks = Hooks(evaluate_every=10, best_return=best_return,
                  save_best=lambda step, ret, state: saved.append((step, ret, state["at"])))
    clock = TrainClock(hooks, 0)
    for _ in returns:
        assert clock.tick(10)
        clock.periodic(lambda: next(stops), lambda: {"at": clock.steps})
    return saved, clock


def test_the_best_model_is_saved_at_each_strictly_better_evaluation_only():
    saved, clock = _drive([3.0, 6.0, 6.0, 2.0, 7.5, -1.0])
    assert saved == [(10, 3.0, 10), (20, 6.0, 20), (50, 7.5, 50)]
    assert clock.best == 7.5 and [r for _, r in clock.evals] == [3.0, 6.0, 6.0, 2.0, 7.5, -1.0]


def test_a_resumed_run_saves_only_what_beats_its_earlier_best():
    saved, _ = _drive([3.0, 6.0, 8.0], best_return=6.0)
    assert saved == [(30, 8.0, 30)]


def test_without_save_best_nothing_is_asked_for_the_state():
    hooks = Hooks(evaluate_every=10)
    clock = TrainClock(hooks, 0)
    assert clock.tick(10)

    def state():
        raise AssertionError("state() called without a checkpoint or best-model hook")

    assert clock.periodic(lambda: 1.0, state) is False and clock.best == 1.0
