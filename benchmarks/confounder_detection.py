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
from leaf_engine.analysis import DetectConfig, decide
from leaf_engine.demo import demo_pair
from leaf_engine.demo.benchmark import evaluate_methods
from leaf_engine.demo.tasks import final_number, generate
from leaf_engine.demo.train import generate_answers
from leaf_engine.detect import Detector
from leaf_engine.models import load_model

TAUS = (0.05, 0.1, 0.2, 0.3)
METHODS = ("gradient", "ppl", "random", "teacher-only", "student-only")
COLUMNS = ["token_precision", "token_recall", "token_f1", "key_precision", "key_recall",
           "key_f1", "sentence_hit", "clean_flags"]


def table(rows: list[dict], keys: list[str]) -> str:
    return markdown_table(keys + COLUMNS, [[r[k] for k in keys] + [f"{r[c]:.3f}" for c in COLUMNS]
                                           for r in rows])


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
    all_rows = evaluate_methods(analyses, problems, TAUS, methods=METHODS)
    paper_rows = evaluate_methods(sub_a, sub_p, TAUS, methods=METHODS)
    unit_rows = [r for unit in ("token", "word", "sentence")
                 for r in evaluate_methods(analyses, problems, TAUS, methods=("gradient",),
                                           unit=unit)]
    gap_rows = [r for gap in (0.0, 0.3, 0.5, 0.7)
                for r in evaluate_methods(analyses, problems, (0.1,), methods=("gradient",),
                                          min_gap=gap)]

    # Pilot: student accuracy on teacher-right / student-wrong problems, original vs pruned.
    pilot = []
    for label, config in [
        ("gradient (LeaF), tau 0.1", DetectConfig(tau=0.1)),
        ("gradient, words, tau 0.1", DetectConfig(tau=0.1, unit="word")),
        ("gradient, sentences, tau 0.1", DetectConfig(tau=0.1, unit="sentence")),
        ("perplexity, same count", DetectConfig(tau=0.1, method="ppl")),
        ("random, same count", DetectConfig(tau=0.1, method="random")),
    ]:
        records = [decide(a, config, example_id=p.id) for a, p in zip(sub_a, sub_p, strict=True)]
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

Token metrics are pooled over problems. *token* = against every token of the distractor \
sentences; *key* = against the distractors' numbers; *sentence_hit* = share of distractor \
sentences with at least one flagged token; *clean_flags* = flagged tokens per problem that has \
no distractor (lower is better).

#### All test problems

{table(all_rows, ["method", "tau"])}

#### The paper's subset (teacher right, student wrong)

{table(paper_rows, ["method", "tau"])}

#### Beyond the paper: aggregation unit (gradient, all problems)

{table(unit_rows, ["unit", "tau"])}

#### Beyond the paper: minimum teacher-student gap guard (gradient, tau 0.1, all problems)

{table(gap_rows, ["min_gap"])}

#### Pilot (paper Fig. 1): student accuracy on the {len(sub_p)} teacher-right / student-wrong \
problems after pruning

Original prompts: 0.000 by construction. *collective* removes every flagged span at once; \
*any span* counts a problem as recovered if one of its span-pruned counterfactuals is answered \
right.

{markdown_table(["pruning", "tokens pruned / problem", "collective", "any span"], pilot)}
"""
    (args.out / "confounder_detection.md").write_text(text)
    (args.out / "confounder_detection.json").write_text(json.dumps(
        {"all": all_rows, "paper_subset": paper_rows, "units": unit_rows, "min_gap": gap_rows,
         "pilot": pilot, "accuracy": acc, "subset_size": len(sub_p)}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
