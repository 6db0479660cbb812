"""Load on a running `leaf serve`: many concurrent clients, measured from a client light
enough not to be the bottleneck itself.

    leaf serve &                                     # the demo pair, or LEAF_MODELS=...
    python benchmarks/service_load.py                # /detect: 50 clients, 20% new prompts
    python benchmarks/service_load.py --share-new 0 --requests 20000   # cached only
    python benchmarks/service_load.py --rate 500     # open loop: 500 requests/s, Poisson
    python benchmarks/service_load.py --think-ms 200 # closed loop with think time
    python benchmarks/service_load.py --mix full --rounds 3   # + job submissions and polls

Two ways to load a server, reported apart because they answer different questions:

- closed loop (default): each of `--clients` connections sends its next request as soon as
  the last one is answered (after `--think-ms`, if set). Back to back this measures
  saturation: latency is roughly clients / throughput, whatever the server does.
- open loop (`--rate R`): requests arrive at R per second (Poisson), whether or not earlier
  ones were answered, over a pool of `--clients` connections. Latency counts from the
  scheduled arrival, so a request that waits for a free connection is not flattered
  (no coordinated omission).

`--mix detect` sends /detect only: prompts the cache knows (`cached`) and new ones (`new`, a
worker runs the models). `--mix full` also uploads a small dataset, submits detect jobs over
it, polls them and lists jobs; at the end every submitted job must be finished and listed.
`--rounds K` repeats the plan K times (with new prompts each time) and records the worker's
RSS after each round, to see whether it grows.

The client is asyncio over raw keep-alive sockets (uvloop when installed): a request costs
it tens of microseconds, and its own CPU time is reported next to the server's (API, worker
and Redis processes, found from the port) so one can see where the time goes.

Any answer but the expected one is an error (a 202 "still running" from /detect included:
the goal is every request answered). Writes service_load.md and .json under
benchmarks/results/ (or --out). Torch-free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RESULTS = Path(__file__).resolve().parent / "results"
FINAL = {"finished", "failed", "canceled"}


# ---------------------------------------------------------------------------- the client


class HttpError(Exception):
    """The connection broke or the answer was not HTTP/1.1 we can read."""


class Connection:
    """One keep-alive HTTP/1.1 connection; requests on it go one at a time."""

    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def encode(self, method: str, path: str, body: bytes = b"",
               content_type: str = "application/json") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
        if body or method in {"POST", "PUT"}:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send an encoded request; return (status, body). Reconnects once if the server
        closed an idle connection."""
        for attempt in (0, 1):
            if self.writer is None:
                await self._open()
            try:
                self.writer.write(raw)  # type: ignore[union-attr]
                return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError) as err:
                self.close()
                if attempt:
                    raise HttpError(type(err).__name__) from None
        raise AssertionError("unreachable")

    async def _read(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"bad status line {lines[0]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                parts.append(await self.reader.readexactly(size + 2))
            await self.reader.readuntil(b"\r\n")
            body = b"".join(p[:-2] for p in parts)
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body


# ---------------------------------------------------------------------------- the plan


@dataclass
class Sample:
    kind: str  # cached, new, submit, poll, list
    status: int
    seconds: float
    error: str | None = None


@dataclass
class Op:
    """One request of the plan: what to send and how to judge the answer."""

    kind: str
    method: str
    path: str | Callable[[], str | None]  # a callable picks a job to poll at send time
    body: bytes = b""
    check: Callable[[int, bytes], str | None] = lambda status, body: None


@dataclass
class Shared:
    """What clients learn while the plan runs: the jobs they submitted."""

    jobs: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)


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


def _detect_check(want_cached: bool | None) -> Callable[[int, bytes], str | None]:
    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return _detail(status, body)
        if want_cached and b'"cached":true' not in body:
            return "a cached prompt was answered by a worker"
        return None

    return check


