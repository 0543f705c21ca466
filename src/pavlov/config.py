"""Building typed config dataclasses from YAML files, dicts and ``key=value`` overrides.

Resolution order (later wins): dataclass defaults, ``--config FILE.yaml``, explicit CLI flags,
``-o key=value`` overrides. Unknown keys and unreadable files are PavlovErrors, not tracebacks.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pavlov.errors import ConfigError, PavlovError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; PavlovError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PavlovError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PavlovError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PavlovError(
            f"config file {path} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PavlovError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def section(value: Any, name: str) -> dict[str, Any]:
    """A config file's section of fields (``agent:``, ``trainer:``) as a new dict; absent is
    empty, anything but a mapping is a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of its fields, got {type(value).__name__} "
                          f"{value!r}")
    return dict(value)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b=linear"]`` -> ``{"a": 1, "b": "linear"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PavlovError(f"override {item!r} must look like key=value")
        out[key.strip()] = _scalar(value)
    return out


def _scalar(text: str) -> Any:
    """YAML scalar, except that ``1e-3`` is a float (YAML 1.1 would keep it a string)."""
    if not text.strip():
        return ""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Coerce YAML/CLI values to simple annotated types (int, float, bool, str, Optional)."""
    if isinstance(tp, str):  # postponed annotations
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp.split(" |")[0])
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0] if len(args) == 1 else None
        origin = typing.get_origin(tp)
    if origin in (tuple, list) and isinstance(value, list | tuple):
        return origin(value)  # YAML has lists only; tuple fields get tuples back
    if origin in (tuple, list) and not isinstance(value, str):
        raise ConfigError(f"{name} must be a list, got {value!r}")
    number = isinstance(value, numbers.Real | str) and not isinstance(value, bool)
    if tp in (int, float) and not number:
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    if tp is str and isinstance(value, list | tuple | dict):
        raise ConfigError(f"{name} must be str, got {value!r}")
    if tp is bool and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value not in (0, 1):
            raise ConfigError(f"{name} must be bool, got {value!r}")
        return bool(value)
    try:
        if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, int | str | float) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is bool and isinstance(value, str):
            return {"true": True, "false": False, "1": True, "0": False}[value.lower()]
    except (ValueError, KeyError):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}") from None
    return value


RENAMED = {
    "ppo_epochs": "n_epochs",
    "clip_eps": "clip_range",
    "clip_eps_high": "clip_range_high",
    "lam": "gae_lambda",
    "whiten_advantages": "normalize_advantage",
    "normalize_advantages": "normalize_advantage",
    "value_clip": "clip_range_vf",
    "entropy_coef": "ent_coef",
    "fast_kernels": "cpu.fast_kernels",
    "compact_heap": "cpu.compact_heap",
    "reuse_heap": "cpu.reuse_heap",
    "offload_reference": "cpu.offload_reference",
    "replay_rollout": "cpu.replay_rollout",
}
"""Old config names -> the one name each concept has now (Stable-Baselines3's; see
docs/config-fields.md)."""


def build_config(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys name the valid ones.

    A field that is itself a config dataclass (a group, e.g. ``cpu``) takes a mapping or dotted
    keys (``"cpu.enabled": False``, what ``-o cpu.enabled=false`` gives), the latter winning."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values = _grouped(values, {k for k in fields if dataclasses.is_dataclass(hints.get(k))}, where)
    unknown = sorted(set(values) - set(fields))
    renamed = [k for k in unknown if RENAMED.get(k, "").split(".")[0] in fields]
    if renamed:
        raise ConfigError(", ".join(f"{where} key {k} is now called {RENAMED[k]}"
                                    for k in renamed))
    if unknown:
        raise ConfigError(
            f"unknown {where} key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid: {', '.join(fields)}"
        )
    kwargs = {}
    for k, v in values.items():
        tp = hints.get(k, fields[k].type)
        kwargs[k] = (build_config(tp, v, where=f"{where}.{k}")
                     if dataclasses.is_dataclass(tp) and isinstance(v, dict) else _coerce(k, tp, v))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def _grouped(values: dict[str, Any], groups: set[str], where: str) -> dict[str, Any]:
    """Dotted keys of the ``groups`` folded into one mapping per group (over any mapping given
    for it); other dotted keys are left for the unknown-key error."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in groups and value is not None and not isinstance(value, dict):
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            else:
                raise ConfigError(f"{where} key {key} must be a mapping of its fields, "
                                  f"got {value!r}")
        head, dot, rest = key.partition(".")
        if dot and head in groups:
            group = out.setdefault(head, {})
            if not isinstance(group, dict):
                group = out[head] = dict(group)
            group[rest] = value
        elif key in groups and key in out:
            out[key] = {**value, **out[key]}
        else:
            out[key] = dict(value) if key in groups and isinstance(value, dict) else value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain, YAML-safe dict (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def field_docs(cls: type) -> dict[str, str]:
    """``field -> the first sentence of its docstring`` (the string literal under each field of
    a config dataclass, read from the source: the docs table of config fields is built from it)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                text = " ".join(nxt.value.value.split())
                docs[node.target.id] = text.split(". ")[0].rstrip(".") + "."
    return docs


def fields_markdown(classes: dict[str, type]) -> str:
    """A markdown table per config class: field, default, meaning."""
    out = []
    for title, cls in classes.items():
        docs = field_docs(cls)
        out += [f"## {title} (`{cls.__module__}.{cls.__qualname__}`)", "",
                "| field | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "(required)"
            meaning = docs.get(f.name, "").replace("|", "\\|")
            if dataclasses.is_dataclass(default):  # a group: one row per field of it
                sub = field_docs(type(default))
                out.append(f"| `{f.name}` | (group) | {meaning} |")
                for g in dataclasses.fields(default):
                    text = sub.get(g.name, "").replace("|", "\\|")
                    out.append(f"| `{f.name}.{g.name}` | `{getattr(default, g.name)!r}` | "
                               f"{text} |")
                continue
            out.append(f"| `{f.name}` | `{default!r}` | {meaning} |")
        out.append("")
    return "\n".join(out)
