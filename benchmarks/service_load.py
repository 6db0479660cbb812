"""Load on a running `leaf serve`: many concurrent clients posting /detect, a mix of
prompts the cache knows (answered by the API alone) and new ones (a worker runs the models).

    leaf serve &                                   # the demo pair, or LEAF_MODELS=...
    python benchmarks/service_load.py              # 50 clients, 1000 requests, 20% new
    python benchmarks/service_load.py --requests 200 --out /tmp/load   # a quick run
    python benchmarks/service_load.py --think-ms 500   # clients that pause, like people

Reports p50/p99 latency per kind, throughput and errors (any answer but 200: a 202, "still
running", counts as an error here, since the goal is every request answered). Goal: 0 errors
and a cached p50 under 20 ms. Writes service_load.md and .json under benchmarks/results/
(or --out). Needs only httpx: the client never imports torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Sample:
    kind: str  # cached or new: what the request was meant to be
    status: int
    seconds: float
    cached: bool | None  # what the answer said
    error: str | None = None


@dataclass
class Plan:
    warm: list[dict[str, str]]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def prompts(n: int, seed: int) -> list[dict[str, str]]:
    """Distinct demo-task problems (the demo pair's vocabulary), as /detect bodies."""
    from leaf_engine.demo.tasks import make_problem

    rng = random.Random(seed)
    seen: dict[str, dict[str, str]] = {}
    while len(seen) < n:
        problem = make_problem(rng, rng.choice((0, 1, 2)), str(len(seen)))
        seen.setdefault(problem.instruction, {"instruction": problem.instruction,
                                              "output": problem.output})
    return list(seen.values())


def plan(total: int, new_share: float, hot: int, seed: int) -> Plan:
    n_new = round(total * new_share)
    pool = prompts(hot + n_new, seed)
    warm, fresh = pool[:hot], pool[hot:]
    rng = random.Random(seed + 1)
    requests = [("new", p) for p in fresh]
    requests += [("cached", {**rng.choice(warm), "tau": rng.choice([0.05, 0.1, 0.2])})
                 for _ in range(total - n_new)]
    rng.shuffle(requests)
    return Plan(warm, requests)


async def one(client: httpx.AsyncClient, kind: str, body: dict[str, Any]) -> Sample:
    started = time.perf_counter()
    try:
        response = await client.post("/detect", json=body)
        seconds = time.perf_counter() - started
        data = response.json() if response.headers.get("content-type", "").startswith(
            "application/json") else {}
        error = None if response.status_code == 200 else str(data.get("detail", ""))[:200]
        return Sample(kind, response.status_code, seconds, data.get("cached"), error)
    except httpx.HTTPError as err:
        return Sample(kind, 0, time.perf_counter() - started, None, f"{type(err).__name__}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    work = plan(args.requests, args.new_share, args.hot, args.seed)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits,
                                 timeout=args.timeout) as client:
        health = (await client.get("/health")).json()
        if health.get("workers", 0) < 1:
            raise SystemExit(f"the service has no worker: {health}")
        for body in work.warm:  # these answers are cached from now on
            response = await client.post("/detect", json=body)
            response.raise_for_status()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        for item in work.requests:
            queue.put_nowait(item)
        samples: list[Sample] = []

        async def client_loop() -> None:
            while not queue.empty():
                kind, body = queue.get_nowait()
                samples.append(await one(client, kind, body))
                if args.think_ms:  # a person or a script between two requests
                    await asyncio.sleep(random.expovariate(1000.0 / args.think_ms))

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(args.clients)))
        wall = time.perf_counter() - started
    return summarise(samples, wall, args, health)


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def summarise(samples: list[Sample], wall: float, args: argparse.Namespace,
              health: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for kind in ("cached", "new"):
        mine = [s for s in samples if s.kind == kind]
        ok = [s.seconds for s in mine if s.status == 200]
        rows[kind] = {"requests": len(mine), "ok": len(ok), "p50_ms": _ms(ok, 0.5),
                      "p99_ms": _ms(ok, 0.99), "max_ms": _ms(ok, 1.0),
                      "mean_ms": round(1000 * statistics.fmean(ok), 1) if ok else None}
    errors = [s for s in samples if s.status != 200]
    miscached = sum(1 for s in samples if s.kind == "cached" and s.status == 200 and not s.cached)
    return {
        "clients": args.clients, "requests": len(samples), "new_share": args.new_share,
        "think_ms": args.think_ms,
        "seconds": round(wall, 2), "throughput_rps": round(len(samples) / wall, 1),
        "errors": len(errors), "error_examples": sorted({f"{s.status} {s.error}"
                                                         for s in errors})[:5],
        "cached_answered_by_worker": miscached, "by_kind": rows, "workers": health["workers"],
        "machine": f"{platform.machine()}, {platform.system()}", "url": args.url,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Service load: {result['clients']} clients, {result['requests']} /detect requests "
        f"({round(100 * result['new_share'])}% new prompts, think time "
        f"{result['think_ms']:g} ms), {result['workers']} worker(s)",
        "",
        "| kind | requests | ok | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|",
    ]
    for kind, row in result["by_kind"].items():
        lines.append(f"| {kind} | {row['requests']} | {row['ok']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['max_ms']} |")
    lines += ["", f"Throughput {result['throughput_rps']} requests/s over "
                  f"{result['seconds']} s; errors: {result['errors']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--new-share", type=float, default=0.2,
                        help="share of requests with a prompt the cache does not know")
    parser.add_argument("--hot", type=int, default=20, help="distinct cached prompts")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="mean pause of each client between requests (0: back to back, "
                             "which measures saturation rather than a team's use)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--token", default=None, help="LEAF_API_TOKEN, if the service has one")
    parser.add_argument("--seed", type=int, default=None,
                        help="prompt seed (default: from the clock, so 'new' prompts are new)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = int(time.time())
    result = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service_load.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "service_load.md").write_text(text)
    print(text)
    if result["errors"]:
        print("errors:", *result["error_examples"], sep="\n  ")


if __name__ == "__main__":
    main()
