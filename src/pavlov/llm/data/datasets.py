"""Prompt, SFT and preference data: loading with validation, tokenization, packing, and the
built-in Rotten Tomatoes snippets.

Sources are ``.jsonl`` / ``.csv`` / ``.parquet`` files (Parquet needs pyarrow) or any iterable
of dicts (a Hugging Face ``datasets.Dataset``, a list). Records hold ``prompt`` (prompt sets),
``prompt`` + ``completion`` or ``messages`` (SFT: a list of ``{"role", "content"}`` ending with
the assistant's reply), ``prompt`` + ``chosen`` + ``rejected`` (preferences); ``columns`` maps
these names to yours. Bad input raises :class:`PavlovError` naming the file, the 1-based row
(the line for JSONL, the data row after the header for CSV, the record otherwise) and the field.

With ``chat_template=True`` and a tokenizer that has one, prompts are rendered as a user turn
plus the generation prompt and completions as the rendered assistant turn (its end-of-turn
token included); such examples have ``chat=True`` and are tokenized without adding special
tokens or an extra eos. Without a template, ``messages`` fall back to ``"role: content"`` lines.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from pavlov.errors import ConfigError, PavlovError
from pavlov.llm.models.loading import ensure_pad_token, pad_right

WORD = re.compile(r"[a-z0-9]+")
"""A word of :func:`words`: a run of lowercase letters and digits ("it's" is "it", "s")."""


def words(text: str) -> list[str]:
    """Lowercase words of ``text``, punctuation dropped (distinct-n, topic words)."""
    return WORD.findall(text.lower())


IGNORE_INDEX = -100
FILE_TYPES = (".jsonl", ".csv", ".parquet")
PREF_FIELDS = ("prompt", "chosen", "rejected")
DataSource = str | os.PathLike | Iterable[Mapping]


@dataclass(frozen=True)
class PromptExample:
    prompt: str
    chat: bool = False
    """The prompt is chat-template rendered: tokenize it without adding special tokens."""
    source: str = ""
    """Where it came from (``"data.jsonl row 3"``), for error messages."""


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    completion: str
    chat: bool = False
    source: str = ""


@dataclass(frozen=True)
class PreferenceExample:
    prompt: str
    chosen: str
    rejected: str
    chat: bool = False
    source: str = ""


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: int
    source: str = ""


@dataclass(frozen=True)
class TokenizedSFT:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    """``input_ids`` with prompt tokens replaced by -100 (loss on the completion only)."""
    source: str = ""


@dataclass(frozen=True)
class TokenizedPreference:
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    source: str = ""


@dataclass(frozen=True)
class PackedBlock:
    """``block_size`` tokens holding whole examples; positions restart at 0 for each example."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    position_ids: tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Reading records