def _detail(status: int, body: bytes) -> str:
    try:
        return f"{status} {json.loads(body).get('detail', '')}"[:200]
    except (ValueError, AttributeError):
        return f"{status} {body[:100]!r}"


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def plan(args: argparse.Namespace, hot: list[dict[str, str]], fresh: list[dict[str, str]],
         rng: random.Random, shared: Shared, dataset_id: str | None) -> list[Op]:
    """The requests of one round, shuffled. Cached requests vary tau over a few values, so
    both the rendered-answer cache and the apply-tau-on-read path are exercised."""
    total = args.requests
    ops = [Op("new", "POST", "/detect", _dump(p), _detect_check(None)) for p in fresh]
    n_jobs = n_polls = n_lists = 0
    if args.mix == "full":
        n_jobs = max(1, round(total * args.share_jobs))
        n_polls = 3 * n_jobs
        n_lists = max(1, n_jobs // 2)

        def submitted(status: int, body: bytes) -> str | None:
            if status != 202:
                return _detail(status, body)
            shared.jobs.append(json.loads(body)["id"])
            return None

        def pick() -> str | None:
            open_jobs = [j for j in shared.jobs if j not in shared.done]
            return f"/jobs/{rng.choice(open_jobs or shared.jobs)}" if shared.jobs else None

        def polled(status: int, body: bytes) -> str | None:
            if status != 200:
                return _detail(status, body)
            job = json.loads(body)
            if job["status"] in {"failed", "canceled"}:
                return f"job {job['id']} {job['status']}: {job.get('error')}"
            if job["status"] == "finished":
                shared.done.add(job["id"])
            return None

        def listed(status: int, body: bytes) -> str | None:
            return None if status == 200 else _detail(status, body)

        taus = (0.05, 0.1, 0.2)
        ops += [Op("submit", "POST", "/jobs", _dump({"kind": "detect", "dataset_id": dataset_id,
                                                     "tau": rng.choice(taus)}), submitted)
                for _ in range(n_jobs)]
        ops += [Op("poll", "GET", pick, check=polled) for _ in range(n_polls)]
        ops += [Op("list", "GET", "/jobs?limit=20", check=listed) for _ in range(n_lists)]
    n_cached = max(0, total - len(ops))
    ops += [Op("cached", "POST", "/detect",
               _dump({**rng.choice(hot), "tau": rng.choice((0.05, 0.1, 0.2))}),
               _detect_check(True)) for _ in range(n_cached)]
    rng.shuffle(ops)
    return ops


# ---------------------------------------------------------------------------- running


async def _one(conn: Connection, op: Op, started: float) -> Sample:
    path = op.path() if callable(op.path) else op.path
    waited = 0.0
    while path is None:  # a poll sent before any submission was answered: wait for one
        if waited > 60:
            return Sample(op.kind, 0, 0.0, "nothing to poll")
        await asyncio.sleep(0.01)
        waited += 0.01
        path = op.path()  # type: ignore[operator]
    if waited:
        started = time.perf_counter()
    try:
        status, body = await conn.send(conn.encode(op.method, path, op.body))
    except (HttpError, OSError) as err:
        return Sample(op.kind, 0, time.perf_counter() - started, f"{type(err).__name__} {err}")
    seconds = time.perf_counter() - started
    return Sample(op.kind, status, seconds, op.check(status, body))


async def closed_loop(conns: list[Connection], ops: list[Op], think_ms: float
                      ) -> list[Sample]:
    queue = list(reversed(ops))
    samples: list[Sample] = []

    async def client(conn: Connection) -> None:
        while queue:
            op = queue.pop()
            samples.append(await _one(conn, op, time.perf_counter()))
            if think_ms:  # a person or a script between two requests
                await asyncio.sleep(random.expovariate(1000.0 / think_ms))

    await asyncio.gather(*(client(c) for c in conns))
    return samples


async def open_loop(conns: list[Connection], ops: list[Op], rate: float, seed: int
                    ) -> list[Sample]:
    rng = random.Random(seed)
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    samples: list[Sample] = []

    async def fire(op: Op, due: float) -> None:
        conn = await free.get()
        try:
            samples.append(await _one(conn, op, due))  # latency from the scheduled arrival
        finally:
            free.put_nowait(conn)

    tasks = []
    due = time.perf_counter()
    for op in ops:
        due += rng.expovariate(rate)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(op, due)))
    await asyncio.gather(*tasks)
    return samples


# ---------------------------------------------------------------------------- the server


def server_processes(port: int) -> dict[str, list[Any]]:
    """The processes behind the port, by role: api (the listener and its uvicorn workers),
    worker, redis. Empty when psutil is missing or the server is elsewhere."""
    try:
        import psutil
    except ImportError:
        return {}
    owners = {c.pid for c in psutil.net_connections("tcp")
              if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid}
    if not owners:
        return {}
    root = psutil.Process(min(owners))
    parent = root.parent()
    # uvicorn's worker processes listen too: the supervisor is their common parent.
    if parent is not None and "serve" in " ".join(parent.cmdline()):
        root = parent
    roles: dict[str, list[Any]] = {"api": [root], "worker": [], "redis": []}
    for child in root.children(recursive=True):
        line = " ".join(child.cmdline())
        role = ("redis" if "redis-server" in line else "worker" if " worker" in line else "api")
        roles[role].append(child)
    return roles


