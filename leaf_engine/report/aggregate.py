"""Streaming aggregation of detection records into a corpus report.

`ReportBuilder.add` takes one record (the JSON object `leaf detect` writes per line) at a
time and keeps only fixed-size state: counters, histograms, bounded pattern tables
(`counter.BoundedCounter`) and a sample of at most `examples` prompts per pattern. Memory
does not grow with the number of records, only with the size of the largest one.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leaf_engine.config_fields import check_fields, setting
from leaf_engine.data import parse_jsonl_line
from leaf_engine.errors import ConfigError, InputError
from leaf_engine.report.counter import BoundedCounter, Tally
from leaf_engine.report.schema import (
    SCHEMA,
    TAUS,
    CategoryRow,
    Example,
    Pattern,
    Patterns,
    Positions,
    Report,
    Segment,
    TauPoint,
    TokenCount,
    Verified,
)
from leaf_engine.report.tokens import (
    CATEGORIES,
    CATEGORY_LABELS,
    Category,
    category,
    is_whole_word,
    literal,
    normalised,
    snippet,
)

MAX_SEGMENT = 8  # response level has at most 3 segments; more is a malformed record
CATEGORY_TOP = 10  # tokens and contexts listed per category
CATEGORY_CAPACITY = 1000  # capacity of those tables (12 per segment); a top 10 needs few


@dataclass(frozen=True)
class ReportConfig:
    """What a report shows and how much it keeps while streaming."""

    top: int = setting(20, "Patterns listed per table (and changes per comparison).",
                       ge=1, le=1000)
    examples: int = setting(3, "Example prompts kept per pattern.", ge=0, le=20)
    capacity: int = setting(5000, "Distinct patterns each bounded table keeps; beyond it, the "
                                  "least counted are evicted and counts become bounds.",
                            ge=10, le=1_000_000)
    bins: int = setting(10, "Bins of the relative-position histogram.", ge=1, le=100)
    context: int = setting(40, "Characters of context either side of a flag in examples.",
                           ge=0, le=500)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.capacity < self.top:
            raise ConfigError(f"capacity must be >= top ({self.top}), got {self.capacity}",
                              field="capacity")


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class _Token:
    field: str
    start: int
    end: int
    score: float
    flagged: bool


@dataclass(frozen=True)
class _Span:
    field: str
    start: int
    end: int
    verified: bool | None  # None: not verified


@dataclass(frozen=True)
class _View:
    segment: int
    texts: dict[str, str]
    tokens: list[_Token]
    spans: list[_Span]


def parse_record(record: Any, line: int) -> tuple[str, dict[str, Any], list[_View]]:
    """(id, params, views) of one record, or an InputError naming the line and field."""
    if not isinstance(record, dict):
        raise InputError("expected a JSON object (a detection record)", line=line)
    raw_id = record.get("id", str(line))
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise InputError("field 'id' must be a string or an integer", line=line, field="id")
    instruction = _string(record, "instruction", line)
    output = record.get("output", "")
    if not isinstance(output, str):
        raise InputError("field 'output' must be a string", line=line, field="output")
    params = record.get("params", {})
    if not isinstance(params, dict):
        raise InputError("field 'params' must be an object", line=line, field="params")
    texts = {"instruction": instruction}
    verified = _verified(record.get("pruned", []), line, "pruned", default_field="instruction")
    main = _View(0, texts, _tokens(record, texts, line, "", default_field="instruction"),
                 _spans(record.get("spans"), texts, verified, line, "spans"))
    views = [main]
    extra = record.get("views", [])
    if not isinstance(extra, list):
        raise InputError("field 'views' must be a list", line=line, field="views")
    for v, view in enumerate(extra):
        where = f"views[{v}]"
        if not isinstance(view, dict):
            raise InputError(f"{where} must be an object", line=line, field="views")
        segment = view.get("segment")
        if not _is_int(segment) or not 1 <= segment <= MAX_SEGMENT:
            raise InputError(f"{where}.segment must be an integer in [1, {MAX_SEGMENT}]",
                             line=line, field="views")
        target = view.get("target")
        if (not isinstance(target, list) or len(target) != 2 or not all(map(_is_int, target))
                or not 0 <= target[0] <= len(output)):
            raise InputError(f"{where}.target must be [start, end] within the output",
                             line=line, field="views")
        view_texts = {"instruction": instruction, "output": output[: target[0]]}
        marks = _verified(view.get("pruned", []), line, f"{where}.pruned", default_field=None)
        views.append(_View(segment, view_texts,
                           _tokens(view, view_texts, line, f"{where}.", default_field=None),
                           _spans(view.get("spans"), view_texts, marks, line,
                                  f"{where}.spans")))
    return str(raw_id), params, views


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(record: dict[str, Any], name: str, line: int) -> str:
    if name not in record:
        raise InputError(f"missing field '{name}'", line=line, field=name)
    if not isinstance(record[name], str):
        raise InputError(f"field '{name}' must be a string", line=line, field=name)
    return record[name]


def _tokens(holder: dict[str, Any], texts: dict[str, str], line: int, prefix: str, *,
            default_field: str | None) -> list[_Token]:
    tokens = holder.get("tokens")
    if not isinstance(tokens, list):
        raise InputError(f"field '{prefix}tokens' must be a list", line=line, field="tokens")
    out = []
    for i, token in enumerate(tokens):
        where = f"{prefix}tokens[{i}]"
        if not isinstance(token, dict):
            raise InputError(f"{where} must be an object", line=line, field="tokens")
        name = token.get("field", default_field)
        if name not in texts:
            raise InputError(f"{where}.field must be one of {', '.join(texts)}", line=line,
                             field="tokens")
        start, end, score = token.get("start"), token.get("end"), token.get("score")
        if not (_is_int(start) and _is_int(end) and 0 <= start <= end <= len(texts[name])):
            raise InputError(f"{where}: start and end must be offsets within the {name}",
                             line=line, field="tokens")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or score != score:
            raise InputError(f"{where}.score must be a number", line=line, field="tokens")
        flagged = token.get("confounder", False)
        if not isinstance(flagged, bool):
            raise InputError(f"{where}.confounder must be true or false", line=line,
                             field="tokens")
        out.append(_Token(name, start, end, float(score), flagged))
    return out


def _span_key(raw: Any, default_field: str | None) -> tuple[str, int, int] | None:
    if isinstance(raw, list) and len(raw) == 2 and all(map(_is_int, raw)) and default_field:
        return default_field, raw[0], raw[1]
    if isinstance(raw, dict) and _is_int(raw.get("start")) and _is_int(raw.get("end")):
        name = raw.get("field", default_field)
        if isinstance(name, str):
            return name, raw["start"], raw["end"]
    return None


def _verified(pruned: Any, line: int, where: str, *, default_field: str | None
              ) -> dict[tuple[str, int, int], bool]:
    """Span -> verified, for the pruned variants that carry the mark."""
    if not isinstance(pruned, list):
        raise InputError(f"field '{where}' must be a list", line=line, field="pruned")
    marks: dict[tuple[str, int, int], bool] = {}
    for i, entry in enumerate(pruned):
        if not isinstance(entry, dict):
            raise InputError(f"{where}[{i}] must be an object", line=line, field="pruned")
        if "verified" not in entry:
            continue
        if not isinstance(entry["verified"], bool):
            raise InputError(f"{where}[{i}].verified must be true or false", line=line,
                             field="pruned")
        key = _span_key(entry.get("span"), default_field)
        if key is None:
            raise InputError(f"{where}[{i}].span must name the pruned span", line=line,
                             field="pruned")
        marks[key] = entry["verified"]
    return marks


def _spans(raw: Any, texts: dict[str, str], verified: dict[tuple[str, int, int], bool],
           line: int, where: str) -> list[_Span]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise InputError(f"field '{where}' must be a list", line=line, field="spans")
    default = "instruction" if where == "spans" else None
    out = []
    for i, item in enumerate(raw):
        key = _span_key(item, default)
        if key is None or key[0] not in texts or not 0 <= key[1] <= key[2] <= len(
                texts[key[0]]):
            raise InputError(f"{where}[{i}] must be a span within the prompt", line=line,
                             field="spans")
        out.append(_Span(*key, verified.get(key)))
    return out


def read_records(path: str | Path, *, progress: Callable[[int], None] | None = None
                 ) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object) for each non-blank line; `progress` gets bytes read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"records file not found: {path}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if progress is not None:
                progress(len(raw))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("not UTF-8 text", line=number) from None
            if text.strip():
                yield number, parse_jsonl_line(text, number)


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class PatternTally(Tally):
    examples: list[Example] = field(default_factory=list)


@dataclass
class _Verification:
    checked: int = 0
    fixed: int = 0

    def add(self, marks: list[bool | None]) -> None:
        known = [m for m in marks if m is not None]
        if known:
            self.checked += 1
            self.fixed += any(known)

    def result(self) -> Verified | None:
        return Verified(self.checked, self.fixed, self.fixed / self.checked
                        ) if self.checked else None


def _verify(tally: Tally, marks: list[bool | None]) -> None:
    known = [m for m in marks if m is not None]
    if known:
        tally.checked += 1
        tally.fixed += any(known)


def in_context(view: _View, visible: list[_Token], i: int) -> str:
    """The i-th visible token with its visible neighbours in the same field, normalised and
    the token marked: "is ⟦<num>⟧ years". Tells a distractor's number from the story's."""
    token = visible[i]
    words = []
    for j in (i - 1, i, i + 1):
        if 0 <= j < len(visible) and visible[j].field == token.field:
            word = normalised(view.texts[token.field][visible[j].start : visible[j].end])
            words.append(f"⟦{word}⟧" if j == i else word)
    return " ".join(words)


class SegmentTally:
    """Fixed-size state for one segment's contexts across the corpus."""

    def __init__(self, segment: int, config: ReportConfig):
        self.segment = segment
        self.config = config
        self.prompts = self.tokens = self.flags = self.spans = self.prompts_flagged = 0
        self.verification = _Verification()
        self.category_flags = dict.fromkeys(CATEGORIES, 0)
        self.category_prompts = dict.fromkeys(CATEGORIES, 0)
        self.category_scores = dict.fromkeys(CATEGORIES, 0.0)
        self.category_verification = {c: _Verification() for c in CATEGORIES}
        small = min(config.capacity, CATEGORY_CAPACITY)
        self.category_tokens = {c: BoundedCounter(small, Tally) for c in CATEGORIES}
        self.category_contexts = {c: BoundedCounter(small, Tally) for c in CATEGORIES}
        self.position_tokens = [0] * config.bins
        self.position_flags = [0] * config.bins
        self.tau_tokens = [0] * (len(TAUS) + 1)  # by the first tau index with score <= tau
        self.tau_prompts = [0] * (len(TAUS) + 1)  # by the index of the prompt's lowest score
        self.patterns = BoundedCounter(config.capacity, PatternTally)
        self._rng = random.Random(segment)  # seeded: the same file gives the same examples
        self.literal_patterns = BoundedCounter(config.capacity, PatternTally)

    def add(self, view: _View, record_id: str, line: int) -> None:
        bins = self.config.bins
        visible = [t for t in view.tokens
                   if view.texts[t.field][t.start : t.end].strip()]
        boundary = set()
        for name in view.texts:
            mine = [i for i, t in enumerate(visible) if t.field == name]
            boundary.update(mine[:1] + mine[-1:])
        self.prompts += 1
        self.tokens += len(visible)
        lowest = len(TAUS)
        flagged: list[tuple[_Token, Category]] = []
        for i, token in enumerate(visible):
            where = i * bins // len(visible)  # relative position, in [0, bins)
            self.position_tokens[where] += 1
            first = bisect.bisect_left(TAUS, token.score)  # TAUS[first] >= score
            self.tau_tokens[first] += 1
            lowest = min(lowest, first)
            if not token.flagged:
                continue
            text = view.texts[token.field]
            kind = category(text[token.start : token.end], boundary=i in boundary,
                            whole_word=is_whole_word(text, token.start, token.end))
            flagged.append((token, kind))
            self.position_flags[where] += 1
            self.category_flags[kind] += 1
            self.category_scores[kind] += token.score
            for counter, key in ((self.category_tokens, text[token.start : token.end].strip()),
                                 (self.category_contexts, in_context(view, visible, i))):
                tally = counter[kind].tally(key)
                tally.count += 1
                tally.seen += 1
        if visible:
            self.tau_prompts[lowest] += 1
        self.flags += len(flagged)
        self.prompts_flagged += bool(flagged)
        for kind in {k for _, k in flagged}:
            self.category_prompts[kind] += 1
        for table in (self.category_tokens, self.category_contexts):
            for counter in table.values():
                counter.prune()
        self._add_spans(view, flagged, record_id, line)

    def _add_spans(self, view: _View, flagged: list[tuple[_Token, Category]],
                   record_id: str, line: int) -> None:
        self.spans += len(view.spans)
        self.verification.add([s.verified for s in view.spans])
        by_category: dict[Category, list[bool | None]] = {}
        by_pattern: dict[tuple[int, str], list[bool | None]] = {}
        first: dict[tuple[int, str], _Span] = {}  # each pattern's first span in this prompt
        for span in view.spans:
            inside = [(t, k) for t, k in flagged if t.field == span.field
                      and span.start <= t.start and t.end <= span.end]
            for kind in {k for _, k in inside}:
                by_category.setdefault(kind, []).append(span.verified)
            text = view.texts[span.field][span.start : span.end]
            score = sum(t.score for t, _ in inside) / len(inside) if inside else None
            for table, key in ((0, normalised(text)), (1, literal(text))):
                tally = (self.literal_patterns if table else self.patterns).tally(key)
                tally.count += 1
                if score is not None:
                    tally.seen += 1
                    tally.score_sum += score
                by_pattern.setdefault((table, key), []).append(span.verified)
                first.setdefault((table, key), span)
        for kind, marks in by_category.items():
            self.category_verification[kind].add(marks)
        for (table, key), marks in by_pattern.items():
            tally = (self.literal_patterns if table else self.patterns).tally(key)
            tally.prompts += 1
            _verify(tally, marks)
            self._sample(tally, view, first[(table, key)], record_id, line)
        self.patterns.prune()
        self.literal_patterns.prune()

    def _sample(self, tally: PatternTally, view: _View, span: _Span, record_id: str,
                line: int) -> None:
        """Keep a uniform sample of the prompts with this pattern (reservoir sampling,
        Vitter's algorithm R), so examples come from across the file, not its start."""
        seen = tally.prompts - tally.prompts_error  # prompts observed since it entered
        keep = self.config.examples
        slot = len(tally.examples) if len(tally.examples) < keep else self._rng.randrange(seen)
        if slot >= keep:
            return
        before, flag, after = snippet(view.texts[span.field], span.start, span.end,
                                      self.config.context)
        example = Example(record_id, line, span.field, span.start, span.end, before, flag,
                          after)
        if slot == len(tally.examples):
            tally.examples.append(example)
        else:
            tally.examples[slot] = example

    # ------------------------------------------------------------------------ results

    def result(self) -> Segment:
        prompts = self.prompts
        categories = tuple(
            CategoryRow(
                category=c, label=CATEGORY_LABELS[c], flags=self.category_flags[c],
                share_of_flags=self.category_flags[c] / self.flags if self.flags else None,
                flags_per_prompt=self.category_flags[c] / prompts,
                prompts=self.category_prompts[c],
                share_of_prompts=self.category_prompts[c] / prompts,
                mean_score=(self.category_scores[c] / self.category_flags[c]
                            if self.category_flags[c] else None),
                verified=self.category_verification[c].result(),
                top=tuple(TokenCount(k, t.count, t.count_error)
                          for k, t in self.category_tokens[c].top(CATEGORY_TOP)),
                contexts=tuple(TokenCount(k, t.count, t.count_error)
                               for k, t in self.category_contexts[c].top(CATEGORY_TOP)),
            )
            for c in CATEGORIES
        )
        positions = Positions(
            bins=self.config.bins, tokens=tuple(self.position_tokens),
            flags=tuple(self.position_flags),
            flag_rate=tuple(f / t if t else None
                            for f, t in zip(self.position_flags, self.position_tokens,
                                            strict=True)),
        )
        curve = []
        flags = flagged_prompts = 0
        for j, tau in enumerate(TAUS):
            flags += self.tau_tokens[j]
            flagged_prompts += self.tau_prompts[j]
            curve.append(TauPoint(tau, flags, flags / prompts, flagged_prompts,
                                  flagged_prompts / prompts))
        return Segment(
            segment=self.segment,
            label="instruction" if self.segment == 0 else
            f"response segment {self.segment + 1} (context: instruction + response "
            + (f"segments 1–{self.segment})" if self.segment > 1 else "segment 1)"),
            prompts=prompts, tokens=self.tokens, flags=self.flags, spans=self.spans,
            prompts_flagged=self.prompts_flagged, verified=self.verification.result(),
            categories=categories, positions=positions, tau_curve=tuple(curve),
            patterns=self._patterns(self.patterns),
            literal_patterns=self._patterns(self.literal_patterns),
        )

    def _patterns(self, counter: BoundedCounter[PatternTally]) -> Patterns:
        rows = tuple(
            Pattern(
                pattern=key, count=t.count, count_error=t.count_error, prompts=t.prompts,
                prompts_error=t.prompts_error, share_of_prompts=t.prompts / self.prompts,
                mean_score=t.mean_score,
                verified=Verified(t.checked, t.fixed, t.fixed / t.checked) if t.checked
                else None,
                examples=tuple(sorted(t.examples, key=lambda x: x.line)),
            )
            for key, t in counter.top(self.config.top)
        )
        return Patterns(rows, len(counter), counter.truncated, counter.capacity)