def _read_jsonl(path: Path) -> Iterator[tuple[str, Mapping]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PavlovError(f"{path} row {lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                kind = type(record).__name__
                raise PavlovError(f"{path} row {lineno}: expected a JSON object, got {kind}")
            yield f"{path} row {lineno}", record


def _read_csv(path: Path) -> Iterator[tuple[str, Mapping]]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        row = 0
        try:
            for row, record in enumerate(reader, start=1):  # noqa: B007 - row used on error
                yield f"{path} row {row}", record
        except csv.Error as err:
            raise PavlovError(f"{path} row {row + 1}: malformed CSV ({err})") from err


def _read_parquet(path: Path) -> Iterator[tuple[str, Mapping]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise PavlovError(
            f"{path}: reading .parquet needs pyarrow, which is not installed (pip install pyarrow)"
        ) from err
    import pyarrow as pa

    try:
        records = pq.read_table(path).to_pylist()
    except pa.ArrowException as err:  # not Parquet, truncated, or a schema pyarrow cannot read
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PavlovError(f"{path}: not a readable Parquet file ({reason})") from err
    for row, record in enumerate(records, start=1):
        yield f"{path} row {row}", record


_READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def read_records(source: DataSource) -> Iterator[tuple[str, Mapping]]:
    """Yield ``(where, record)`` pairs; ``where`` is ``"<file> row <n>"`` (1-based)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise PavlovError(
                f"{path}: unsupported data file type {path.suffix or '(none)'} "
                f"(use .jsonl, .csv or .parquet)"
            )
        try:
            yield from reader(path)
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise PavlovError(f"cannot read {path}: {reason}") from err
        return
    name = f"<{type(source).__name__}>"
    if not isinstance(source, Iterable):
        raise PavlovError(f"{name}: not a data file path or an iterable of dicts")
    for row, record in enumerate(source, start=1):
        if not isinstance(record, Mapping):
            hint = " (pass one split, e.g. ds['train'])" if isinstance(record, str) else ""
            kind = type(record).__name__
            raise PavlovError(f"{name} row {row}: expected a dict, got {kind}{hint}")
        yield f"{name} row {row}", record


def _text(record: Mapping, field: str, where: str, columns: Mapping[str, str]) -> str:
    col = columns.get(field, field)
    value = record.get(col)
    if value is None:
        raise PavlovError(f"{where}: field '{col}' is missing")
    if not isinstance(value, str):
        raise PavlovError(f"{where}: field '{col}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise PavlovError(f"{where}: field '{col}' is empty")
    return value


def _messages(record: Mapping, where: str, columns: Mapping[str, str]) -> list[dict]:
    col = columns.get("messages", "messages")
    value = record.get(col)
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise PavlovError(f"{where}: field '{col}' is not valid JSON ({err.msg})") from err
    if not isinstance(value, list) or not value:
        raise PavlovError(f"{where}: field '{col}' must be a non-empty list of messages")
    for i, msg in enumerate(value, start=1):
        if not isinstance(msg, Mapping):
            raise PavlovError(f"{where}: field '{col}' message {i} must be a dict")
        for key in ("role", "content"):
            _text(msg, key, f"{where}: field '{col}' message {i}", {})
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _has(record: Mapping, field: str, columns: Mapping[str, str]) -> bool:
    return record.get(columns.get(field, field)) is not None


def tokenize_prompts(prompts: Sequence[str | PromptExample], tokenizer) -> list[list[int]]:
    """Token ids of each prompt: a plain string with the tokenizer's special tokens, a
    chat-rendered :class:`PromptExample` without (its template wrote them)."""
    out = []
    for i, p in enumerate(prompts):
        text, chat = (p.prompt, p.chat) if isinstance(p, PromptExample) else (p, False)
        if not isinstance(text, str) or not text:
            raise ConfigError(f"prompt {i} must be a non-empty string, got {text!r}")
        out.append(list(tokenizer(text, add_special_tokens=not chat)["input_ids"]))
    return out


def prompt_texts(prompts: Sequence[str | PromptExample]) -> list[str]:
    """The text of each prompt (what a reward function receives)."""
    return [p.prompt if isinstance(p, PromptExample) else p for p in prompts]


def chat_reply_form(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """``messages`` (without the reply) rendered by the chat template with the generation
    prompt, and the text the template writes after a reply (its end-of-turn marker):
    ``prompt + reply + suffix`` is the template's rendering of the whole conversation."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    marker = "\x00"
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": marker}], tokenize=False
    )
    if not full.startswith(prompt) or marker not in full[len(prompt) :]:
        raise PavlovError("the chat template does not render the reply after the prompt")
    return prompt, full[len(prompt) :].split(marker, 1)[1]


# ---------------------------------------------------------------------------------------------
# Chat rendering


def _templated(tokenizer, chat_template: bool) -> bool:
    return bool(
        chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None)
    )


def _render_prompt(messages: list[dict], tokenizer, templated: bool) -> str:
    if templated:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _split_turns(messages: list[dict], tokenizer, templated: bool, where: str) -> tuple[str, str]:
    """``messages`` ending with the assistant's reply -> ``(prompt, completion)`` text."""
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise PavlovError(
            f"{where}: field 'messages' must end with an assistant reply after another message"
        )
    prompt = _render_prompt(messages[:-1], tokenizer, templated)
    if not templated:
        return prompt, " " + messages[-1]["content"]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise PavlovError(f"{where}: the chat template does not render the reply after the prompt")
    return prompt, full[len(prompt) :]


def _pair(prompt: str, reply: str, tokenizer, templated: bool, where: str) -> tuple[str, str]:
    if not templated:
        return prompt, reply
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return _split_turns(turns, tokenizer, templated, where)


# ---------------------------------------------------------------------------------------------
# Loaders


def _collect(source: DataSource, parse) -> list:
    out = [parse(where, record) for where, record in read_records(source)]
    if not out:
        name = source if isinstance(source, str | os.PathLike) else f"<{type(source).__name__}>"
        raise PavlovError(f"{name}: no rows")
    return out


def load_prompts(
    source: DataSource, *, tokenizer=None, chat_template: bool = False, columns=None
) -> list[PromptExample]:
    """Prompt set from records with ``prompt`` (or ``messages`` not ending with the assistant)."""
    cols, templated = dict(columns or {}), _templated(tokenizer, chat_template)

    def parse(where: str, rec: Mapping) -> PromptExample:
        if not _has(rec, "prompt", cols) and _has(rec, "messages", cols):
            msgs = _messages(rec, where, cols)
            if msgs[-1]["role"] == "assistant":
                raise PavlovError(f"{where}: field 'messages' must not end with the assistant")
            return PromptExample(_render_prompt(msgs, tokenizer, templated), templated, where)
        prompt = _text(rec, "prompt", where, cols)
        if templated:
            prompt = _render_prompt([{"role": "user", "content": prompt}], tokenizer, True)
        return PromptExample(prompt, templated, where)

    return _collect(source, parse)


def load_sft(
    source: DataSource, *, tokenizer=None, chat_template: bool = False, columns=None
) -> list[SFTExample]:
    """SFT set from ``prompt`` + ``completion`` records or ``messages`` conversations."""
    cols, templated = dict(columns or {}), _templated(tokenizer, chat_template)

    def parse(where: str, rec: Mapping) -> SFTExample:
        if not _has(rec, "prompt", cols) and _has(rec, "messages", cols):
            msgs = _messages(rec, where, cols)
            return SFTExample(*_split_turns(msgs, tokenizer, templated, where), templated, where)
        prompt = _text(rec, "prompt", where, cols)
        completion = _text(rec, "completion", where, cols)
        return SFTExample(*_pair(prompt, completion, tokenizer, templated, where), templated, where)

    return _collect(source, parse)


def load_preferences(
    source: DataSource, *, tokenizer=None, chat_template: bool = False, columns=None
) -> list[PreferenceExample]:
    """Preference set from ``prompt`` + ``chosen`` + ``rejected`` records (all strings)."""
    cols, templated = dict(columns or {}), _templated(tokenizer, chat_template)

    def parse(where: str, rec: Mapping) -> PreferenceExample:
        prompt, chosen, rejected = (_text(rec, f, where, cols) for f in PREF_FIELDS)
        if chosen == rejected:
            raise PavlovError(f"{where}: fields 'chosen' and 'rejected' are identical")
        rendered, chosen = _pair(prompt, chosen, tokenizer, templated, where)
        rejected = _pair(prompt, rejected, tokenizer, templated, where)[1]
        return PreferenceExample(rendered, chosen, rejected, templated, where)

    return _collect(source, parse)


# ---------------------------------------------------------------------------------------------
# Tokenization and packing


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _eos(tokenizer, chat: bool) -> list[int]:
    """The eos id to append to a plain completion (chat completions end with the template's)."""
    if chat:
        return []
    if tokenizer.eos_token_id is None:
        raise PavlovError("tokenizer has no eos token: completions cannot be terminated")
    return [tokenizer.eos_token_id]


def _prompt_room(prompt_ids: list[int], max_length: int, source: str) -> int:
    if len(prompt_ids) >= max_length:
        raise PavlovError(
            f"{source or 'example'}: prompt is {len(prompt_ids)} tokens, no room for a reply "
            f"within max_length {max_length}"
        )
    return max_length - len(prompt_ids)


def tokenize_sft(examples: Sequence[SFTExample], tokenizer, max_length: int) -> list[TokenizedSFT]:
    """Tokenize prompt and completion separately; labels are -100 on prompt tokens.

    Plain completions get eos appended. A sequence longer than ``max_length`` loses the end of
    its completion (eos included); a prompt of ``max_length`` tokens or more raises.
    """
    ensure_pad_token(tokenizer)
    out = []
    for ex in examples:
        prompt = _ids(tokenizer, ex.prompt, not ex.chat)
        room = _prompt_room(prompt, max_length, ex.source)
        completion = (_ids(tokenizer, ex.completion, False) + _eos(tokenizer, ex.chat))[:room]
        labels = [IGNORE_INDEX] * len(prompt) + completion
        out.append(TokenizedSFT(tuple(prompt + completion), tuple(labels), ex.source))
    return out


def tokenize_preferences(
    examples: Sequence[PreferenceExample], tokenizer, max_length: int
) -> list[TokenizedPreference]:
    """Tokenize prompt, chosen and rejected; prompt + each reply fits in ``max_length``.

    Plain replies get eos appended, then are cut to ``max_length - len(prompt)``; a prompt of
    ``max_length`` tokens or more raises :class:`PavlovError` naming its row.
    """
    ensure_pad_token(tokenizer)
    out = []
    for ex in examples:
        prompt = _ids(tokenizer, ex.prompt, not ex.chat)
        room = _prompt_room(prompt, max_length, ex.source)
        eos = _eos(tokenizer, ex.chat)
        chosen = (_ids(tokenizer, ex.chosen, False) + eos)[:room]
        rejected = (_ids(tokenizer, ex.rejected, False) + eos)[:room]
        out.append(TokenizedPreference(tuple(prompt), tuple(chosen), tuple(rejected), ex.source))
    return out


def pack_sequences(
    features: Sequence[TokenizedSFT], block_size: int, pad_id: int
) -> list[PackedBlock]:
    """Pack whole examples, in order, into blocks of exactly ``block_size`` tokens.

    A block takes examples until the next one does not fit (never split); the tail is padding
    (``pad_id``, label -100, position 0). Position ids restart at 0 for each example and each
    example's first label is -100, so no loss term predicts one example from another. Call the
    model with ``position_ids`` and *no* ``attention_mask`` and ``use_cache=False``:
    transformers then finds the example boundaries from the restarting positions and masks
    attention block-diagonally (see :func:`collate_packed`).
    """
    blocks, current, used = [], [], 0
    for f in features:
        if len(f.input_ids) > block_size:
            raise PavlovError(
                f"{f.source or 'example'}: {len(f.input_ids)} tokens, longer than block_size "
                f"{block_size} (tokenize with max_length <= block_size)"
            )
        if used + len(f.input_ids) > block_size:
            blocks.append(_block(current, block_size, pad_id))
            current, used = [], 0
        current.append(f)
        used += len(f.input_ids)
    if current:
        blocks.append(_block(current, block_size, pad_id))
    return blocks


def _block(items: list[TokenizedSFT], block_size: int, pad_id: int) -> PackedBlock:
    ids, labels, pos = [], [], []
    for f in items:
        ids += f.input_ids
        labels += [IGNORE_INDEX, *f.labels[1:]]
        pos += range(len(f.input_ids))
    fill = block_size - len(ids)
    return PackedBlock(
        tuple(ids + [pad_id] * fill), tuple(labels + [IGNORE_INDEX] * fill), tuple(pos + [0] * fill)
    )


def collate_sft(batch: Sequence[TokenizedSFT], pad_id: int) -> dict[str, Tensor]:
    """Right-pad: ``input_ids``, ``attention_mask``, ``position_ids``, ``labels``, each (B, T)."""
    ids, mask, pos = pad_right([f.input_ids for f in batch], pad_id)
    labels = pad_right([f.labels for f in batch], IGNORE_INDEX)[0]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels}


def collate_packed(blocks: Sequence[PackedBlock]) -> dict[str, Tensor]:
    """Stack packed blocks: ``input_ids``, ``position_ids``, ``labels`` (B, block_size).

    No ``attention_mask`` on purpose: pass these to the model with ``use_cache=False``.
    """
    import torch

    return {
        key: torch.tensor([getattr(b, key) for b in blocks], dtype=torch.long)
        for key in ("input_ids", "position_ids", "labels")
    }
