"""KD loss memory: the engine's chunked hybrid loss against a naive full-logit implementation.

The naive loss is the usual way (and the official code's): full teacher and student logits
(B, T, V), fp32 log-softmax / softmax over the vocabulary, KL per token, mean per row, then
the hybrid combination lam * KL(original) + (1 - lam) * KL(counterfactual). The engine
applies both LM heads and the KL a chunk of rows at a time, so no (rows, V) tensor outlives
a chunk, in two ways, both measured:

* fused (`leaf_engine.losses.linear_kl`, what the trainer uses for a plain linear head): a
  custom autograd function whose backward recomputes each chunk and accumulates the head's
  weight gradient in one buffer in place;
* checkpointed (`chunked_kl`, for heads with softcapping or a logit scale): each chunk under
  activation checkpointing; autograd then sums one (V, D) weight gradient per chunk.

B = 2 rows (an original and its counterfactual), every position a response position, both
models with hidden size D, random hidden states and LM heads, fp32. Each (implementation,
shape) runs in a fresh interpreter so its peak memory is its own: on CPU the growth of peak
RSS over the RSS after inputs, weights and gradient buffers exist (large tensors are
mmap-backed, so RSS follows what is live); on CUDA `max_memory_allocated` over the same
baseline. Loss and gradients (w.r.t. the student hidden states and the student head
weight) are compared with the naive ones, relative to the largest reference magnitude.

    python benchmarks/kd_memory.py                  # CPU: V in {32k, 128k}, T in {512, 2048}
    python benchmarks/kd_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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
from leaf_engine.losses import chunked_kl, linear_kl

LAMBDA = 0.5
TEMPERATURE = 1.0
IMPLS = ("naive", "fused", "checkpoint")


def naive_hybrid(h_s: torch.Tensor, h_t: torch.Tensor, w_s: torch.Tensor, w_t: torch.Tensor,
                 lam: float, tau: float) -> torch.Tensor:
    """Full logits, fp32 softmax, KL per token; row 0 original, row 1 counterfactual."""
    student = (h_s @ w_s.T).float()  # (B, T, V)
    with torch.no_grad():
        teacher = (h_t @ w_t.T).float()  # (B, T, V)
    log_q = F.log_softmax(student / tau, dim=-1)  # (B, T, V)
    p = F.softmax(teacher / tau, dim=-1)  # (B, T, V)
    kl = F.kl_div(log_q, p, reduction="none").sum(-1) * tau**2  # (B, T)
    per_row = kl.mean(-1)  # (B,)
    return lam * per_row[0] + (1 - lam) * per_row[1]


def chunked_hybrid(h_s: torch.Tensor, h_t: torch.Tensor, w_s: torch.Tensor, w_t: torch.Tensor,
                   lam: float, tau: float, chunk_rows: int | None, fused: bool) -> torch.Tensor:
    """The engine's loss: rows flattened, LM heads and KL chunk by chunk; `fused` is the
    custom backward for linear heads, otherwise each chunk is checkpointed (any head)."""
    b, t, d = h_s.shape
    rows_s, rows_t = h_s.reshape(b * t, d), h_t.reshape(b * t, d)  # (B * T, D)
    if fused:
        kl = linear_kl(rows_s, w_s, None, rows_t, lambda h: h @ w_t.T, temperature=tau,
                       chunk_rows=chunk_rows)  # (B * T,)
    else:
        kl = chunked_kl(rows_s, lambda h: h @ w_s.T, rows_t, lambda h: h @ w_t.T,
                        temperature=tau, vocab=w_s.shape[0], chunk_rows=chunk_rows)
    per_row = kl.reshape(b, t).mean(-1)  # (B,)
    return lam * per_row[0] + (1 - lam) * per_row[1]


def _limit_address_space(headroom: int) -> None:
    """Fail with an allocation error instead of waking the kernel's OOM killer."""
    if headroom <= 0:
        return
    with open("/proc/self/status") as handle:
        size_kb = int(handle.read().split("VmSize:")[1].split()[0])
    limit = size_kb * 1024 + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run(impl: str, h_s: torch.Tensor, h_t: torch.Tensor, w_s: torch.Tensor,
         w_t: torch.Tensor, chunk_rows: int | None) -> torch.Tensor:
    if impl == "naive":
        return naive_hybrid(h_s, h_t, w_s, w_t, LAMBDA, TEMPERATURE)
    return chunked_hybrid(h_s, h_t, w_s, w_t, LAMBDA, TEMPERATURE, chunk_rows,
                          fused=impl == "fused")