class ReportBuilder:
    """Feed records one at a time with `add`; `report()` at any point."""

    def __init__(self, config: ReportConfig | None = None):
        self.config = config or ReportConfig()
        self.records = 0
        self.segments: dict[int, SegmentTally] = {}
        self.params: dict[str, Any] | None = None
        self.params_consistent = True

    def add(self, record: Any, *, line: int | None = None) -> None:
        """Add one record (a decoded JSON line); `line` names it in errors and examples."""
        line = self.records + 1 if line is None else line
        record_id, params, views = parse_record(record, line)
        self.records += 1
        if self.params is None:
            self.params = params
        elif params != self.params:
            self.params_consistent = False
        for view in views:
            if view.segment not in self.segments:
                self.segments[view.segment] = SegmentTally(view.segment, self.config)
            self.segments[view.segment].add(view, record_id, line)

    def report(self, *, source: str = "") -> Report:
        if not self.records:
            raise InputError(f"{source or 'the input'} has no records")
        return Report(
            schema=SCHEMA, source=source, records=self.records, params=self.params or {},
            params_consistent=self.params_consistent,
            segments=tuple(self.segments[k].result() for k in sorted(self.segments)),
        )


def build_report(path: str | Path, config: ReportConfig | None = None, *,
                 progress: Callable[[int], None] | None = None) -> ReportBuilder:
    """Stream a records file through a builder; `progress` gets the bytes read."""
    builder = ReportBuilder(config)
    for line, record in read_records(path, progress=progress):
        builder.add(record, line=line)
    if not builder.records:
        raise InputError(f"{path} has no records")
    return builder
