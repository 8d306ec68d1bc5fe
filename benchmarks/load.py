"""The load real clients send, against serve_config.yaml as shipped, side by side in one run.

Scenarios, in this order, on one running service (default settings, rate limits included):

1. unloaded: one client, one request at a time (the baseline latency);
2. 4 and 8 closed-loop clients (each sends its next request when the last answers), taking
   turns in three rounds each;
3. one organization at 40 requests/minute sending 60 requests 8 at a time, while another sends
   5 requests one after the other;
4. 32 closed-loop clients that retry at once on every refusal, for a minute;
5. open-loop arrivals at 4x the measured capacity for a minute (each arrival sent once: these
   clients honour ``Retry-After`` and so do not come back within the minute);
6. one organization flooding with 32 retrying clients while another sends one request at a time.

Writes its section of docs/benchmarks.md (between the ``load`` markers) with ``--out``.

    .venv/bin/python benchmarks/load.py [--duration-s 60] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import ClusterWatch, arrivals, images, machine, pct, replica_name, write_section  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

MAX_WAIT_S = Settings.model_fields["admission_max_wait_s"].default
REFUSED = (429, 503)
# 4 and 8 closed-loop clients alternate in this many rounds each, their time summed
ROUNDS = 3


@dataclass
class Outcome:
    status: int
    seconds: float
    retry_after: bool
    org: str = ""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0

    def ok(self, org: str | None = None) -> list[float]:
        return [o.seconds for o in self.outcomes if o.status == 200 and (org is None or o.org == org)]

    def refused(self, org: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in REFUSED and (org is None or o.org == org)]

    def statuses(self, org: str | None = None) -> Counter:
        return Counter(o.status for o in self.outcomes if org is None or o.org == org)

    def goodput(self) -> float:
        return len(self.ok()) / self.wall if self.wall else 0.0


class Client:
    """One HTTP client of the service; ``send`` records every answer."""

    def __init__(self, url: str, data: list[tuple[str, bytes]]) -> None:
        self.url = url
        self.bodies = [{"sku": name, "file": base64.b64encode(raw).decode()} for name, raw in data]
        self._next = 0

    def body(self) -> dict:
        self._next += 1
        return self.bodies[self._next % len(self.bodies)]

    async def send(self, http, token: str, run: Run, org: str, body: dict | None = None) -> Outcome:
        import httpx

        t = time.perf_counter()
        try:
            r = await http.post(self.url + "/product/cutout", json=body or self.body(), headers={"api_token": token})
            outcome = Outcome(r.status_code, time.perf_counter() - t, "retry-after" in r.headers, org)
        except httpx.HTTPError:
            outcome = Outcome(0, time.perf_counter() - t, False, org)
        run.outcomes.append(outcome)
        return outcome


def _http(connections: int = 256):
    import httpx

    return httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


async def closed_loop(
    client: Client,
    token: str,
    clients: int,
    duration_s: float,
    org: str = "acme",
    run: Run | None = None,
    retry_at_once: bool = False,
    requests: int | None = None,
) -> Run:
    """``clients`` loops, each sending its next request when the last is answered.

    Args:
        run: Add the answers and the time to this run (several rounds of one load).
        retry_at_once: On a refusal send the same request again at once (ignoring Retry-After).
        requests: Stop after this many answers in all instead of after ``duration_s``.
    """
    run = run or Run()
    stop = time.perf_counter() + duration_s
    sent = 0

    async def loop(http) -> None:
        nonlocal sent
        while time.perf_counter() < stop and (requests is None or sent < requests):
            sent += 1
            body = client.body()
            outcome = await client.send(http, token, run, org, body)
            while retry_at_once and outcome.status in REFUSED and time.perf_counter() < stop:
                outcome = await client.send(http, token, run, org, body)

    async with _http() as http:
        started = time.perf_counter()
        await asyncio.gather(*(loop(http) for _ in range(clients)))
        run.wall += time.perf_counter() - started
    return run


async def sequential(client: Client, token: str, count: int, org: str, run: Run, pause_s: float = 0.0) -> Run:
    async with _http(4) as http:
        for _ in range(count):
            await client.send(http, token, run, org)
            await asyncio.sleep(pause_s)
    return run


async def open_loop(client: Client, token: str, rate: float, duration_s: float) -> Run:
    run = Run()
    async with _http(1000) as http:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client.send(http, token, run, "acme")) async for _ in arrivals(rate, duration_s)]
        await asyncio.gather(*tasks)
        run.wall = time.perf_counter() - started
    return run


async def rate_limited(client: Client, limited: str, polite: str) -> Run:
    """60 requests 8 at a time from an organization at 40/min, and 5 sequential from another."""
    run = Run()
    queue = list(range(60))

    async def worker(http) -> None:
        while queue:
            queue.pop()
            await client.send(http, limited, run, "limited")

    async with _http() as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(8)), sequential(client, polite, 5, "polite", run))
        run.wall = time.perf_counter() - started
    return run


async def flood_and_polite(client: Client, flood: str, polite: str, duration_s: float, polite_requests: int) -> Run:
    run = Run()
    done = asyncio.Event()

    async def polite_loop() -> None:
        await asyncio.sleep(3)  # the flood first fills the queue
        await sequential(client, polite, polite_requests, "polite", run, pause_s=0.2)
        done.set()

    task = asyncio.create_task(polite_loop())
    await closed_loop(client, flood, 32, duration_s, org="flood", run=run, retry_at_once=True)
    await task
    return run


def role_cpu(watch: ClusterWatch) -> dict[str, float]:
    """CPU seconds so far of the HTTP proxy and of each kind of replica."""
    out: dict[str, float] = {}
    for proc in watch.processes():
        try:
            title = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except Exception:
            continue
        role = "proxy" if "ProxyActor" in title else replica_name(title) or "other"
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


async def refusals_only(client: Client, token: str, count: int) -> Run:
    """An organization whose one token a minute is spent: every request is a 429 refusal."""
    run = Run()
    async with _http(8) as http:
        await client.send(http, token, run, "spent")
        queue = list(range(count))

        async def loop() -> None:
            while queue:
                queue.pop()
                await client.send(http, token, run, "spent")
                await asyncio.sleep(0.05)  # within the fast-refusal budget: no pacing

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(4)))
        run.wall = time.perf_counter() - started
    return run


def _ms(values: list[float], q: float) -> float:
    return 1000 * pct(values, q)


def measure(data, duration_s: float) -> dict:
    import httpx

    from pipeline import tokens
    from tests.harness import running_service

    with running_service(as_shipped=True) as svc:
        token_file = svc.data_dir / "tokens.json"
        limited = tokens.create_token(token_file, "limited40", rpm=40)
        polite = tokens.create_token(token_file, "polite")
        client = Client(svc.url, data)
        watch = ClusterWatch(svc.head_pid)
        r: dict = {}
        asyncio.run(closed_loop(client, svc.token, 2, 120, requests=4))  # warm-up
        r["unloaded"] = asyncio.run(closed_loop(client, svc.token, 1, duration_s, requests=20))
        # 4 and 8 clients take turns, ROUNDS each, so that the machine's drift (other tenants)
        # falls on both alike: both keep the pipeline full, and their ratio is the finding
        r["c4"], r["c8"], r["rounds"] = Run(), Run(), {4: [], 8: []}
        for _ in range(ROUNDS):
            for clients in (4, 8):
                run = r[f"c{clients}"]
                ok, wall = len(run.ok()), run.wall
                asyncio.run(closed_loop(client, svc.token, clients, duration_s / ROUNDS, run=run))
                r["rounds"][clients].append((len(run.ok()) - ok) / (run.wall - wall))
        spent = tokens.create_token(token_file, "spent", rpm=1)
        cpu = role_cpu(watch)
        r["refusals"] = asyncio.run(refusals_only(client, spent, 300))
        after = role_cpu(watch)
        r["refusal_cpu"] = {k: after.get(k, 0.0) - cpu.get(k, 0.0) for k in after}
        time.sleep(15)  # the limiter's buckets refill
        r["limited"] = asyncio.run(rate_limited(client, limited, polite))
        time.sleep(15)
        before = watch.replicas()
        cpu, roles = watch.cpu_seconds(), role_cpu(watch)
        watch.start()
        r["storm"] = asyncio.run(closed_loop(client, svc.token, 32, duration_s, retry_at_once=True))
        r["storm_peak"] = watch.stop()
        r["storm_cpu"] = watch.cpu_seconds() - cpu
        after = role_cpu(watch)
        r["storm_roles"] = {k: after.get(k, 0.0) - roles.get(k, 0.0) for k in after}
        time.sleep(20)  # queues drain, memory settles
        r["storm_before"], r["storm_after"] = before, watch.replicas()
        capacity = r["c4"].goodput()
        r["open"] = asyncio.run(open_loop(client, svc.token, 4 * capacity, duration_s))
        time.sleep(20)
        r["flood"] = asyncio.run(flood_and_polite(client, svc.token, polite, duration_s, polite_requests=20))
        time.sleep(10)
        r["healthy_after"] = httpx.get(svc.url + "/healthz", timeout=10).status_code == 200
        r["replicas_after"] = watch.replicas()
    return r


def _roles(cpu: dict[str, float], answers: int) -> str:
    return ", ".join(f"{k} {1000 * v / max(1, answers):.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v > 0)


def _statuses(c: Counter) -> str:
    return ", ".join(f"{n} x {s}" for s, n in sorted(c.items()))


def report(r: dict, duration_s: float) -> str:
    unloaded, c4, c8, limited, storm, open_, flood = (r[k] for k in ("unloaded", "c4", "c8", "limited", "storm", "open", "flood"))
    u50, u99 = _ms(unloaded.ok(), 0.5), _ms(unloaded.ok(), 0.99)
    storm_ok, storm_ref = storm.ok(), storm.refused()
    before, after = r["storm_before"], r["storm_after"]
    memory = max((abs(after.get(k, 0) - v) for k, v in before.items()), default=0) / 2**20
    capacity = c4.goodput()
    polite = flood.ok("polite")
    refused = r["refusals"].refused()
    refusal_cpu = (r["refusal_cpu"].get("proxy", 0.0) + r["refusal_cpu"].get("Ingress", 0.0)) / max(1, len(refused))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()} (Python {platform.python_version()}), "
        f"serve_config.yaml as shipped (rate limit 600/min per organization included), {duration_s:.0f} s per load "
        f"(4 and 8 clients taking turns, {ROUNDS} rounds of {duration_s / ROUNDS:.0f} s each).",
        "",
        "| load | answers | goodput images/s | ratio | p50 / p99 of 200s ms | refusals: p50 / max ms, with Retry-After |",
        "|---|---|---|---|---|---|",
        f"| 1 client (unloaded) | {_statuses(unloaded.statuses())} | {unloaded.goodput():.2f} | | {u50:.0f} / {u99:.0f} | |",
    ]

    def line(name: str, run: Run, base: float | None = None) -> str:
        ref = run.refused()
        refs = (
            f"{_ms([o.seconds for o in ref], 0.5):.0f} / {_ms([o.seconds for o in ref], 1.0):.0f}, {sum(o.retry_after for o in ref)} of {len(ref)}"
            if ref
            else "none"
        )
        ratio = f"{run.goodput() / base:.2f}x of 4 clients" if base else ""
        return (
            f"| {name} | {_statuses(run.statuses())} | {run.goodput():.2f} | {ratio} | "
            f"{_ms(run.ok(), 0.5):.0f} / {_ms(run.ok(), 0.99):.0f} | {refs} |"
        )

    lines += [
        line("4 closed-loop clients", c4),
        line("8 closed-loop clients", c8, capacity),
        line("32 clients retrying at once", storm, capacity),
        line(f"open loop at 4x capacity ({4 * capacity:.1f}/s)", open_, capacity),
        "",
        f"- 4 and 8 clients by round, images/s: {' / '.join(f'{g:.2f}' for g in r['rounds'][4])} and "
        f"{' / '.join(f'{g:.2f}' for g in r['rounds'][8])}.",
        f"- Organization at 40/min, 60 requests 8 at a time: {_statuses(limited.statuses('limited'))}; "
        f"{sum(o.retry_after for o in limited.refused('limited'))} refusals with Retry-After. "
        f"The other organization's 5 sequential requests meanwhile: {_statuses(limited.statuses('polite'))}.",
        f"- 32 clients retrying at once: goodput {storm.goodput():.2f}/s = {storm.goodput() / capacity:.2f}x the 4-client throughput; "
        f"{len(storm_ref)} refusals, slowest {_ms([o.seconds for o in storm_ref], 1.0):.0f} ms, "
        f"{sum(o.retry_after for o in storm_ref)} with Retry-After; admitted p99 {_ms(storm_ok, 0.99):.0f} ms against "
        f"the wait limit + 2x unloaded p99 = {1000 * MAX_WAIT_S + 2 * u99:.0f} ms; CPU {r['storm_cpu'] / max(1, len(storm_ok)):.2f} s per image "
        f"over the whole cluster; replicas {'the same' if sorted(before) == sorted(after) else 'CHANGED'} "
        f"before and after; largest memory change of a replica {memory:.0f} MB.",
        f"- Open loop at 4x: goodput {open_.goodput():.2f}/s = {open_.goodput() / capacity:.2f}x capacity; "
        f"refusals p50 {_ms([o.seconds for o in open_.refused()], 0.5):.0f} ms.",
        f"- One organization flooding with 32 retrying clients, another one request at a time: the polite one got "
        f"{_statuses(flood.statuses('polite'))}, p50 {_ms(polite, 0.5):.0f} ms = {_ms(polite, 0.5) / u50:.2f}x its unloaded p50; "
        f"the flood {_statuses(flood.statuses('flood'))}.",
        f"- Refusal cost: {len(refused)} refusals in a row (429 answered by the ingress from its memory of the "
        f"limiter's refusal, no hop) cost {1000 * refusal_cpu:.1f} CPU-ms each in the HTTP proxy and ingress "
        f"({_roles(r['refusal_cpu'], len(refused))}). During the storm, CPU-ms per answer by process: "
        f"{_roles(r['storm_roles'], len(storm.outcomes))}.",
        f"- Healthy after: {r['healthy_after']}; replicas at the end: {', '.join(sorted(k.split('#')[0] for k in r['replicas_after']))}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = images(args.images)
    text = report(measure(data, args.duration_s), args.duration_s)
    print(text)
    if args.out:
        write_section(args.out, "load", f"## Real clients against the shipped configuration (benchmarks/load.py)\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