def _warm_up(impl: str, device: torch.device) -> None:
    """One call on tiny tensors, so lazy imports and kernel set-up are not measured."""
    h = torch.randn(2, 4, 8, device=device, requires_grad=True)
    w = torch.randn(16, 8, device=device, requires_grad=True)
    _run(impl, h, h.detach(), w, w.detach(), 3).backward()


def child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    _warm_up(args.impl, device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seq, args.hidden)
    h_s = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    h_t = torch.randn(shape, generator=gen).to(device)
    w_s = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).to(device)
    w_s.requires_grad_(True)
    w_t = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).to(device)
    # Gradient buffers exist in both implementations; allocate them before the baseline so
    # the measurement is the loss's own working memory plus nothing implementation-neutral.
    w_s.grad = torch.zeros_like(w_s)
    h_s.grad = torch.zeros_like(h_s)
    if device.type == "cpu":
        _limit_address_space(args.headroom)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_bytes()
    start = time.perf_counter()
    loss = _run(args.impl, h_s, h_t, w_s, w_t, args.chunk_rows)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base if device.type == "cuda"
            else max(0, peak_rss_bytes() - base))
    dump = Path(args.dump)
    np.save(dump / "grad_h.npy", h_s.grad.detach().cpu().numpy())
    np.save(dump / "grad_w.npy", w_s.grad.detach().cpu().numpy())
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "loss": float(loss)}))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[32_000, 128_256])
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per chunk (default: the engine's choice for the vocab)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--headroom-gib", type=float, default=None,
                        help="CPU address-space budget per child (default: available - 1.5)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("--headroom", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        child(args)
        return
    headroom = 0
    if args.device == "cpu":
        import psutil

        gib = args.headroom_gib
        if gib is None:
            gib = psutil.virtual_memory().available / 2**30 - 1.5
        headroom = int(gib * 2**30)
    rows, checks = [], []
    for vocab in args.vocabs:
        for seq in args.seqs:
            runs, diffs = {}, {}
            with tempfile.TemporaryDirectory() as tmp:
                for impl in IMPLS:
                    dump = Path(tmp) / impl
                    dump.mkdir()
                    extra = ["--chunk-rows", str(args.chunk_rows)] if args.chunk_rows else []
                    runs[impl] = run_child(Path(__file__), [
                        "--impl", impl, "--vocab", str(vocab), "--seq", str(seq), "--batch",
                        str(args.batch), "--hidden", str(args.hidden), "--device", args.device,
                        "--dump", str(dump), "--headroom", str(headroom), *extra])
                for impl in IMPLS[1:]:
                    loss = (abs(runs[impl]["loss"] - runs["naive"]["loss"])
                            / abs(runs["naive"]["loss"]))
                    grads = [_relative(np.load(Path(tmp) / impl / name),
                                       np.load(Path(tmp) / "naive" / name))
                             for name in ("grad_h.npy", "grad_w.npy")]
                    diffs[impl] = max(loss, *grads)
            checks.extend(diffs.values())
            peak = {impl: runs[impl]["peak_bytes"] for impl in IMPLS}
            secs = {impl: runs[impl]["seconds"] for impl in IMPLS}
            rows.append([
                f"{vocab:,}", seq, mib(peak["naive"]), mib(peak["fused"]),
                f"**{peak['naive'] / max(peak['fused'], 1):.1f}x**", mib(peak["checkpoint"]),
                f"{peak['naive'] / max(peak['checkpoint'], 1):.1f}x",
                f"{secs['naive']:.1f}", f"{secs['fused']:.1f}", f"{secs['checkpoint']:.1f}",
                f"{diffs['fused']:.1e}", f"{diffs['checkpoint']:.1e}"])
            print(rows[-1], flush=True)
    memory = ("peak CUDA memory allocated" if args.device == "cuda"
              else "peak RSS growth over inputs, weights and gradient buffers")
    text = (
        f"KD hybrid loss (lambda {LAMBDA}, temperature {TEMPERATURE}), forward + backward, "
        f"B = {args.batch} (an original and its counterfactual), every position a response "
        f"position, hidden {args.hidden}, fp32, on {machine()}. Memory: {memory}. "
        "Differences are relative to the largest reference magnitude.\n\n"
        + markdown_table(["V", "T", "naive peak", "fused peak", "saved (fused)",
                          "checkpointed peak", "saved (checkpointed)", "naive s", "fused s",
                          "checkpointed s", "fused diff", "checkpointed diff"], rows)
        + f"\n\nLargest relative difference (loss or gradient): {max(checks):.1e}.\n"
    )
    print(text)
    out = args.out or RESULTS / f"kd_memory_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
