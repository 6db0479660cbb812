"""The corpus report against a naive recount of the same records.

Records are generated with known token categories (each word drawn from a category's pool;
the first and last visible token of a field are template-adjacent), in three tokenisations
(word-level, separate whitespace tokens, GPT-2-style leading spaces), some verified, some at
response level. The test then loads them all and counts the plain way.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leaf_engine.errors import ConfigError, InputError
from leaf_engine.prune import find_spans
from leaf_engine.report import (
    TAUS,
    ReportBuilder,
    ReportConfig,
    build_report,
    render_html,
    render_markdown,
    report_with_comparison,
)
from leaf_engine.report.counter import BoundedCounter, Tally
from leaf_engine.report.tokens import category, normalised, snippet

POOLS = {
    "number": ["7", "12", "3.5", "1,000", "seven"],
    "name": ["Ann", "Bob", "Paris"],
    "function": ["the", "of", "and", "how", "is"],
    "punctuation": [".", ",", "?", "!"],
    "other": ["apples", "pens", "blue", "<b>"],
}
KINDS = list(POOLS)
SCORES = [0.0, 0.05, 0.1, 0.1000001, 0.15, 0.3, 0.45, 0.5, 0.7, 1.0]  # tau edges included
RUN_TAU = 0.1


def _tokens(text: str, style: str) -> list[tuple[int, int]]:
    if style == "words":
        return [m.span() for m in re.finditer(r"\S+", text)]
    if style == "spaces":
        return [m.span() for m in re.finditer(r"\S+|\s+", text)]
    return [m.span() for m in re.finditer(r"\s*\S+", text)]  # GPT-2 style " word"


def _field_tokens(rng: random.Random, text: str, name: str, style: str, segment: int,
                  kinds: list[str], truth: dict[tuple[int, str, int], str]
                  ) -> list[dict[str, Any]]:
    out = []
    visible = [(s, e) for s, e in _tokens(text, style) if text[s:e].strip()]
    word = 0
    for s, e in _tokens(text, style):
        if not text[s:e].strip():
            # whitespace: low scores that must never count as flags
            out.append({"text": text[s:e], "start": s, "end": e, "score": 0.0,
                        "confounder": False, "field": name})
            continue
        score = rng.choice(SCORES)
        out.append({"text": text[s:e], "start": s, "end": e, "score": score,
                    "confounder": score <= RUN_TAU, "field": name})
        boundary = (s, e) in (visible[0], visible[-1])
        truth[(segment, name, s)] = "template" if boundary else kinds[word]
        word += 1
    return out


def _words(rng: random.Random, n: int) -> tuple[str, list[str]]:
    kinds = [rng.choice(KINDS) for _ in range(n)]
    return " ".join(rng.choice(POOLS[k]) for k in kinds), kinds


def _view(rng: random.Random, texts: dict[str, str], style: str, segment: int,
          kinds: dict[str, list[str]], truth: dict[tuple[int, str, int], str],
          verify: bool) -> tuple[list[dict[str, Any]], list[tuple[str, int, int]],
                                 list[dict[str, Any]]]:
    tokens: list[dict[str, Any]] = []
    spans: list[tuple[str, int, int]] = []
    for name, text in texts.items():
        mine = _field_tokens(rng, text, name, style, segment, kinds[name], truth)
        tokens += mine
        spans += [(name, s, e) for s, e in find_spans(
            text, [(t["start"], t["end"]) for t in mine], [t["confounder"] for t in mine])]
    pruned = []
    for name, s, e in spans:
        entry: dict[str, Any] = {"instruction": "(pruned)",
                                 "span": {"field": name, "start": s, "end": e}}
        if verify:
            entry["verified"] = rng.random() < 0.4
        pruned.append(entry)
    return tokens, spans, pruned


def make_record(rng: random.Random, index: int, *, style: str = "words",
                response: bool = False, verify: bool = True
                ) -> tuple[dict[str, Any], dict[tuple[int, str, int], str]]:
    """A detection record as `leaf detect` writes it, and each visible token's category."""
    instruction, kinds = _words(rng, rng.randint(3, 12))
    output, out_kinds = _words(rng, rng.randint(4, 8))
    truth: dict[tuple[int, str, int], str] = {}
    tokens, spans, pruned = _view(rng, {"instruction": instruction}, style, 0,
                                  {"instruction": kinds}, truth, verify)
    record: dict[str, Any] = {
        "id": f"r{index}", "instruction": instruction, "output": output, "answer": "1",
        "tokens": [{k: v for k, v in t.items() if k != "field"} for t in tokens],
        "spans": [[s, e] for _, s, e in spans],
        "pruned": [{"instruction": p["instruction"], "span": [p["span"]["start"],
                                                              p["span"]["end"]],
                    **({"verified": p["verified"]} if "verified" in p else {})}
                   for p in pruned],
        "collective": "(pruned)",
        "params": {"tau": RUN_TAU, "method": "gradient"},
    }
    if response:
        cut = output.index(" ", len(output) // 2)
        prefix_words = output[:cut].split()
        view_tokens, view_spans, view_pruned = _view(
            rng, {"instruction": instruction, "output": output[:cut]}, style, 1,
            {"instruction": kinds, "output": out_kinds[: len(prefix_words)]}, truth, verify)
        record["views"] = [{
            "segment": 1, "target": [cut + 1, len(output)], "tokens": view_tokens,
            "spans": [{"field": f, "start": s, "end": e} for f, s, e in view_spans],
            "pruned": view_pruned, "collective": {"instruction": "", "output_prefix": ""},
        }]
    return record, truth


def corpus(n: int, seed: int = 0, *, verify_share: float = 0.7
           ) -> list[tuple[dict[str, Any], dict[tuple[int, str, int], str]]]:
    rng = random.Random(seed)
    return [make_record(rng, i, style=("words", "spaces", "gpt2")[i % 3],
                        response=i % 4 == 0, verify=rng.random() < verify_share)
            for i in range(n)]


# ---------------------------------------------------------------------------- naive


def _norm(text: str) -> str:
    return re.sub(r"\d+([.,]\d+)*", "<num>", " ".join(text.split()).lower())


def naive(pairs: list[tuple[dict[str, Any], dict[tuple[int, str, int], str]]], segment: int,
          bins: int = 10) -> dict[str, Any]:
    """Every figure of one segment, counted the plain way from all records in memory."""
    out: dict[str, Any] = defaultdict(int)
    out["category_flags"], out["category_prompts"] = Counter(), Counter()
    out["category_checked"], out["category_fixed"] = Counter(), Counter()
    out["pos_tokens"], out["pos_flags"] = [0] * bins, [0] * bins
    out["tau_flags"], out["tau_prompts"] = [0] * len(TAUS), [0] * len(TAUS)
    out["contexts"] = defaultdict(Counter)
    patterns: dict[str, dict[str, Any]] = {}
    for line, (record, truth) in enumerate(pairs, start=1):
        if segment == 0:
            view, texts = record, {"instruction": record["instruction"]}
        else:
            view = next((v for v in record.get("views", []) if v["segment"] == segment), None)
            if view is None:
                continue
            texts = {"instruction": record["instruction"],
                     "output": record["output"][: view["target"][0]]}

        def text_of(item: dict[str, Any], texts: dict[str, str] = texts) -> str:
            return texts[item.get("field", "instruction")][item["start"]:item["end"]]

        tokens = [t for t in view["tokens"] if text_of(t).strip()]
        kinds = [truth[(segment, t.get("field", "instruction"), t["start"])] for t in tokens]
        out["prompts"] += 1
        out["tokens"] += len(tokens)
        flagged = [(t, k) for t, k in zip(tokens, kinds, strict=True) if t["confounder"]]
        out["flags"] += len(flagged)
        out["prompts_flagged"] += bool(flagged)
        for kind in {k for _, k in flagged}:
            out["category_prompts"][kind] += 1
        for i, t in enumerate(tokens):
            out["pos_tokens"][int(bins * i / len(tokens))] += 1
            if t["confounder"]:
                out["pos_flags"][int(bins * i / len(tokens))] += 1
                out["category_flags"][kinds[i]] += 1
                field = t.get("field", "instruction")
                around = [(j, tokens[j]) for j in (i - 1, i, i + 1) if 0 <= j < len(tokens)
                          and tokens[j].get("field", "instruction") == field]
                words = [_norm(text_of(u)) for _, u in around]
                words = [f"⟦{w}⟧" if j == i else w for (j, _), w in zip(around, words,
                                                                         strict=True)]
                out["contexts"][kinds[i]][" ".join(words)] += 1
        for j, tau in enumerate(TAUS):
            hits = sum(t["score"] <= tau for t in tokens)
            out["tau_flags"][j] += hits
            out["tau_prompts"][j] += hits > 0
        spans = [((sp[0], sp[1], "instruction") if isinstance(sp, list)
                  else (sp["start"], sp["end"], sp["field"])) for sp in view["spans"]]
        marks = {}
        for p in view["pruned"]:
            sp = p["span"]
            key = (sp[0], sp[1], "instruction") if isinstance(sp, list) else (
                sp["start"], sp["end"], sp["field"])
            if "verified" in p:
                marks[key] = p["verified"]
        out["spans"] += len(spans)
        known = [marks[s] for s in spans if s in marks]
        out["checked"] += bool(known)
        out["fixed"] += any(known)
        seen_here: dict[str, list[bool]] = defaultdict(list)
        category_marks: dict[str, list[bool]] = defaultdict(list)
        for start, end, name in spans:
            text = texts[name][start:end]
            inside = [(t, k) for t, k in flagged if t.get("field", "instruction") == name
                      and start <= t["start"] and t["end"] <= end]
            score = sum(t["score"] for t, _ in inside) / len(inside)
            lit = " ".join(text.split())
            norm = _norm(text)
            for key in (f"n:{norm}", f"l:{lit}"):
                entry = patterns.setdefault(key, {"count": 0, "prompts": 0, "scores": [],
                                                  "checked": 0, "fixed": 0, "lines": []})
                entry["count"] += 1
                entry["scores"].append(score)
                if (start, end, name) in marks:
                    seen_here[key].append(marks[(start, end, name)])
                else:
                    seen_here.setdefault(key, [])
            for kind in {k for _, k in inside}:
                if (start, end, name) in marks:
                    category_marks[kind].append(marks[(start, end, name)])
        for key, verdicts in seen_here.items():
            entry = patterns[key]
            entry["prompts"] += 1
            entry["checked"] += bool(verdicts)
            entry["fixed"] += any(verdicts)
            entry["lines"].append(line)
        for kind, verdicts in category_marks.items():
            out["category_checked"][kind] += 1
            out["category_fixed"][kind] += any(verdicts)
    out["patterns"] = patterns
    return out


def _build(pairs: list[tuple[dict[str, Any], Any]], **config: Any) -> ReportBuilder:
    builder = ReportBuilder(ReportConfig(**config))
    for line, (record, _) in enumerate(pairs, start=1):
        builder.add(json.loads(json.dumps(record)), line=line)
    return builder


@pytest.fixture(scope="module")
def pairs() -> list[tuple[dict[str, Any], dict[tuple[int, str, int], str]]]:
    return corpus(400)


@pytest.mark.parametrize("segment", [0, 1])
def test_report_counts_match_a_naive_recount(pairs, segment: int) -> None:
    report = _build(pairs, top=1000).report(source="x.jsonl")
    data = json.loads(json.dumps(report.to_dict()))  # what report.json holds
    seg = next(s for s in data["segments"] if s["segment"] == segment)
    want = naive(pairs, segment)
    for name in ("prompts", "tokens", "flags", "spans", "prompts_flagged"):
        assert seg[name] == want[name], name
    assert want["flags"] > 50 and want["spans"] > 30  # the data is not degenerate
    assert seg["verified"]["checked"] == want["checked"] > 0
    assert seg["verified"]["fixed"] == want["fixed"]

    by_cat = {c["category"]: c for c in seg["categories"]}
    assert set(by_cat) == {"number", "name", "function", "punctuation", "template", "other"}
    for kind, row in by_cat.items():
        assert row["flags"] == want["category_flags"][kind], kind
        assert row["prompts"] == want["category_prompts"][kind], kind
        assert row["share_of_prompts"] == pytest.approx(want["category_prompts"][kind]
                                                        / want["prompts"])
        verified = row["verified"] or {"checked": 0, "fixed": 0}
        assert verified["checked"] == want["category_checked"][kind], kind
        assert verified["fixed"] == want["category_fixed"][kind], kind
        contexts = want["contexts"][kind]
        listed = {c["text"]: c["count"] for c in row["contexts"]}
        assert len(listed) == min(10, len(contexts))
        assert all(contexts[k] == n for k, n in listed.items()), kind
        assert min(listed.values()) >= max([n for k, n in contexts.items() if k not in listed],
                                           default=0)
    assert sum(r["flags"] for r in by_cat.values()) == want["flags"]
    assert all(want["category_flags"][k] > 0 for k in by_cat)

    assert seg["positions"]["tokens"] == want["pos_tokens"]
    assert seg["positions"]["flags"] == want["pos_flags"]
    assert [p["tau"] for p in seg["tau_curve"]] == list(TAUS)
    assert [p["flags"] for p in seg["tau_curve"]] == want["tau_flags"]
    assert [p["prompts_flagged"] for p in seg["tau_curve"]] == want["tau_prompts"]
    at_run_tau = seg["tau_curve"][TAUS.index(RUN_TAU)]
    assert at_run_tau["flags"] == seg["flags"]  # the records were flagged at tau 0.1

    for table, prefix in ((seg["patterns"], "n:"), (seg["literal_patterns"], "l:")):
        assert not table["truncated"]
        expected = {k[2:]: v for k, v in want["patterns"].items() if k.startswith(prefix)}
        assert table["held"] == len(expected)
        assert {r["pattern"] for r in table["rows"]} == set(expected)
        counts = [r["count"] for r in table["rows"]]
        assert counts == sorted(counts, reverse=True)
        for row in table["rows"]:
            truth = expected[row["pattern"]]
            assert row["count"] == truth["count"] and row["count_error"] == 0
            assert row["prompts"] == truth["prompts"]
            assert row["share_of_prompts"] == pytest.approx(truth["prompts"] / want["prompts"])
            assert row["mean_score"] == pytest.approx(sum(truth["scores"])
                                                      / len(truth["scores"]))
            verified = row["verified"] or {"checked": 0, "fixed": 0}
            assert (verified["checked"], verified["fixed"]) == (truth["checked"],
                                                                truth["fixed"])
            lines = [x["line"] for x in row["examples"]]  # a sample of its prompts, in order
            assert len(lines) == min(3, truth["prompts"])
            assert lines == sorted(set(lines)) and set(lines) <= set(truth["lines"])
            for x in row["examples"]:
                assert x["id"] == f"r{x['line'] - 1}"
                assert " ".join(x["flag"].split()) == " ".join(
                    pairs[x["line"] - 1][0][x["field"]][x["start"]:x["end"]].split())


def test_top_limits_rows_and_numbers_normalise(pairs) -> None:
    seg = _build(pairs, top=3).report().segments[0]
    assert len(seg.patterns.rows) == 3 and len(seg.literal_patterns.rows) == 3
    top = seg.patterns.rows[0]
    assert top.pattern == "<num>"  # "7", "12", "3.5", "1,000" grouped
    assert all(len(r.examples) == 3 for r in seg.patterns.rows)
    # Examples are sampled across the file, not its first prompts; and reproducibly.
    occurs = naive(pairs, 0)["patterns"]["n:<num>"]["lines"]
    assert [x.line for x in top.examples] != occurs[:3]
    assert max(x.line for x in top.examples) > len(pairs) // 3
    again = _build(pairs, top=3).report().segments[0].patterns.rows[0]
    assert again.examples == top.examples


def test_categories_and_patterns_in_words() -> None:
    assert category("7", boundary=False, whole_word=True) == "number"
    assert category("seven", boundary=False, whole_word=True) == "number"
    assert category(" the", boundary=False, whole_word=True) == "function"
    assert category("the", boundary=False, whole_word=False) == "other"  # "the" of "there"
    assert category("Ann", boundary=False, whole_word=True) == "name"
    assert category("?!", boundary=False, whole_word=True) == "punctuation"
    assert category("Ann", boundary=True, whole_word=True) == "template"
    assert normalised("  Her brother has 1,000\n pens ") == "her brother has <num> pens"
    assert normalised("one two three four five six seven") == "one two three four five six …"
    assert snippet("aaa bbb ccc ddd eee", 8, 11, context=5) == ("…bbb ", "ccc", " ddd…")


def test_verified_share_is_none_without_verification() -> None:
    rng = random.Random(3)
    pairs = [make_record(rng, i, verify=False) for i in range(30)]
    seg = _build(pairs).report().segments[0]
    assert seg.verified is None
    assert all(c.verified is None for c in seg.categories)
    assert all(p.verified is None for p in seg.patterns.rows)


def test_comparison_against_another_run() -> None:
    this, other = corpus(120, seed=1), corpus(80, seed=2, verify_share=0)
    report = report_with_comparison(_build(this, top=1000), _build(other, top=1000),
                                    source="a.jsonl", against="b.jsonl")
    comparison = report.comparison
    assert comparison is not None and comparison.records_against == 80
    assert [s.segment for s in comparison.segments] == [0, 1]
    a, b = naive(this, 0), naive(other, 0)
    changes = {c.key: c for c in comparison.segments[0].categories}
    for kind in ("number", "name", "function", "punctuation", "template", "other"):
        change = changes[kind]
        assert change.count == a["category_flags"][kind]
        assert change.count_against == b["category_flags"][kind]
        assert change.per_prompt == pytest.approx(a["category_flags"][kind] / 120)
        assert change.share_against == pytest.approx(b["category_prompts"][kind] / 80)
        assert change.delta_share == pytest.approx(a["category_prompts"][kind] / 120
                                                   - b["category_prompts"][kind] / 80)
    for change in comparison.segments[0].patterns:
        mine = a["patterns"].get("n:" + change.key, {"count": 0, "prompts": 0})
        theirs = b["patterns"].get("n:" + change.key, {"count": 0, "prompts": 0})
        assert (change.count, change.count_against) == (mine["count"], theirs["count"])
        assert change.delta_share == pytest.approx(mine["prompts"] / 120
                                                   - theirs["prompts"] / 80)
    deltas = [abs(c.delta_share) for c in comparison.segments[0].patterns]
    assert deltas == sorted(deltas, reverse=True)
    curve = comparison.segments[0].tau_curve
    assert [t.flags_per_prompt_against for t in curve] == pytest.approx(
        [f / 80 for f in b["tau_flags"]])
    md, html = render_markdown(report), render_html(report)
    assert "## Comparison" in md and "`b.jsonl`" in md
    assert "<h2>Comparison</h2>" in html


def test_html_and_markdown_escape_record_text() -> None:
    hostile = '<script>alert("x")</script>'
    instruction = f"Ann has 7 pens. {hostile} How many?"
    start = instruction.index(hostile)
    words = [m.span() for m in re.finditer(r"\S+", instruction)]
    tokens = [{"text": instruction[s:e], "start": s, "end": e,
               "score": 0.0 if start <= s < start + len(hostile) else 0.8,
               "confounder": start <= s < start + len(hostile)} for s, e in words]
    record = {"id": "<img src=x onerror=alert(1)>", "instruction": instruction, "output": "7",
              "tokens": tokens, "spans": [[start, start + len(hostile)]],
              "pruned": [{"instruction": "", "span": [start, start + len(hostile)],
                          "verified": True}], "params": {"tau": "<b>0.1</b>"}}
    builder = ReportBuilder()
    builder.add(record)
    report = builder.report(source="<evil>.jsonl")
    html = render_html(report)
    for raw in ("<script", "<img", "<b>", "<evil>"):
        assert raw not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "http" not in html and "<link" not in html  # self-contained: nothing fetched
    md = render_markdown(report)
    row = next(line for line in md.splitlines() if "script" in line and line.startswith("| 1"))
    assert "`<script>alert(\"x\")</script>`" in row  # inside a code span, shown as text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 2: invalid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"id": "x", "tokens": []}', "line 2: missing field 'instruction'"),
        ('{"instruction": "ab", "tokens": {}}', "line 2: field 'tokens' must be a list"),
        ('{"instruction": "ab", "tokens": [{"start": 0, "end": 2, "score": "low"}]}',
         "line 2: tokens[0].score must be a number"),
        ('{"instruction": "ab", "tokens": [{"start": 0, "end": 9, "score": 0}]}',
         "line 2: tokens[0]: start and end must be offsets within the instruction"),
        ('{"instruction": "ab", "tokens": [], "spans": [[0, 5]]}',
         "line 2: spans[0] must be a span within the prompt"),
        ('{"instruction": "ab", "tokens": [], "pruned": [{"verified": "yes"}]}',
         "line 2: pruned[0].verified must be true or false"),
        ('{"instruction": "ab", "output": "c", "tokens": [], "views": [{"segment": 99}]}',
         "line 2: views[0].segment must be an integer in [1, 8]"),
    ],
)
def test_malformed_record_names_its_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps(make_record(random.Random(0), 0)[0])
    path = tmp_path / "r.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(InputError) as err:
        build_report(path)
    assert str(err.value).startswith(message)
    assert err.value.line == 2


