"""Saliency throughput: this engine (batched by its activation budget, frozen parameters)
against a faithful re-implementation of the official RUCBM/LeaF detection loop (one example
at a time, full logits through `model(labels=...)`, parameters left requiring grad,
`loss.backward()`), and against itself one row per pass (what batching buys).

Both run in this one script on the same models and the same rows; each measurement runs in
a fresh interpreter so peak memory is its own. Reports examples/s, the speed-up ratio, peak
memory and the largest absolute difference between the two implementations' scores.

    python benchmarks/saliency_throughput.py                    # CPU, demo-sized models
    python benchmarks/saliency_throughput.py --shape llama-1b-3b --device cuda --rows 128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import (
    RESULTS,
    current_rss_bytes,
    machine,
    markdown_table,
    mib,
    peak_rss_bytes,
    run_child,
)
from leaf_engine.demo.tasks import generate
from leaf_engine.demo.tokenizer import build_tokenizer
from leaf_engine.models import LoadedModel, PromptTemplate
from leaf_engine.saliency import SaliencyInput, token_saliency

# (hidden, layers, heads, kv heads, intermediate, vocab): ~1M and ~100k parameters (the
# demo pair's scale), and the shapes of Llama-3.2-1B (student) and 3B (teacher) for a GPU.
IMPLS = ("official", "engine-1", "engine")
SHAPES = {
    "tiny": {"teacher": (128, 4, 4, 4, 512, None), "student": (64, 2, 4, 4, 128, None)},
    "llama-1b-3b": {"teacher": (3072, 28, 24, 8, 8192, 128256),
                    "student": (2048, 16, 32, 8, 8192, 128256)},
}


def build(shape: str, role: str, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, heads, kv, inter, vocab = SHAPES[shape][role]
    tokenizer = build_tokenizer()
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter,
                         vocab_size=vocab or len(tokenizer), max_position_embeddings=512,
                         tie_word_embeddings=vocab is not None, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0)
    torch.manual_seed(0 if role == "teacher" else 1)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return LoadedModel(name=f"{shape}-{role}", model=model, tokenizer=tokenizer,
                       template=PromptTemplate(plain=None), identity=role, max_length=512)


def official_loop(loaded: LoadedModel, inputs: list[SaliencyInput]) -> list[np.ndarray]:
    """The official script's per-example loop, with its instruction positions from offsets."""
    model = loaded.model
    model.train()  # as the official script leaves it; these configs have no dropout
    for p in model.parameters():
        p.requires_grad_(True)
    out = []
    for x in inputs:
        enc = loaded.encode(x.instruction, x.target)
        ids = torch.tensor([list(enc.input_ids)], device=loaded.device)
        labels = torch.full_like(ids, -100)
        labels[0, list(enc.target_positions)] = ids[0, list(enc.target_positions)]
        embeds = model.get_input_embeddings()(ids)
        embeds.retain_grad()
        loss = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                     labels=labels).loss
        loss.backward()
        grads = embeds.grad[0, list(enc.context_positions)].float()
        out.append(grads.norm(dim=-1).detach().cpu().numpy().astype(np.float64))
    return out


def child(args: argparse.Namespace) -> None:
    """One (implementation, model) measurement; its own process, so its own peak memory."""
    rows = [json.loads(line) for line in Path(args.rows_file).read_text().splitlines()]
    inputs = [SaliencyInput(r["instruction"], r["output"]) for r in rows]
    loaded = build(args.shape, args.role, args.device)

    def run(xs: list[SaliencyInput]) -> list[np.ndarray]:
        if args.impl == "official":
            return official_loop(loaded, xs)
        budget = None if args.activation_budget is None else args.activation_budget * 2**20
        size = 1 if args.impl == "engine-1" else args.batch_size
        return [s.norms for s in token_saliency(loaded, xs, batch_size=size,
                                                activation_budget=budget)]

    run(inputs[:4])  # warm-up: allocator, kernels
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = current_rss_bytes()
    times = []
    for _ in range(args.repeats):  # the median of a few runs damps a noisy shared machine
        start = time.perf_counter()
        norms = run(inputs)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else max(0, peak_rss_bytes() - base))
    Path(args.scores_file).write_text(json.dumps([n.tolist() for n in norms]))
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="most rows per pass")
    parser.add_argument("--activation-budget", type=int, default=None, metavar="MIB",
                        help="the engine's activation budget [default: the engine's]")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    parser.add_argument("--scores-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        child(args)
        return
    problems = generate("test", args.rows, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(p.to_row()) + "\n" for p in problems))
        common = ["--rows-file", str(rows_file), "--device", args.device, "--shape", args.shape,
                  "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
        if args.activation_budget is not None:
            common += ["--activation-budget", str(args.activation_budget)]
        runs, scores = {}, {}
        for impl in IMPLS:
            for role in ("teacher", "student"):
                scores_file = Path(tmp) / f"{impl}-{role}.json"
                runs[impl, role] = run_child(Path(__file__), [
                    *common, "--impl", impl, "--role", role, "--scores-file", str(scores_file)])
                scores[impl, role] = json.loads(scores_file.read_text())
    diff = max(
        float(np.max(np.abs(np.array(a) - np.array(b))))
        for role in ("teacher", "student")
        for a, b in zip(scores["official", role], scores["engine", role], strict=True)
    )
    table = []
    for label, roles in (("teacher", ["teacher"]), ("student", ["student"]),
                         ("both", ["teacher", "student"])):
        secs = {i: sum(runs[i, r]["seconds"] for r in roles) for i in IMPLS}
        peak = {i: max(runs[i, r]["peak_bytes"] for r in roles) for i in IMPLS}
        table.append([label, f"{args.rows / secs['official']:.1f}",
                      f"{args.rows / secs['engine-1']:.1f}",
                      f"{args.rows / secs['engine']:.1f}",
                      f"**{secs['official'] / secs['engine']:.2f}x**",
                      f"**{secs['engine-1'] / secs['engine']:.2f}x**",
                      mib(peak["official"]), mib(peak["engine-1"]), mib(peak["engine"])])
    memory = ("peak CUDA memory allocated" if args.device == "cuda" else
              "peak RSS growth over the loaded model")
    budget = ("the engine's default activation budget" if args.activation_budget is None
              else f"an activation budget of {args.activation_budget} MiB")
    text = (
        f"Saliency throughput, shape `{args.shape}`, {args.rows} demo rows, engine batches of "
        f"at most {args.batch_size} rows within {budget}, median of {args.repeats} runs, on "
        f"{machine()}, {torch.get_num_threads()} threads. *engine, 1 row*: the engine one row "
        f"per pass. Memory: {memory}."
        "\n\n"
        + markdown_table(["model", "official loop (ex/s)", "engine, 1 row (ex/s)",
                          "engine (ex/s)", "vs official", "vs 1 row", "official peak mem",
                          "1 row peak mem", "engine peak mem"], table)
        + f"\n\nLargest absolute difference between the two implementations' raw saliency "
        f"norms: {diff:.2e}.\n"
    )
    print(text)
    out = args.out or RESULTS / f"saliency_throughput_{args.shape}_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
