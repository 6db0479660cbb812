"""Confounder detection on the demo task, against ground truth; and the paper's pilot
(Figure 1): does pruning what LeaF flags recover the student's errors?

    python benchmarks/confounder_detection.py            # the bundled demo pair
    python benchmarks/confounder_detection.py --per-group 50 --out /tmp/bench   # a quick slice

Writes confounder_detection.md, .json and .png under benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import RESULTS, machine, markdown_table
from leaf_engine.analysis import Analysis, DetectConfig, decide
from leaf_engine.demo import demo_pair
from leaf_engine.demo.benchmark import count, evaluate_methods
from leaf_engine.demo.tasks import Problem, final_number, generate
from leaf_engine.demo.train import generate_answers
from leaf_engine.detect import Detector
from leaf_engine.models import load_model
from leaf_engine.prune import find_spans, remove_spans
from leaf_engine.records import (
    ContextToken,
    Counterfactual,
    DetectionRecord,
    FieldSpan,
    TokenScore,
    ViewResult,
)
from leaf_engine.units import is_word, members, pieces

TAUS = (0.05, 0.1, 0.2, 0.3)
METHODS = ("gradient", "ppl", "random", "teacher-only", "student-only")
COLUMNS = ["token_precision", "token_recall", "token_f1", "key_precision", "key_recall",
           "key_f1", "sentence_hit", "clean_flags", "flags"]
UNIT = DetectConfig().unit  # the default unit: the main tables use it
# Flags decided per token, then widened to the words they touch: the alternative to scoring
# words (unit word) that the default was chosen against.
EXPAND = "token, expanded to words"


def table(rows: list[dict], keys: list[str], columns: list[str] = COLUMNS) -> str:
    return markdown_table(keys + columns, [[r[k] for k in keys] + [f"{r[c]:.3f}" for c in columns]
                                           for r in rows])


def expand_to_words(record: DetectionRecord) -> DetectionRecord:
    """A record decided per token, its flags widened to every word a flagged token touches."""
    text = record.instruction
    words = [ContextToken("instruction", a, b) for a, b in pieces(text)]
    tokens = [ContextToken(t.field, t.start, t.end) for t in record.tokens]
    groups = members(tokens, words, {"instruction": text})
    entries = tuple(
        TokenScore(text[w.start:w.end], w.start, w.end, 0.0, 0.0, 0.0,
                   is_word(text[w.start:w.end]) and any(record.tokens[i].confounder for i in g))
        for w, g in zip(words, groups, strict=True))
    spans = find_spans(text, [(e.start, e.end) for e in entries], [e.confounder for e in entries])
    pruned = tuple(Counterfactual(remove_spans(text, [sp]), "", FieldSpan("instruction", *sp), ())
                   for sp in spans)
    collective = Counterfactual(remove_spans(text, spans), "", None, ())
    view = ViewResult(0, record.main.target, entries,
                      tuple(FieldSpan("instruction", *sp) for sp in spans), pruned, collective)
    return DetectionRecord(record.id, text, record.output, (view,), record.params)


def unit_records(analyses: list[Analysis], problems: list[Problem], unit: str,
                 tau: float) -> list[DetectionRecord]:
    config = DetectConfig(tau=tau, unit="token" if unit == EXPAND else unit)  # type: ignore[arg-type]
    records = [decide(a, config, example_id=p.id) for a, p in zip(analyses, problems, strict=True)]
    return [expand_to_words(r) for r in records] if unit == EXPAND else records


def unit_rows(analyses: list[Analysis], problems: list[Problem]) -> list[dict]:
    """Detection metrics per unit, with flags and pruned words per problem."""
    rows = []
    for unit in ("token", "word", EXPAND, "sentence"):
        for tau in TAUS:
            records = unit_records(analyses, problems, unit, tau)
            pruned = [sum(is_word(record.instruction[a:b]) for s, e in record.spans
                          for a, b in pieces(record.instruction) if s <= a and b <= e)
                      for record in records]
            rows.append({"unit": unit, "tau": tau, **count(records, problems).metrics(),
                         "words_pruned": sum(pruned) / len(records)})
    return rows


def response_rows(analyses: list[Analysis], problems: list[Problem]) -> list[dict]:
    """Response level, the second segment's context (instruction + first segment): how the
    instruction's flags fare against the truth, and how many flags fall in each part."""
    rows = []
    for normalise in ("segment", "joint"):
        for tau in TAUS:
            config = DetectConfig(tau=tau, level="response", normalise=normalise)  # type: ignore[arg-type]
            flagged = hit = keys = prefix = clean = clean_n = 0
            for a, p in zip(analyses, problems, strict=True):
                view = decide(a, config, example_id=p.id).views[1]
                mine = [t for t in view.tokens if t.confounder and t.field == "instruction"]
                flagged += len(mine)
                prefix += sum(t.confounder for t in view.tokens if t.field == "output")
                hit += sum(any(s <= t.start and t.end <= e for s, e in p.key_spans) for t in mine)
                keys += len(p.key_spans)
                if p.distractors == 0:
                    clean += len(mine)
                    clean_n += 1
            precision = hit / flagged if flagged else 0.0
            recall = hit / keys if keys else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"normalise": normalise, "tau": tau, "key_precision": precision,
                         "key_recall": recall, "key_f1": f1,
                         "instruction_flags": flagged / len(problems),
                         "prefix_flags": prefix / len(problems),
                         "clean_flags": clean / max(1, clean_n)})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = ["key-token F1", "distractor-token F1", "distractor sentences hit"]
    for ax, metric, title in zip(axes, ["key_f1", "token_f1", "sentence_hit"], titles,
                                 strict=True):
        for method in METHODS:
            mine = [r for r in rows if r["method"] == method]
            ax.plot([r["tau"] for r in mine], [r[metric] for r in mine], marker="o", label=method)
        ax.set_xlabel("tau")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Confounder detection on the demo task (all test problems)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher")
    parser.add_argument("--student")
    parser.add_argument("--per-group", type=int, default=200,
                        help="test problems per distractor count (0, 1, 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    default_teacher, default_student = demo_pair() if not (args.teacher and args.student) else (
        args.teacher, args.student)
    teacher = load_model(args.teacher or default_teacher, device="cpu")
    student = load_model(args.student or default_student, device="cpu")
    problems = [p for k in (0, 1, 2) for p in generate("test", args.per_group, distractors=k)]
    right = {"teacher": [], "student": []}
    for name, model in (("teacher", teacher), ("student", student)):
        answers = generate_answers(model, [p.instruction for p in problems])
        right[name] = [final_number(a) == p.answer for a, p in zip(answers, problems, strict=True)]
    analyses = Detector(teacher, student).analyse(
        [(p.instruction, p.output) for p in problems], with_surprisal=True)

    subset = [i for i, p in enumerate(problems) if right["teacher"][i] and not right["student"][i]]
    sub_p = [problems[i] for i in subset]
    sub_a = [analyses[i] for i in subset]
    all_rows = evaluate_methods(analyses, problems, TAUS, methods=METHODS, unit=UNIT)
    paper_rows = evaluate_methods(sub_a, sub_p, TAUS, methods=METHODS, unit=UNIT)
    units = unit_rows(analyses, problems)
    gap_rows = [r for gap in (0.0, 0.3, 0.5, 0.7)
                for r in evaluate_methods(analyses, problems, (0.1,), methods=("gradient",),
                                          min_gap=gap, unit=UNIT)]
    response = response_rows(
        Detector(teacher, student).analyse([(p.instruction, p.output) for p in problems],
                                           level="response"), problems)

    # Pilot: student accuracy on teacher-right / student-wrong problems, original vs pruned.
    pilot = []
    for label, config in [
        ("gradient (LeaF), words, tau 0.1", DetectConfig(tau=0.1)),
        ("gradient, tokens, tau 0.1", DetectConfig(tau=0.1, unit="token")),
        (f"gradient, {EXPAND}, tau 0.1", None),
        ("gradient, sentences, tau 0.1", DetectConfig(tau=0.1, unit="sentence")),
        ("perplexity, same count", DetectConfig(tau=0.1, method="ppl")),
        ("random, same count", DetectConfig(tau=0.1, method="random")),
    ]:
        records = (unit_records(sub_a, sub_p, EXPAND, 0.1) if config is None else
                   [decide(a, config, example_id=p.id) for a, p in zip(sub_a, sub_p, strict=True)])
        collective = [r.collective for r in records]
        answers = generate_answers(student, collective)
        fixed = sum(final_number(a) == p.answer for a, p in zip(answers, sub_p, strict=True))
        variants = [(i, v.instruction) for i, r in enumerate(records) for v in r.main.pruned]
        outs = generate_answers(student, [text for _, text in variants])
        recovered = {i for (i, _), o in zip(variants, outs, strict=True)
                     if final_number(o) == sub_p[i].answer}
        span_any = len(recovered)
        tokens = sum(sum(t.confounder for t in r.tokens) for r in records) / max(1, len(records))
        pilot.append([label, f"{tokens:.2f}", f"{fixed / max(1, len(sub_p)):.3f}",
                      f"{span_any / max(1, len(sub_p)):.3f}"])

    acc = {name: [sum(r for r, p in zip(right[name], problems, strict=True) if p.distractors == k)
                  / args.per_group for k in (0, 1, 2)] for name in right}
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    plot(all_rows, args.out / "confounder_detection.png")
    text = f"""Demo task, {len(problems)} test problems ({args.per_group} each with 0, 1, 2 \
distractors), on {machine()}, {seconds:.0f} s. Command: `python benchmarks/confounder_detection.py \
--per-group {args.per_group}`.

Accuracy (exact final number): teacher {acc['teacher'][0]:.3f} / {acc['teacher'][1]:.3f} / \
{acc['teacher'][2]:.3f}, student {acc['student'][0]:.3f} / {acc['student'][1]:.3f} / \
{acc['student'][2]:.3f} on 0 / 1 / 2 distractors. The paper's subset (teacher right, student \
wrong) has {len(sub_p)} problems.

Metrics are pooled over problems and count the record's entries: words and punctuation at \
unit word (the default, used by the main tables), tokens at unit token. *token* = against every \
entry of the distractor sentences; *key* = against the distractors' numbers; *sentence_hit* = \
share of distractor sentences with at least one flagged entry; *clean_flags* = flagged entries \
per problem that has no distractor (lower is better); *flags* = flagged entries per problem. \
Every method flags as many entries per problem as gradient does at that tau: perplexity and \
random by construction, teacher-only and student-only by taking their lowest scores up to that \
count (ties at the cut may add a few), so the rows compare rankings, not thresholds.

#### All test problems

{table(all_rows, ["method", "tau"])}

#### The paper's subset (teacher right, student wrong)

{table(paper_rows, ["method", "tau"])}

#### Beyond the paper: aggregation unit (gradient, all problems)

*{EXPAND}* decides flags per token and then flags every word a flagged token touches; \
*flags* = flagged entries per problem, *words_pruned* = words removed by the collective \
counterfactual per problem.

{table(units, ["unit", "tau"], [*COLUMNS, "words_pruned"])}

#### Response level: normalising the context per part or jointly (gradient, all problems)

The second segment's context is the instruction plus the first segment ("7 + 5 = 12."). \
*segment* (the default, the official code) normalises and thresholds the instruction and the \
response prefix each on its own; *joint* normalises the whole context at once. Key metrics \
count the instruction's flags only; *instruction_flags* / *prefix_flags* = flags per problem \
in each part.

{table(response, ["normalise", "tau"], ["key_precision", "key_recall", "key_f1",
                                        "instruction_flags", "prefix_flags", "clean_flags"])}

#### Beyond the paper: minimum teacher-student gap guard (gradient, tau 0.1, all problems)

{table(gap_rows, ["min_gap"])}

#### Pilot (paper Fig. 1): student accuracy on the {len(sub_p)} teacher-right / student-wrong \
problems after pruning

Original prompts: 0.000 by construction. *collective* removes every flagged span at once; \
*any span* counts a problem as recovered if one of its span-pruned counterfactuals is answered \
right.

{markdown_table(["pruning", "flagged entries / problem", "collective", "any span"], pilot)}
"""
    (args.out / "confounder_detection.md").write_text(text)
    (args.out / "confounder_detection.json").write_text(json.dumps(
        {"all": all_rows, "paper_subset": paper_rows, "units": units, "min_gap": gap_rows,
         "response": response, "pilot": pilot, "accuracy": acc, "subset_size": len(sub_p)},
        indent=1))
    print(text)


if __name__ == "__main__":
    main()
