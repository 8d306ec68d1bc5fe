"""The CPU each process of the running service costs: at idle, and per request.

The embedded default as `make serve` runs it (a Ray head of its own with its dashboard and
metrics agent, the Serve controller, the HTTP proxy, one replica per stage, the `serve run`
driver), started twice side by side: as it was before, and with what `make serve` now switches
off or slows down. For each process: its share of a core over an idle minute, and its CPU
milliseconds per request over closed-loop requests (one client, then four).

    .venv/bin/python benchmarks/processes.py [--idle-s 60] [--requests 40] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import images, machine, replica_name, write_section  # noqa: E402
from benchmarks.load import Client, closed_loop, refusals_only  # noqa: E402
from pipeline import tokens  # noqa: E402
from tests.harness import ray_env, running_service  # noqa: E402

# Ray Serve's own knobs that `make serve` sets in serve.env; "before" is Ray's defaults for them.
BEFORE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "100",
    "RAY_SERVE_LOG_TO_STDERR": "1",
}
SERVE_ENV_KNOBS = tuple(BEFORE_ENV)
VARIANTS = {
    # Ray's defaults for the knobs above, and the dashboard on (as `ray start --head` has it)
    "before": {"env": BEFORE_ENV, "dashboard": True},
    # serve.env as shipped, and the dashboard off (`make serve DASHBOARD=1` turns it back on)
    "now": {"env": {}, "dashboard": False},
}


def role_of(cmdline: str) -> str:
    """A readable name for one process of the Ray head."""
    replica = replica_name(cmdline)
    if replica:
        return f"replica: {replica}"
    for needle, role in (
        ("gcs_server", "GCS server"),
        ("raylet", "raylet"),
        ("dashboard/agent.py", "dashboard agent (metrics export)"),
        ("runtime_env/agent", "runtime-env agent"),
        ("dashboard/dashboard.py", "dashboard"),
        ("log_monitor.py", "log monitor"),
        ("monitor.py", "autoscaler monitor"),
        ("ServeController", "Serve controller"),
        ("ProxyActor", "Serve HTTP proxy"),
        ("ray::IDLE", "idle workers"),
        (" run ", "serve run (driver)"),
        ("ray start", "ray start"),
    ):
        if needle in cmdline:
            return role
    return "other"


def snapshot(svc) -> dict[str, float]:
    """CPU seconds so far per role, over the head's process tree and the `serve run` driver."""
    out: dict[str, float] = {}
    procs = []
    try:
        root = psutil.Process(svc.head_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if " run " in line and str(svc.data_dir) in line:
            procs.append(p)
    for p in procs:
        try:
            line = " ".join(p.cmdline())
            t = p.cpu_times()
        except psutil.Error:
            continue
        role = role_of(line)
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}