def test_empty_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="has no records"):
        build_report(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="not found"):
        build_report(tmp_path / "missing.jsonl")


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ConfigError, match="top") as err:
        ReportConfig(top=0)
    assert err.value.field == "top"
    with pytest.raises(ConfigError) as err:
        ReportConfig(top=50, capacity=20)
    assert err.value.field == "capacity"


# ---------------------------------------------------------------------------- streaming


def _stream(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """Records with a long tail of distinct patterns ("w<k>", k Zipf-like) and numbers."""
    rng = random.Random(seed)
    for i in range(n):
        words = [f"w{int(rng.paretovariate(0.7))}" for _ in range(6)] + [str(i), "?"]
        text = " ".join(words)
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        flags = [rng.random() < 0.4 for _ in spans]
        yield {"id": str(i), "instruction": text,
               "tokens": [{"text": text[s:e], "start": s, "end": e,
                           "score": 0.0 if f else 0.9, "confounder": f}
                          for (s, e), f in zip(spans, flags, strict=True)],
               "spans": [list(s) for s in find_spans(text, spans, flags)],
               "pruned": []}


def test_bounded_tables_stay_bounded_with_honest_counts() -> None:
    capacity = 50
    builder = ReportBuilder(ReportConfig(top=10, capacity=capacity))
    truth: Counter[str] = Counter()
    largest = 0
    for record in _stream(20_000, seed=5):
        builder.add(record)
        text = record["instruction"]
        truth.update(" ".join(text[s:e].split()) for s, e in record["spans"])
        tally = builder.segments[0]
        largest = max(largest, len(tally.literal_patterns), len(tally.patterns),
                      *(len(c) for c in tally.category_tokens.values()))
    tally = builder.segments[0]
    assert largest <= 2 * capacity + 10  # at most one record's new keys over the prune line
    assert tally.literal_patterns.truncated and len(truth) > 20 * capacity
    for key, entry in tally.literal_patterns:
        assert len(entry.examples) <= 3
        assert entry.count - entry.count_error <= truth[key] <= entry.count, key
    heavy = [k for k, _ in truth.most_common(5)]
    held = [k for k, _ in tally.literal_patterns.top(10)]
    assert set(heavy) <= set(held)  # the heavy hitters survive eviction
    table = builder.report().segments[0].literal_patterns
    assert table.truncated and len(table.rows) == 10


def test_memory_is_flat_in_the_number_of_records() -> None:
    builder = ReportBuilder(ReportConfig(top=10, capacity=200))
    stream = _stream(10_000, seed=6)
    tracemalloc.start()
    try:
        for _ in range(2_500):
            builder.add(next(stream))
        early = tracemalloc.get_traced_memory()[0]
        for record in stream:
            builder.add(record)
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert builder.records == 10_000
    assert late < 1.5 * early, (early, late)  # 4x the records, not 4x the memory


def test_bounded_counter_is_exact_until_it_evicts() -> None:
    counter: BoundedCounter[Tally] = BoundedCounter(2, Tally)
    for key in ["a", "a", "b", "c", "a", "b"]:
        counter.tally(key).count += 1
        counter.prune()
    assert [(k, t.count, t.count_error) for k, t in counter.top(3)] == [
        ("a", 3, 0), ("b", 2, 0), ("c", 1, 0)]
    counter.tally("d").count += 1
    counter.tally("e").count += 1
    counter.prune()  # 5 keys > 2 * 2: keep a, b
    assert counter.truncated and [k for k, _ in counter] == ["a", "b"]
    assert counter.floor == 1
    counter.tally("c").count += 1  # re-enters at the floor: true 2, bounds [1, 2]
    entry = counter.get("c")
    assert entry is not None and (entry.count, entry.count_error) == (2, 1)


def test_report_needs_neither_the_service_nor_torch() -> None:
    """The API process (no torch) and `leaf report` (no service extra) can both run it."""
    code = ("import sys, leaf_engine.report, leaf_cli.report; "
            "print(sorted(m for m in ('fastapi', 'rq', 'redis', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