def cpu_seconds(procs: Iterable[Any]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except Exception:  # it exited meanwhile
            continue
    return total


def rss_mib(procs: Iterable[Any]) -> float | None:
    values = []
    for proc in procs:
        try:
            values.append(proc.memory_info().rss)
        except Exception:
            continue
    return round(sum(values) / 2**20, 1) if values else None


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------- a run


async def _setup(conn: Connection, args: argparse.Namespace) -> tuple[dict[str, Any],
                                                                      str | None]:
    status, body = await conn.send(conn.encode("GET", "/health"))
    health = json.loads(body)
    if health.get("workers", 0) < 1:
        raise SystemExit(f"the service has no worker: {health}")
    dataset_id = None
    if args.mix == "full":
        rows = prompts(args.dataset_rows, args.seed + 7)
        jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
        status, body = await conn.send(conn.encode("POST", "/datasets?name=load.jsonl", jsonl,
                                                   content_type="application/x-ndjson"))
        if status != 201:
            raise SystemExit(f"dataset upload failed: {_detail(status, body)}")
        dataset_id = json.loads(body)["id"]
    return health, dataset_id


async def _settle(conn: Connection, shared: Shared, timeout: float) -> list[str]:
    """Wait for every submitted job to end; return the problems found (jobs that did not
    finish, or that GET /jobs does not list)."""
    deadline = time.monotonic() + timeout
    problems = []
    for job_id in shared.jobs:
        while True:
            status, body = await conn.send(conn.encode("GET", f"/jobs/{job_id}"))
            job = json.loads(body) if status == 200 else {}
            if job.get("status") in FINAL or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if job.get("status") != "finished":
            problems.append(f"job {job_id}: {job.get('status', status)} {job.get('error')}")
    listed: set[str] = set()
    offset = 0
    while True:
        status, body = await conn.send(conn.encode("GET", f"/jobs?offset={offset}&limit=200"))
        page = json.loads(body)
        listed.update(j["id"] for j in page["jobs"])
        offset += 200
        if offset >= page["total"]:
            break
    problems += [f"job {j} not listed by GET /jobs" for j in shared.jobs if j not in listed]
    return problems


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    control = Connection(host, port, headers)
    health, dataset_id = await _setup(control, args)
    procs = server_processes(port)
    rng = random.Random(args.seed)
    hot = prompts(args.hot, args.seed)
    for body in hot:  # these answers are cached from now on
        status, answer = await control.send(control.encode("POST", "/detect", _dump(body)))
        if status != 200:
            raise SystemExit(f"warm-up failed: {_detail(status, answer)}")
    conns = [Connection(host, port, headers) for _ in range(args.clients)]
    rounds = []
    all_samples: list[Sample] = []
    problems: list[str] = []
    for number in range(args.rounds):
        shared = Shared()
        fresh = prompts(args.hot + round(args.requests * args.share_new) * (number + 1),
                        args.seed)[args.hot + round(args.requests * args.share_new) * number:]
        ops = plan(args, hot, fresh, rng, shared, dataset_id)
        cpu_before = {role: cpu_seconds(p) for role, p in procs.items()}
        client_before = _client_cpu()
        started = time.perf_counter()
        if args.rate:
            samples = await open_loop(conns, ops, args.rate, args.seed + number)
        else:
            samples = await closed_loop(conns, ops, args.think_ms)
        wall = time.perf_counter() - started
        client_cpu = _client_cpu() - client_before
        cpu = {role: cpu_seconds(p) - cpu_before[role] for role, p in procs.items()}
        round_problems = await _settle(control, shared, args.timeout) if shared.jobs else []
        problems += round_problems
        all_samples += samples
        rounds.append({
            "round": number + 1, "requests": len(samples), "seconds": round(wall, 2),
            "throughput_rps": round(len(samples) / wall, 1),
            "errors": sum(s.error is not None for s in samples),
            "jobs_submitted": len(shared.jobs), "job_problems": len(round_problems),
            "cpu_ms_per_request": {
                "client": round(1000 * client_cpu / len(samples), 3),
                **{role: round(1000 * value / len(samples), 3) for role, value in cpu.items()}},
            "worker_rss_mib": rss_mib(procs.get("worker", [])),
            "api_rss_mib": rss_mib(procs.get("api", [])),
        })
    for conn in [control, *conns]:
        conn.close()
    return summarise(all_samples, rounds, problems, args, health)


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summarise(samples: list[Sample], rounds: list[dict[str, Any]], problems: list[str],
              args: argparse.Namespace, health: dict[str, Any]) -> dict[str, Any]:
    kinds = {}
    for kind in ("cached", "new", "submit", "poll", "list"):
        mine = [s for s in samples if s.kind == kind]
        if not mine:
            continue
        ok = [s.seconds for s in mine if s.error is None]
        kinds[kind] = {"requests": len(mine), "ok": len(ok), "p50_ms": _ms(ok, 0.5),
                       "p90_ms": _ms(ok, 0.9), "p99_ms": _ms(ok, 0.99), "max_ms": _ms(ok, 1.0)}
    errors = [s for s in samples if s.error is not None]
    wall = sum(r["seconds"] for r in rounds)
    return {
        "mix": args.mix, "clients": args.clients, "loop": "open" if args.rate else "closed",
        "rate_rps": args.rate or None, "think_ms": args.think_ms, "rounds": rounds,
        "requests": len(samples), "share_new": args.share_new,
        "seconds": round(wall, 2), "throughput_rps": round(len(samples) / wall, 1),
        "errors": len(errors), "error_examples": sorted({f"{s.kind}: {s.error}"
                                                         for s in errors})[:8],
        "job_problems": problems[:8], "jobs_submitted": sum(r["jobs_submitted"] for r in rounds),
        "by_kind": kinds, "workers": health["workers"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "url": args.url,
    }


def markdown(result: dict[str, Any]) -> str:
    loop = (f"open loop at {result['rate_rps']:g} requests/s" if result["loop"] == "open" else
            f"closed loop, think time {result['think_ms']:g} ms")
    lines = [
        f"# Service load: {result['clients']} clients, {result['requests']} requests "
        f"({result['mix']} mix, {loop}), {result['workers']} worker(s)",
        "",
        "| kind | requests | ok | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in result["by_kind"].items():
        lines.append(f"| {kind} | {row['requests']} | {row['ok']} | {row['p50_ms']} | "
                     f"{row['p90_ms']} | {row['p99_ms']} | {row['max_ms']} |")
    lines += ["", "| round | requests | s | requests/s | errors | jobs | CPU ms/request "
                  "(client, api, worker, redis) | worker RSS MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["rounds"]:
        cpu = r["cpu_ms_per_request"]
        split = ", ".join(str(cpu.get(k, "-")) for k in ("client", "api", "worker", "redis"))
        lines.append(f"| {r['round']} | {r['requests']} | {r['seconds']} | "
                     f"{r['throughput_rps']} | {r['errors']} | {r['jobs_submitted']} | {split} | "
                     f"{r['worker_rss_mib']} |")
    lines += ["", f"Throughput {result['throughput_rps']} requests/s; errors: "
                  f"{result['errors']}; jobs submitted {result['jobs_submitted']}, problems: "
                  f"{len(result['job_problems'])}. Machine: {result['machine']}.", ""]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=50, help="concurrent connections")
    p.add_argument("--requests", type=int, default=1000, help="requests per round")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--mix", choices=("detect", "full"), default="detect")
    p.add_argument("--share-new", type=float, default=0.2,
                   help="share of /detect requests with a prompt the cache does not know")
    p.add_argument("--share-jobs", type=float, default=0.02,
                   help="--mix full: share of requests that submit a job (3 polls each)")
    p.add_argument("--dataset-rows", type=int, default=8, help="--mix full: rows per job")
    p.add_argument("--hot", type=int, default=20, help="distinct cached prompts")
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="closed loop: mean pause of each client between requests")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open loop: requests per second (Poisson arrivals)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for submitted jobs to end")
    p.add_argument("--token", default=os.environ.get("LEAF_API_TOKEN"),
                   help="LEAF_API_TOKEN, if the service has one")
    p.add_argument("--seed", type=int, default=None,
                   help="prompt seed (default: from the clock, so 'new' prompts are new)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="service_load", help="result file name, without suffix")
    p.add_argument("--bodies", type=Path, default=None,
                   help="only warm the cache with the cached requests' bodies and write them "
                        "here, one a line, for benchmarks/wrk_detect.lua")
    return p


def cached_bodies(args: argparse.Namespace) -> list[bytes]:
    """The bodies of the plan's cached requests: each hot prompt at each tau."""
    return [_dump({**p, "tau": tau}) for p in prompts(args.hot, args.seed)
            for tau in (0.05, 0.1, 0.2)]


async def warm(args: argparse.Namespace) -> None:
    url = urlsplit(args.url)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    conn = Connection(url.hostname or "127.0.0.1", url.port or 80, headers)
    bodies = cached_bodies(args)
    for body in bodies:
        status, answer = await conn.send(conn.encode("POST", "/detect", body))
        if status != 200:
            raise SystemExit(f"warm-up failed: {_detail(status, answer)}")
    conn.close()
    args.bodies.write_bytes(b"\n".join(bodies) + b"\n")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.seed is None:
        args.seed = int(time.time())
    try:
        import uvloop

        return uvloop.run(run(args))
    except ImportError:
        return asyncio.run(run(args))


def main() -> None:
    args = parser().parse_args()
    if args.bodies is not None:
        args.seed = 1 if args.seed is None else args.seed
        asyncio.run(warm(args))
        return
    result = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    for line in result["error_examples"] + result["job_problems"]:
        print("  ", line)


if __name__ == "__main__":
    main()
