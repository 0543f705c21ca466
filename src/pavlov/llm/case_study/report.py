"""The case study's report: ``samples.md`` (before/after table), ``curves.png``, ``judge_vs_kl.png``
and the rows of the before/after console table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pavlov.llm.scoring.policy_eval import PolicyEval

ROWS = (
    ("reward/mean", "reward-model score"),
    ("judge/mean", "judge: VADER compound (held out)"),
    ("judge/positive_fraction", "judge: share positive (> 0.05)"),
    ("fluency/nll", "fluency: NLL per token under the base model"),
    ("text/distinct2", "diversity: distinct-2 over all reviews"),
    ("topic/on_topic", "on topic: names the movie or its plot"),
    ("kl/ref", "KL to the SFT reference (nats)"),
    ("response/length", "review length (tokens)"),
    ("response/eos_rate", "reviews ending with EOS"),
)
"""Metrics of the before/after tables, with their labels."""
CURVES = (
    ("reward/mean", "reward-model score (training rollouts)"),
    ("kl/ref", "KL to the SFT reference (training rollouts)"),
    ("judge/train_mean", "judge: VADER (training rollouts)"),
    ("train/loss", "DPO loss"),
    ("train/rewards/margins", "DPO implicit reward margin"),
    ("train/rewards/accuracies", "DPO implicit reward accuracy"),
)
"""Per-step training metrics plotted in ``curves.png`` when the history has them."""


KL_BOUND = 6.0
"""KL to the SFT reference (nats per review) within which the policy counts as on its leash."""
JUDGE_GOAL = 0.6
"""Mean held-out judge score of clearly positive reviews (the SFT model sits near 0.1-0.2)."""
POSITIVE_GOAL = 0.9
"""Share of positive reviews (VADER compound > 0.05) the case study aims for."""


def goal_checks(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, Any]]:
    """The case study's goals, each ``{"value", "bound", "ok"}``: a clearly positive judge
    (share >= 90%, mean >= 0.6) bought without losing fluency (NLL under the base model not
    above the SFT model's), diversity (distinct-2 >= 0.7x the SFT model's), topic (on-topic
    share not below the SFT model's) or the leash (KL <= :data:`KL_BOUND`). A metric the
    evaluation did not measure is left out."""
    rules = {
        "judge/positive_fraction": (">=", POSITIVE_GOAL),
        "judge/mean": (">=", JUDGE_GOAL),
        "fluency/nll": ("<=", before.get("fluency/nll")),
        "text/distinct2": (">=", 0.7 * before.get("text/distinct2", 0.0)),
        "topic/on_topic": (">=", before.get("topic/on_topic")),
        "kl/ref": ("<=", KL_BOUND),
    }
    out = {}
    for key, (op, bound) in rules.items():
        if key in after and bound is not None:
            value = after[key]
            ok = value >= bound if op == ">=" else value <= bound
            out[key] = {"value": value, "op": op, "bound": bound, "ok": bool(ok)}
    return out


def comparison_rows(before: dict[str, float], after: dict[str, float]) -> list[list[Any]]:
    """``[label, before, after, after - before]`` for each metric of :data:`ROWS` both have."""
    return [
        [label, before[k], after[k], after[k] - before[k]]
        for k, label in ROWS
        if k in before and k in after
    ]


def write_report(
    run_dir: Path, cfg, before: PolicyEval, after: PolicyEval, history: Sequence[dict]
) -> dict[str, Path]:
    """Write ``samples.md``, ``curves.png`` and ``judge_vs_kl.png`` into ``run_dir``."""
    files = {
        "samples": write_samples(run_dir / "samples.md", cfg, before, after),
        "curves": plot_curves(run_dir / "curves.png", cfg.algo, history, before, after),
        "judge_vs_kl": plot_judge_vs_kl(
            run_dir / "judge_vs_kl.png", cfg.algo, history, before, after
        ),
    }
    return files


# ---------------------------------------------------------------------------------------------
# samples.md


def _cell(text: str, limit: int = 200) -> str:
    """One table cell: spaces collapsed, but each line break shown as ``⏎`` (a review that
    opens with a blank line, or runs into a list, must look like one: collapsed, they hid that
    the SFT model put 42-47% of a review's first token on a newline; docs/benchmarks.md, 17)."""
    text = "⏎".join(" ".join(line.split()) for line in text.splitlines()).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats with 3 decimals, text columns left-aligned."""

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else _cell(str(v))

    align = (
        [
            "---" if i == 0 or not isinstance(rows[0][i], float) else "---:"
            for i in range(len(columns))
        ]
        if rows
        else ["---"] * len(columns)
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_samples(path: Path, cfg, before: PolicyEval, after: PolicyEval) -> Path:
    """The metrics table and one sampled review per held-out movie, before and after."""
    n = len({s.prompt for s in before.samples})
    metrics = markdown_table(
        ["metric", "SFT (before)", f"{cfg.algo} (after)", "change"],
        comparison_rows(before.metrics, after.metrics),
    )
    rows = [
        [b.label, b.completion, b.judge, b.reward, a.completion, a.judge, a.reward]
        for b, a in zip(before.samples[:n], after.samples[:n], strict=True)
    ]
    samples = markdown_table(
        ["movie", "SFT review", "judge", "RM", f"{cfg.algo} review", "judge", "RM"], rows
    )
    text = (
        f"# Positive movie reviews: before and after {cfg.algo}\n\n"
        f"Held-out movies (never seen in any training step), {cfg.eval_samples} sampled "
        f"review(s) each at temperature {cfg.eval_temperature}, top-p {cfg.eval_top_p}, at most "
        f"{cfg.max_new_tokens} tokens, the same prompts and random numbers before and after. "
        f"judge: VADER compound score in [-1, 1], never used in training; RM: the reward "
        f"model's score. Fluency: mean NLL per token of the reviews under the untouched base "
        f"model (lower reads more fluent); KL measured on reviews sampled at the training "
        f"temperature {cfg.temperature}.\n\n"
        f"{metrics}\nThe first sample of each movie:\n\n{samples}"
    )
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(history: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in history if r.get(key) is not None and "step" in r]
    arr = np.array(pts, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _smooth(y: np.ndarray) -> np.ndarray:
    from pavlov.run.plots import rolling_mean

    return rolling_mean(y, max(1, min(5, len(y) // 4)))


def plot_curves(path: Path, algo: str, history, before: PolicyEval, after: PolicyEval) -> Path:
    """One panel per training metric of :data:`CURVES` present in ``history`` (raw faint,
    rolling mean on top) and a last panel with the held-out before/after scores."""
    plt = _pyplot()
    present = [(k, label) for k, label in CURVES if len(_series(history, k)[0])]
    fig, axes = plt.subplots(
        1, len(present) + 1, figsize=(4.2 * (len(present) + 1), 3.4), dpi=110, squeeze=False
    )
    for ax, (key, label) in zip(axes[0], present, strict=False):
        x, y = _series(history, key)
        (line,) = ax.plot(x, _smooth(y), lw=1.8)
        ax.plot(x, y, color=line.get_color(), alpha=0.25, lw=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"{algo} step")
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    names = [
        ("reward/mean", "RM score"),
        ("judge/mean", "judge"),
        ("judge/positive_fraction", "share positive"),
    ]
    xs = np.arange(len(names))
    for offset, (ev, label) in ((-0.2, (before, "SFT")), (0.2, (after, algo))):
        vals = [ev.metrics[k] for k, _ in names]
        errs = [
            ev.metrics.get(k.replace("/mean", "/stderr"), 0.0) if k.endswith("/mean") else 0.0
            for k, _ in names
        ]
        ax.bar(xs + offset, vals, width=0.4, yerr=errs, label=label, capsize=3)
    ax.set_xticks(xs, [label for _, label in names], fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title("held-out movies: before vs after", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_judge_vs_kl(path: Path, algo: str, history, before: PolicyEval, after: PolicyEval) -> Path:
    """Judge score against KL to the reference: the training rollouts step by step (colour =
    step, rolling means) when the history has both, the held-out before/after points, and the
    KL bound and judge goal of :func:`goal_checks` as dashed lines (a run that climbs the
    reward model's score past the KL bound with a flat judge is reward hacking)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    steps_kl, kl = _series(history, "kl/ref")
    steps_judge, judge = _series(history, "judge/train_mean")
    common = np.intersect1d(steps_kl, steps_judge)
    if len(common):
        kl_by = dict(zip(steps_kl, kl, strict=True))
        judge_by = dict(zip(steps_judge, judge, strict=True))
        x = _smooth(np.array([kl_by[s] for s in common]))
        y = _smooth(np.array([judge_by[s] for s in common]))
        ax.plot(x, y, color="0.6", lw=0.8, zorder=1)
        points = ax.scatter(
            x, y, c=common, cmap="viridis", s=14, zorder=2, label="training rollouts (rolling mean)"
        )
        fig.colorbar(points, ax=ax, label=f"{algo} step")
    b, a = before.metrics, after.metrics
    ax.errorbar(
        [b["kl/ref"]],
        [b["judge/mean"]],
        yerr=[b["judge/stderr"]],
        fmt="s",
        color="tab:red",
        capsize=3,
        label="held-out: SFT (before)",
        zorder=3,
    )
    ax.errorbar(
        [a["kl/ref"]],
        [a["judge/mean"]],
        yerr=[a["judge/stderr"]],
        fmt="D",
        color="tab:blue",
        capsize=3,
        label=f"held-out: {algo} (after)",
        zorder=3,
    )
    ax.annotate(
        "",
        xy=(a["kl/ref"], a["judge/mean"]),
        xytext=(b["kl/ref"], b["judge/mean"]),
        arrowprops={"arrowstyle": "->", "color": "0.3"},
    )
    ax.axvline(KL_BOUND, color="tab:red", lw=0.8, ls="--", label=f"KL bound ({KL_BOUND:g} nats)")
    ax.axhline(JUDGE_GOAL, color="tab:green", lw=0.8, ls=":", label=f"judge goal ({JUDGE_GOAL:g})")
    ax.set_xlabel("KL(policy || SFT reference), nats per review")
    ax.set_ylabel("judge: mean VADER compound")
    ax.set_title("held-out judge vs KL to the reference", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
