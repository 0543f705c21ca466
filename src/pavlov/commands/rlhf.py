"""``pavlov rlhf``: the positive-movie-review case study (SFT, reward model, PPO/GRPO/RLOO/DPO,
held-out evaluation), what ``make demo`` runs.

Options resolve in this order (later wins):
:class:`~pavlov.llm.case_study.pipeline.CaseStudyConfig`'s
defaults, ``--config FILE.yaml`` (top-level ``name``, ``runs_dir`` and a ``case_study:`` section
of config fields), ``--quick`` (:data:`~pavlov.llm.case_study.pipeline.QUICK`), ``--algo``, then
``-o key=value``; ``-o sft.F=V``, ``-o rm.F=V`` and ``-o rl.F=V`` set fields of a step's own
trainer config. Everything is validated before the run directory exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pavlov.config import build_config, parse_overrides
from pavlov.errors import ConfigError

TOP_KEYS = {"name", "runs_dir", "case_study"}
"""Top-level keys of an rlhf config file (``resume``, a flag, continues a run instead)."""
STAGE_PREFIXES = {"sft": "sft_options", "rm": "rm_options", "rl": "rl_options"}


def resolve_config(opts: dict[str, Any], quick: bool, overrides: list[str] | None):
    """The :class:`CaseStudyConfig` of a command line (``opts``: the config file + flags)."""
    from pavlov.llm.case_study.pipeline import QUICK, CaseStudyConfig

    unknown = set(opts) - TOP_KEYS - {"algo", "resume"}
    if unknown:
        raise ConfigError(
            f"unknown rlhf option(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(sorted(TOP_KEYS))}"
        )
    section = opts.get("case_study") or {}
    if not isinstance(section, dict):
        raise ConfigError("case_study must be a mapping of CaseStudyConfig fields")
    values = dict(section)
    if quick:
        values.update(QUICK)
    if opts.get("algo") is not None:
        values["algo"] = opts["algo"]
    for key, value in parse_overrides(overrides).items():
        prefix, dot, name = key.partition(".")
        if dot and prefix in STAGE_PREFIXES and name:
            options = STAGE_PREFIXES[prefix]
            values[options] = {**(values.get(options) or {}), name: value}
        elif dot:
            raise ConfigError(f"override {key!r}: prefix must be one of sft., rm., rl.")
        else:
            values[key] = value
    return build_config(CaseStudyConfig, values, where="case_study")


def resumed_config(opts: dict[str, Any], quick: bool, overrides: list[str] | None):
    """``(run dir, its saved CaseStudyConfig)`` for ``--resume RUN``, which takes no other
    setting: a run continues exactly as it started."""
    from pavlov.llm.case_study.pipeline import CaseStudyConfig, check_resumable

    given = sorted(k for k in opts if k != "resume" and opts[k] is not None)
    given += ["--quick"] * quick + ["-o"] * bool(overrides)
    if given:
        raise ConfigError(f"--resume continues a run with its own settings; drop "
                          f"{', '.join(given)}")
    run_dir = Path(opts["resume"])
    saved = check_resumable(run_dir)
    return run_dir, build_config(CaseStudyConfig, saved["case_study"], where="case_study")


def run_rlhf(
    opts: dict[str, Any],
    overrides: list[str] | None,
    *,
    quick: bool = False,
    quiet: bool = False,
    json_out: bool = False,
    assets=None,
) -> dict[str, Any]:
    """Validate, run the case study, print the before/after table; ``--json``: the summary."""
    from pavlov.llm.case_study.pipeline import run_case_study
    from pavlov.run import default_run_name, interrupt
    from pavlov.run.console import emit_json

    if opts.get("resume"):
        run_dir, cfg = resumed_config(opts, quick, overrides)
    else:
        cfg = resolve_config(opts, quick, overrides)
        name = opts.get("name") or default_run_name("rlhf", cfg.algo)
        run_dir = Path(opts.get("runs_dir") or "runs") / name
    with interrupt.resumable(run_dir, "rlhf"):
        summary = run_case_study(cfg, run_dir, quiet=quiet or json_out, assets=assets,
                                 resume=bool(opts.get("resume")))  # fmt: skip
    print_summary(summary)
    if json_out:
        emit_json(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    from pavlov.llm.case_study.report import comparison_rows, goal_checks
    from pavlov.run.console import stdout, table

    algo = summary["algo"]
    rows = comparison_rows(summary["before"], summary["after"])
    n = int(summary["after"]["samples"])
    title = f"pavlov rlhf: SFT -> {algo} on held-out movies ({n} reviews each)"
    stdout.print(table(title, ["metric", "SFT (before)", f"{algo} (after)", "change"], rows))
    rm = summary["reward_model"]
    if rm.get("accuracy") is not None:
        stdout.print(
            f"reward model ({rm['backbone']}): held-out pairwise accuracy {rm['accuracy']:.3f}"
        )
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    stdout.print(f"time: {seconds}")
    checks = goal_checks(summary["before"], summary["after"])
    if checks:
        marks = ", ".join(
            f"{k} {c['value']:.3g} {c['op']} {c['bound']:.3g} {'ok' if c['ok'] else 'MISSED'}"
            for k, c in checks.items()
        )
        stdout.print(f"goals: {marks}")
    files = summary["files"]
    stdout.print(
        f"results in {summary['run']}/: {Path(files['samples']).name} (the reviews, before and "
        f"after), {Path(files['curves']).name}, {Path(files['judge_vs_kl']).name}, summary.json"
    )
    stdout.print(
        "how to read them: the held-out judge (VADER, never trained on) should rise with the "
        "reward model's score while fluency NLL, distinct-2, the on-topic share and KL hold; a "
        "reward-model score that climbs while the judge or fluency falls is reward hacking."
    )
