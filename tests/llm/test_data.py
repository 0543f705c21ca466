"""pavlov.llm.data.datasets: loading with validation, chat templates, tokenization, packing, RT
corpus."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from collections import Counter

import pytest
import torch

from pavlov.errors import PavlovError
from pavlov.llm.data.datasets import (
    IGNORE_INDEX,
    PreferenceExample,
    SFTExample,
    TokenizedSFT,
    collate_packed,
    collate_sft,
    load_preferences,
    load_prompts,
    load_sft,
    pack_sequences,
    tokenize_preferences,
    tokenize_sft,
)
from pavlov.llm.data.rt import (
    rt_movies,
    rt_preferences,
    rt_sentiment,
    rt_sft,
    rt_split_of,
    rt_synopsis,
    rt_topic_words,
)
from pavlov.llm.models import assets
from pavlov.llm.models.tiny import tiny_causal_lm, tiny_tokenizer


def _jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_jsonl_csv_and_iterables(tmp_path):
    rows = [{"prompt": "Hi", "completion": " there"}, {"prompt": "2+2=", "completion": " 4"}]
    from_jsonl = load_sft(_jsonl(tmp_path / "a.jsonl", rows))
    header = ["prompt", "completion"]
    from_csv = load_sft(_csv(tmp_path / "a.csv", header, [list(r.values()) for r in rows]))
    from_list = load_sft(rows)
    assert [(e.prompt, e.completion) for e in from_jsonl] == [("Hi", " there"), ("2+2=", " 4")]
    for other in (from_csv, from_list):
        assert [(e.prompt, e.completion) for e in other] == [
            (e.prompt, e.completion) for e in from_jsonl
        ]
    assert from_jsonl[1].source.endswith("a.jsonl row 2") and not from_jsonl[0].chat
    assert from_csv[0].source.endswith("a.csv row 1")

    class Dataset:  # duck-typed Hugging Face dataset
        def __iter__(self):
            return iter([{"question": "Why?"}])

    prompts = load_prompts(Dataset(), columns={"prompt": "question"})
    assert prompts[0].prompt == "Why?" and prompts[0].source == "<Dataset> row 1"
    prefs = load_preferences([{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    assert prefs == [PreferenceExample("p", "good", "bad", False, "<list> row 1")]


def test_jsonl_rows_are_line_numbers(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, "\n", {"prompt": ""}])
    with pytest.raises(PavlovError, match=r"p\.jsonl row 3: field 'prompt' is empty"):
        load_prompts(path)


_ONE = '{"prompt": "a", "completion": "b"}\n'
_USER = '{"role": "user", "content": "hi"}'
SFT_ERRORS = [
    (_ONE + '{"completion": "b"}\n', r"row 2: field 'prompt' is missing"),
    ('{"prompt": "a", "completion": "  "}\n', r"row 1: field 'completion' is empty"),
    ('{"prompt": 3, "completion": "b"}\n', r"row 1: field 'prompt' must be a string, got int"),
    ('{"prompt": "a", "completion": null}\n', r"row 1: field 'completion' is missing"),
    (_ONE + '{"prompt": "a",\n', r"row 2: invalid JSON"),
    ('["a", "b"]\n', r"row 1: expected a JSON object, got list"),
    ('{"messages": [' + _USER + "]}\n", r"row 1: field 'messages' must end with an assistant"),
    ('{"messages": []}\n', r"row 1: field 'messages' must be a non-empty list"),
    (
        '{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}\n',
        r"row 1: field 'messages' message 1: field 'content' is missing",
    ),
    ("", r"no rows"),
]


@pytest.mark.parametrize(("content", "message"), SFT_ERRORS)
def test_sft_jsonl_errors_name_file_row_field(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(PavlovError, match=message) as err:
        load_sft(path)
    assert "train.jsonl" in str(err.value) and "\n" not in str(err.value)


def test_csv_errors(tmp_path):
    path = _csv(tmp_path / "prefs.csv", ["prompt", "chosen"], [["p", "c"]])
    with pytest.raises(PavlovError, match=r"prefs\.csv row 1: field 'rejected' is missing"):
        load_preferences(path)
    path = _csv(
        tmp_path / "prefs.csv", ["prompt", "chosen", "rejected"], [["p", "c", "r"], ["p", "c", ""]]
    )
    with pytest.raises(PavlovError, match=r"prefs\.csv row 2: field 'rejected' is empty"):
        load_preferences(path)
    path = _csv(tmp_path / "same.csv", ["prompt", "chosen", "rejected"], [["p", "same", "same"]])
    with pytest.raises(
        PavlovError, match=r"same\.csv row 1: fields 'chosen' and 'rejected' are identical"
    ):
        load_preferences(path)
    path = _csv(tmp_path / "m.csv", ["messages"], [["not json"]])
    with pytest.raises(PavlovError, match=r"m\.csv row 1: field 'messages' is not valid JSON"):
        load_sft(path)


def test_file_type_and_unreadable_errors(tmp_path):
    with pytest.raises(
        PavlovError,
        match=r"data\.xlsx: unsupported data file type \.xlsx \(use \.jsonl, \.csv or \.parquet\)",
    ):
        load_prompts(tmp_path / "data.xlsx")
    with pytest.raises(PavlovError, match=r"cannot read .*missing\.jsonl: No such file"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PavlovError, match=r"cannot read .*bin\.jsonl"):
        load_prompts(tmp_path / "bin.jsonl")
    with pytest.raises(PavlovError, match=r"<list> row 2: expected a dict, got int"):
        load_prompts([{"prompt": "a"}, 3])
    with pytest.raises(PavlovError, match=r"pass one split"):
        load_prompts(["train", "test"])  # a DatasetDict iterates over split names


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_is_a_clear_error(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(PavlovError, match=r"d\.parquet: reading \.parquet needs pyarrow"):
        load_prompts(tmp_path / "d.parquet")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_roundtrip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "d.parquet")
    assert [e.prompt for e in load_prompts(tmp_path / "d.parquet")] == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# Chat templates


def test_chat_template_applied_when_asked_and_present():
    tok = tiny_tokenizer()
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}]}]  # fmt: skip
    ex = load_sft(rows, tokenizer=tok, chat_template=True)[0]
    assert ex.chat
    assert ex.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert ex.completion == "Hello!<|im_end|>\n"
    plain = load_sft(rows, tokenizer=tok)[0]  # not asked: plain "role: content" lines
    assert not plain.chat and plain.prompt == "system: Be brief.\nuser: Hi\nassistant:"
    assert plain.completion == " Hello!"
    pair = load_sft([{"prompt": "Hi", "completion": "Yo"}], tokenizer=tok, chat_template=True)[0]
    assert pair.prompt.endswith("user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert pair.completion == "Yo<|im_end|>\n"
    prompt = load_prompts([{"prompt": "Hi"}], tokenizer=tok, chat_template=True)[0]
    assert prompt.chat and prompt.prompt == pair.prompt
    pref = load_preferences([{"prompt": "Hi", "chosen": "Yo", "rejected": "No"}], tokenizer=tok,
                            chat_template=True)[0]  # fmt: skip
    assert (pref.prompt, pref.chosen, pref.rejected) == (
        pair.prompt,
        pair.completion,
        "No<|im_end|>\n",
    )
    tok.chat_template = None  # asked but absent: plain
    assert not load_sft(rows, tokenizer=tok, chat_template=True)[0].chat


# ---------------------------------------------------------------------------------------------
# Tokenization


def test_tokenize_sft_masks_prompt_and_appends_eos():
    tok = tiny_tokenizer()
    ex = SFTExample("Review of Up:", " A warm film.", source="x.jsonl row 1")
    (feat,) = tokenize_sft([ex], tok, max_length=64)
    prompt = tok("Review of Up:")["input_ids"]
    completion = tok(" A warm film.", add_special_tokens=False)["input_ids"]
    assert list(feat.input_ids) == prompt + completion + [tok.eos_token_id]
    assert list(feat.labels) == [IGNORE_INDEX] * len(prompt) + completion + [tok.eos_token_id]
    (cut,) = tokenize_sft([ex], tok, max_length=len(prompt) + 2)
    assert list(cut.labels) == [IGNORE_INDEX] * len(prompt) + completion[:2]
    with pytest.raises(PavlovError, match=r"x\.jsonl row 1: prompt is \d+ tokens, no room"):
        tokenize_sft([ex], tok, max_length=len(prompt))


def test_tokenize_chat_sft_adds_no_extra_eos():
    tok = tiny_tokenizer()
    ex = load_sft([{"prompt": "Hi", "completion": "Yo"}], tokenizer=tok, chat_template=True)[0]
    (feat,) = tokenize_sft([ex], tok, max_length=64)
    assert feat.input_ids.count(tok.eos_token_id) == 2  # user turn + assistant turn
    completion = [t for t in feat.labels if t != IGNORE_INDEX]
    assert tok.decode(completion) == "Yo<|im_end|>\n"


def test_tokenizer_without_pad_or_eos_raises():
    tok = tiny_tokenizer()
    tok.pad_token = None
    tokenize_sft([SFTExample("a", "b")], tok, 16)
    assert tok.pad_token_id == tok.eos_token_id  # eos reused as pad
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(PavlovError, match="neither a pad nor an eos"):
        tokenize_sft([SFTExample("a", "b")], tok, 16)


def test_tokenize_preferences_truncates_and_names_row():
    tok = tiny_tokenizer()
    ex = PreferenceExample(
        "Review of Up:", " great", " a very long and boring one", source="p.csv row 7"
    )
    (feat,) = tokenize_preferences([ex], tok, max_length=64)
    assert list(feat.prompt_ids) == tok("Review of Up:")["input_ids"]
    assert feat.chosen_ids[-1] == tok.eos_token_id and feat.rejected_ids[-1] == tok.eos_token_id
    room = 3
    (short,) = tokenize_preferences([ex], tok, max_length=len(feat.prompt_ids) + room)
    assert len(short.chosen_ids) <= room and len(short.rejected_ids) == room
    with pytest.raises(
        PavlovError,
        match=r"p\.csv row 7: prompt is \d+ tokens, no room for a reply within max_length 2",
    ):
        tokenize_preferences([ex], tok, max_length=2)


def test_collate_sft_pads_labels_with_ignore_index():
    feats = [TokenizedSFT((5, 6, 7), (-100, 6, 7)), TokenizedSFT((8,), (-100,))]
    batch = collate_sft(feats, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


# ---------------------------------------------------------------------------------------------
# Packing


def _feat(n, start):
    ids = tuple(range(start, start + n))
    return TokenizedSFT(ids, (-100,) + ids[1:], f"row {start}")


def test_pack_sequences_boundaries():
    feats = [_feat(4, 10), _feat(3, 20), _feat(5, 30), _feat(8, 40)]
    blocks = pack_sequences(feats, block_size=8, pad_id=0)
    assert [len(b.input_ids) for b in blocks] == [8, 8, 8]
    assert blocks[0].input_ids == (10, 11, 12, 13, 20, 21, 22, 0)
    assert blocks[0].position_ids == (0, 1, 2, 3, 0, 1, 2, 0)
    assert blocks[0].labels == (-100, 11, 12, 13, -100, 21, 22, -100)
    assert blocks[1].input_ids == (30, 31, 32, 33, 34, 0, 0, 0)
    assert blocks[2].input_ids == tuple(range(40, 48)) and blocks[2].position_ids == tuple(range(8))
    for b in blocks:  # a label at a position-0 token would be predicted across a boundary
        assert all(
            lab == -100 for lab, pos in zip(b.labels, b.position_ids, strict=True) if pos == 0
        )
    with pytest.raises(PavlovError, match=r"row 40: 8 tokens, longer than block_size 7"):
        pack_sequences(feats, block_size=7, pad_id=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_logits_equal_separate(arch):
    model, tok = tiny_causal_lm(arch=arch)
    feats = tokenize_sft(rt_sft("test")[:6], tok, max_length=40)
    blocks = pack_sequences(feats, block_size=96, pad_id=tok.pad_token_id)
    assert len(blocks) < len(feats)
    batch = collate_packed(blocks)
    assert set(batch) == {"input_ids", "position_ids", "labels"}
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits  # fmt: skip
        block, offset = 0, 0
        for f in feats:
            n = len(f.input_ids)
            if offset + n > 96:
                block, offset = block + 1, 0
            alone = model(input_ids=torch.tensor([f.input_ids])).logits[0]
            torch.testing.assert_close(packed[block, offset : offset + n], alone, atol=1e-5, rtol=0)
            offset += n


# ---------------------------------------------------------------------------------------------
# Rotten Tomatoes


def _movie(source):
    return re.search(r"\(([^()]+)\)$", source).group(1)


def test_rt_corpus_counts():
    rows = assets.rt_rows()
    assert len(rows) == 13_905
    assert Counter(r.category for r in rows) == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    kinds = {}
    for r in rows:
        kinds.setdefault(r.movie, set()).add(r.category)
    assert sum({"fresh", "rotten"} <= k for k in kinds.values()) == 465
    assert len(rt_movies("all")) == 508  # movies with at least one critic snippet


def test_rt_split_by_movie_is_disjoint_and_deterministic():
    train, test = set(rt_movies("train")), set(rt_movies("test"))
    assert not train & test and train | test == set(rt_movies("all"))
    assert (len(train), len(test)) == (463, 45)
    assert all(rt_split_of(m) == "test" for m in test)
    sft_train, sft_test = rt_sft("train"), rt_sft("test")
    assert (len(sft_train), len(sft_test)) == (11_589, 1_219)
    assert {_movie(e.source) for e in sft_train} <= train
    assert {_movie(e.source) for e in sft_test} <= test
    assert {_movie(e.source) for e in rt_preferences("test")} <= test
    assert {_movie(e.source) for e in rt_preferences("train")} <= train
    with pytest.raises(PavlovError, match="unknown split 'valid'"):
        rt_sft("valid")


def test_rt_sft_and_sentiment():
    ex = rt_sft("all")[0]
    assert ex.prompt == "Review of A Grin Without A Cat:" and ex.completion.startswith(" ")
    assert assets.rt_title("hot_zone_the") == "The Hot Zone"
    assert assets.rt_title("maelstr%f6m") == "Maelström"
    sentiment = rt_sentiment("all")
    assert len(sentiment) == 12_808
    assert Counter(e.label for e in sentiment) == {1: 7403, 0: 5405}


def test_rt_preferences_pairs():
    pairs = rt_preferences("all")
    again = rt_preferences("all")
    assert pairs == again and len(pairs) == 2_495
    assert len(rt_preferences("all", max_pairs_per_movie=None)) == 3_224
    assert len({_movie(p.source) for p in pairs}) == 465
    assert rt_preferences("all", seed=1) != pairs
    assert max(Counter(_movie(p.source) for p in pairs).values()) == 8
    label = {e.text: e.label for e in rt_sentiment("all")}
    for p in pairs[:200]:
        assert label[p.chosen[1:]] == 1 and label[p.rejected[1:]] == 0
        assert p.prompt.startswith("Review of ")


def test_rt_topic_words_are_title_and_rare_synopsis_words():
    movies = rt_movies("all")
    assert sum(bool(rt_synopsis(m)) for m in movies) == 156
    assert sum(bool(rt_synopsis(m)) for m in rt_movies("test")) == 15
    catch = rt_topic_words("catch_me_if_you_can")
    assert {"catch", "fbi", "pilot", "airline"} <= catch  # title and synopsis content words
    assert not {"me", "if", "you", "can"} & catch  # stopwords
    bubba = rt_topic_words("bubba_hotep")
    assert {"bubba", "hotep", "elvis"} <= bubba
    assert not {"really", "happy", "film"} & bubba  # common review vocabulary
    assert rt_topic_words("a_song_for_martin") == {"song", "martin"}  # no synopsis: the title
