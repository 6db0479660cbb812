"""The paper's Table 1 at toy scale, on the demo task: does LeaF beat plain KD?

On arithmetic word problems with distracting sentences, the demo student (trained on clean
problems) is distilled from the demo teacher (trained with distractors) four ways, and
scored on held-out problems with 0, 1 and 2 distractors:

* Student (pre-KD): the student as it is;
* KD w/o mask: plain distillation on the original rows (hybrid loss with no
  counterfactuals is exactly L_kd);
* LeaF (Instr Mask): the same rows, each with its instruction-level counterfactuals from
  `leaf detect` (hybrid loss, lambda = 0.5);
* LeaF (Instr & Resp Mask): as above, plus response-level counterfactuals.

Every counterfactual is trained on every epoch. With `--hybrid-units example` (the default)
the comparison is at equal steps: every condition runs the same number of optimizer steps
over the same original rows (an example's counterfactual term averages all of them), with
the same learning rate and schedule; `--hybrid-units pair` makes a unit of each
(original, counterfactual) pair, so the LeaF conditions take more steps. Each distilled
condition is repeated over seeds (data order). Detection (and, by default, verification: a
pruned variant counts only if both models then answer it correctly) runs once and is shared
by the LeaF conditions; with `--workdir`, a later run reuses it.

    python benchmarks/distill_demo.py                  # the full run (~20 min on 2 CPU cores)
    python benchmarks/distill_demo.py --quick          # a smoke run on a tiny slice
    python benchmarks/distill_demo.py --conditions leaf-instr,leaf-resp --hybrid-units pair
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import RESULTS, machine, markdown_table
from leaf_engine.data import Example, write_jsonl
from leaf_engine.demo.tasks import generate
from leaf_engine.detect import DetectConfig, Detector
from leaf_engine.distill import distill
from leaf_engine.distill_config import CounterfactualChoice, DistillConfig, HybridUnits
from leaf_engine.evaluate import EvalConfig, evaluate
from leaf_engine.models import LoadedModel, load_model
from leaf_engine.selection import Judge, verify_records, with_verified

CONDITIONS = {  # --conditions key: (name, data file, level)
    "kd": ("KD w/o Mask", "plain", "auto"),
    "leaf-instr": ("LeaF (Instr Mask)", "records", "instruction"),
    "leaf-resp": ("LeaF (Instr & Resp Mask)", "records", "auto"),
}
MAX_NEW_TOKENS = 24  # "13 - 3 = 10. The answer is 10." is 13 tokens plus EOS


def build_data(args: argparse.Namespace, teacher: LoadedModel, student: LoadedModel,
               work: Path) -> dict[str, Any]:
    """Training rows, detection records (with verification marks) and the test file; those
    of an earlier run in the same work directory when they are there."""
    saved = work / "stats.json"
    if saved.is_file():
        print(f"reusing the data in {work}", flush=True)
        return json.loads(saved.read_text())
    train = generate("train", args.train, seed=args.data_seed)
    examples = [Example(p.id, p.instruction, p.output, p.answer) for p in train]
    write_jsonl(work / "plain.jsonl", ({"id": e.id, "instruction": e.instruction,
                                        "output": e.output} for e in examples))
    config = DetectConfig(tau=args.tau, level="response", segments=2)
    started = time.perf_counter()
    records = Detector(teacher, student, batch_size=64).detect(examples, config)
    flags = (verify_records(teacher, student, records,
                            Judge(max_new_tokens=MAX_NEW_TOKENS, batch_size=128))
             if args.verify else [None] * len(records))
    rows = [with_verified(r, f)[0] for r, f in zip(records, flags, strict=True)]
    write_jsonl(work / "records.jsonl", rows)
    variants = [[p for p in r["pruned"]] + [p for v in r.get("views", []) for p in v["pruned"]]
                for r in rows]
    stats = {
        "train_rows": len(rows),
        "instruction_variants": sum(len(r["pruned"]) for r in rows),
        "response_variants": sum(len(v) for v in variants) - sum(len(r["pruned"]) for r in rows),
        "verified": sum(bool(p.get("verified")) for v in variants for p in v),
        "detect_seconds": round(time.perf_counter() - started, 1),
    }
    test = [p for k in (0, 1, 2)
            for p in generate("test", args.test_per_group, seed=0, distractors=k)]
    write_jsonl(work / "test.jsonl", (
        {"id": p.id, "instruction": p.instruction, "answer": p.answer,
         "distractors": p.distractors} for p in test))
    saved.write_text(json.dumps(stats))  # last: its presence says the data is complete
    return stats


def score(model: LoadedModel, teacher: LoadedModel, work: Path) -> dict[str, float]:
    report = evaluate(EvalConfig(model=model.name, data=str(work / "test.jsonl"),
                                 max_new_tokens=MAX_NEW_TOKENS, batch_size=128,
                                 group_by="distractors"), model=model, teacher=teacher)
    out = {f"{k} distractors": g["accuracy"] for k, g in (report.groups or {}).items()}
    out["all"] = report.accuracy
    out["jaccard"] = report.jaccard or 0.0
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from leaf_engine.demo import demo_pair

    names = (args.teacher, args.student)
    if None in names:
        demo = demo_pair()
        names = (args.teacher or demo[0], args.student or demo[1])
    teacher = load_model(names[0], device="cpu")
    student = load_model(names[1], device="cpu")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="leaf-distill-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stats = build_data(args, teacher, student, work)
    results: dict[str, list[dict[str, float]]] = {
        "Teacher": [score(teacher, teacher, work)],
        "Student (Pre-KD)": [score(student, teacher, work)],
    }
    steps: dict[str, int] = {}
    for seed in range(args.seeds):
        for key in args.conditions:
            name, data, level = CONDITIONS[key]
            config = DistillConfig(
                data=str(work / f"{data}.jsonl"), out=str(work / f"{data}-{level}-{seed}"),
                lam=args.lam, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                micro_batch_size=args.batch_size, warmup_steps=args.warmup_steps,
                val_fraction=0.0, seed=seed, device="cpu", level=level,  # type: ignore[arg-type]
                only_verified=args.verify and data == "records",
                hybrid_units=args.hybrid_units, counterfactuals=args.counterfactuals,
            )
            result = distill(config, teacher=teacher, student=student)
            steps[name] = result.steps
            trained = load_model(str(result.last_checkpoint), device="cpu")
            results.setdefault(name, []).append(score(trained, teacher, work))
            print(f"seed {seed} {name}: {results[name][-1]}", flush=True)
    return {"stats": stats, "results": results, "steps": steps,
            "seconds": round(time.perf_counter() - started, 1), "work": str(work)}


def table(out: dict[str, Any], args: argparse.Namespace) -> str:
    columns = ["0 distractors", "1 distractors", "2 distractors", "all", "jaccard"]
    rows = []
    for name, runs in out["results"].items():
        cells = []
        for column in columns:
            values = [100 * r.get(column, 0.0) for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        rows.append([name, out["steps"].get(name, "-"), len(runs), *cells])
    stats = out["stats"]
    return (
        f"Demo distillation ({args.train} training problems, {args.epochs} epochs, batch "
        f"{args.batch_size}, lr {args.lr:g}, lambda {args.lam}, tau {args.tau}, "
        f"{'verified' if args.verify else 'all'} {args.counterfactuals} counterfactuals, "
        f"hybrid units: {args.hybrid_units}; {args.test_per_group} test "
        f"problems per distractor count; mean ± std over seeds), on {machine()}, "
        f"{out['seconds']:.0f} s.\n\n"
        + markdown_table(["condition", "steps", "runs", "acc 0 distr.", "acc 1 distr.",
                          "acc 2 distr.", "acc all", "Jaccard vs teacher"], rows)
        + f"\n\nDetection: {stats['instruction_variants']} instruction-level and "
        f"{stats['response_variants']} response-level pruned variants over "
        f"{stats['train_rows']} rows"
        + (f", {stats['verified']} verified" if args.verify else "") + ".\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=None, help="default: the bundled demo teacher")
    parser.add_argument("--student", default=None, help="default: the bundled demo student")
    parser.add_argument("--train", type=int, default=2000, help="training problems")
    parser.add_argument("--test-per-group", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="toy models need far more than the paper's 1e-5")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--lam", type=float, default=0.5)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="keep only pruned variants both models then answer correctly")
    parser.add_argument("--hybrid-units", choices=get_args(HybridUnits),
                        default=DistillConfig.hybrid_units)
    parser.add_argument("--counterfactuals", choices=get_args(CounterfactualChoice),
                        default=DistillConfig.counterfactuals)
    parser.add_argument("--conditions", type=lambda v: v.split(","), default=list(CONDITIONS),
                        help=f"comma-separated, of {', '.join(CONDITIONS)}")
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workdir", default=None, help="keep data and checkpoints here")
    parser.add_argument("--quick", action="store_true", help="a tiny slice, one seed")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    unknown = set(args.conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"--conditions: unknown {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(CONDITIONS)}")
    if args.verify and args.counterfactuals != "span":
        parser.error("--counterfactuals collective or both needs --no-verify: `leaf detect "
                     "--verify` checks span counterfactuals only")
    if args.quick:
        args.train, args.test_per_group, args.seeds, args.epochs = 48, 10, 1, 1
        args.batch_size, args.warmup_steps = 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args)
    text = table(out, args)
    print(text)
    path = args.out or RESULTS / f"distill_demo{'_quick' if args.quick else ''}_cpu.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