def measure(name: str, idle_s: float, requests: int, data) -> dict:
    variant = VARIANTS[name]
    with running_service(as_shipped=True, env_extra=variant["env"], dashboard=variant["dashboard"]) as svc:
        client = Client(svc.url, data)
        spent = tokens.create_token(svc.data_dir / "tokens.json", "spent", rpm=1)
        asyncio.run(closed_loop(client, svc.token, 2, 120, requests=6))  # warm
        time.sleep(5)
        t0, c0 = time.perf_counter(), snapshot(svc)
        time.sleep(idle_s)
        t1, c1 = time.perf_counter(), snapshot(svc)
        one = asyncio.run(closed_loop(client, svc.token, 1, 600, requests=requests))
        c2 = snapshot(svc)
        four = asyncio.run(closed_loop(client, svc.token, 4, 600, requests=requests))
        c3 = snapshot(svc)
        refused = asyncio.run(refusals_only(client, spent, requests * 5))
        c4 = snapshot(svc)
    ok1 = sum(o.status == 200 for o in one.outcomes)
    ok4 = sum(o.status == 200 for o in four.outcomes)
    nref = sum(o.status == 429 for o in refused.outcomes)
    return {
        "idle": {k: v / (t1 - t0) for k, v in delta(c1, c0).items()},
        "one": {k: 1000 * v / max(ok1, 1) for k, v in delta(c2, c1).items()},
        "four": {k: 1000 * v / max(ok4, 1) for k, v in delta(c3, c2).items()},
        "refusal": {k: 1000 * v / max(nref, 1) for k, v in delta(c4, c3).items()},
        "ok": (ok1, ok4, nref),
        "rate4": ok4 / four.wall,
        "p50_1": sorted(one.ok())[len(one.ok()) // 2] * 1000 if one.ok() else 0.0,
    }


def average(runs: list[dict]) -> dict:
    out: dict = {}
    for key in ("idle", "one", "four", "refusal"):
        roles = set().union(*(r[key] for r in runs))
        out[key] = {role: sum(r[key].get(role, 0.0) for r in runs) / len(runs) for role in roles}
    out["rate4"] = sum(r["rate4"] for r in runs) / len(runs)
    out["p50_1"] = sum(r["p50_1"] for r in runs) / len(runs)
    return out


def report(results: dict[str, dict], idle_s: float, requests: int, rounds: int) -> str:
    before, now = results["before"], results["now"]
    roles = sorted(set(before["idle"]) | set(now["idle"]) | set(before["four"]) | set(now["four"]))
    roles.sort(key=lambda r: -(before["four"].get(r, 0.0) + 100 * before["idle"].get(r, 0.0)))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}; "
        f"`benchmarks/processes.py`, {rounds} rounds of each configuration interleaved, averaged. "
        f"Idle: {idle_s:.0f} s with nothing sent (after warm-up). Per request: {requests} requests "
        "from one client, then from four (a GrabCut photo each, by base64), then 5x as many refusals "
        "(429 from an organization whose limit is spent). CPU of every process of the Ray head and "
        "of the `serve run` driver. *before*: Ray's defaults (`ray start --head` with its "
        "dashboard, Serve's user code on a thread of its own, cached metrics "
        "handed to Ray every 100 ms, every log record copied to stderr and streamed to the driver); *now*: `make serve` as shipped "
        "(serve.env, no dashboard).",
        "",
        "| process | idle, % of a core: before | now | CPU-ms per image, 4 clients: before | now | per refusal: before | now |",
        "|---|---|---|---|---|---|---|",
    ]
    for role in roles:
        cells = [
            f"{100 * before['idle'].get(role, 0.0):.2f}",
            f"{100 * now['idle'].get(role, 0.0):.2f}",
            f"{before['four'].get(role, 0.0):.1f}",
            f"{now['four'].get(role, 0.0):.1f}",
            f"{before['refusal'].get(role, 0.0):.2f}",
            f"{now['refusal'].get(role, 0.0):.2f}",
        ]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")

    def tot(r: dict, key: str) -> float:
        return sum(r[key].values())

    lines.append(
        f"| **all** | **{100 * tot(before, 'idle'):.1f}** | **{100 * tot(now, 'idle'):.1f}** | "
        f"**{tot(before, 'four'):.0f}** | **{tot(now, 'four'):.0f}** | "
        f"**{tot(before, 'refusal'):.2f}** | **{tot(now, 'refusal'):.2f}** |"
    )
    model = before["four"].get("replica: Segmenter", 0.0), now["four"].get("replica: Segmenter", 0.0)
    lines += [
        "",
        f"- Everything but the segmenter, per image at 4 clients: {tot(before, 'four') - model[0]:.0f} CPU-ms "
        f"before, {tot(now, 'four') - model[1]:.0f} now.",
        f"- One client per image: {tot(before, 'one'):.0f} CPU-ms before, {tot(now, 'one'):.0f} now; "
        f"p50 {before['p50_1']:.0f} ms before, {now['p50_1']:.0f} ms now.",
        f"- 4 clients: {before['rate4']:.2f} images/s before, {now['rate4']:.2f} now "
        f"({now['rate4'] / max(before['rate4'], 1e-9):.2f}x).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-s", type=float, default=60)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    missing = [k for k in SERVE_ENV_KNOBS if k not in ray_env()]
    if missing:
        raise SystemExit(f"serve.env does not set {missing}: nothing to compare")
    data = images(8)
    runs: dict[str, list[dict]] = {"before": [], "now": []}
    for _ in range(args.rounds):
        for name in ("before", "now"):
            runs[name].append(measure(name, args.idle_s, args.requests, data))
            print(name, runs[name][-1]["ok"], f"{runs[name][-1]['rate4']:.2f}/s", flush=True)
    text = report({k: average(v) for k, v in runs.items()}, args.idle_s, args.requests, args.rounds)
    print(text)
    if args.out:
        write_section(args.out, "processes", f"## The CPU of every process of the service (benchmarks/processes.py)\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
