"""`leaf detect` on SmolLM2-135M-Instruct from its GGUF file, both levels."""

from __future__ import annotations

import json
import re

import pytest

WORD = re.compile(r"\w+")


def whole_words_removed(original: str, pruned: str) -> bool:
    """`pruned` is `original` minus whole words: its words, in order, are some of the
    original's, none of them cut ("24" never becomes "2")."""
    left = iter(WORD.findall(original))
    return all(word in left for word in WORD.findall(pruned))


def _pruned_texts(record: dict) -> list[tuple[str, str]]:
    """(original, pruned) for every pruned context of a record, all views."""
    pairs = [(record["instruction"], record["collective"])]
    pairs += [(record["instruction"], p["instruction"]) for p in record["pruned"]]
    for view in record.get("views", []):
        prefix = record["output"][: view["target"][0]]
        for p in [*view["pruned"], view["collective"]]:
            pairs += [(record["instruction"], p["instruction"]), (prefix, p["output_prefix"])]
    return pairs


def test_word_check_catches_a_cut_number() -> None:
    assert whole_words_removed("Tom baked 24 muffins.", "Tom baked muffins.")
    assert not whole_words_removed("Tom baked 24 muffins.", "Tom baked 2 muffins.")
    assert not whole_words_removed("S reads", "Sara reads") and whole_words_removed("a b", "")


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("level", ["instruction", "response"])
def test_detect_from_gguf_prunes_whole_words(level: str, real_detect) -> None:
    detected = real_detect(level)
    assert detected.code == 0, detected.stderr
    out, export, err = detected.records, detected.export, detected.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["muffins", "pages", "coins"]
    for record in records:
        assert record["params"]["unit"] == "word"
        assert record["params"]["compare"] == "tokens"  # one tokenizer: compared on tokens
        assert record["spans"], record["id"]  # the bottom 25 % is never empty
        assert all(WORD.fullmatch(t["text"]) or not WORD.search(t["text"])
                   for t in record["tokens"] if t["confounder"])
        for original, pruned in _pruned_texts(record):
            assert whole_words_removed(original, pruned), (original, pruned)
        if level == "response":
            assert len(record["views"]) == 1
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert rows
    for row in rows:  # the official training format: its pruned texts beside the originals
        assert whole_words_removed(row["original_instruction"], row["instruction"])
        if "step_response" in row:
            assert whole_words_removed(row["original_step_response"], row["step_response"])
    last = err.strip().splitlines()[-1]
    assert last.startswith("wrote 3 records") and re.search(r"peak memory [\d.]+ GiB RSS", last)
