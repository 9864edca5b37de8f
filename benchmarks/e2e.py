"""Layer 2: end to end, uvicorn on 127.0.0.1 and a real load generator.

Each variant runs in its own uvicorn (``--loop uvloop --http httptools --workers 1 --no-access-log``) on a
free loopback port; all of them are started once and stay up, idle servers cost nothing. For each scenario the
load generator hits bare, guarded, bare, guarded, … (``rounds`` of each, after a short warm-up of both), and
the ratio guarded/bare requests per second is taken per round; the scenario's figure is the median of those
ratios.

With 2 or more CPUs and ``taskset``, the servers run on the last CPU and the load generator on the others,
so they never compete for one core. The load generator is ``wrk`` (``-t1 -c32 --latency`` with a Lua script
for POST bodies; ``benchmarks/setup.sh`` installs it from Debian). Without it a bounded Python generator
(httpx + asyncio, same connection count) is used and the table says so. Every server is terminated on the way
out, whatever happens; traffic goes to 127.0.0.1 only.

Run alone: ``python -m benchmarks.e2e [--quick] [--litellm]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import app as bench_app
from benchmarks.common import median, table
from benchmarks.load import PINNING, Load, LoadGenerator, Server, check_answer, interleave, uvicorn_server

# -- scenarios

CHAT = Load("POST", "/v1/chat/completions", bench_app.body_of(bench_app.CHAT_REQUEST))
STREAM = Load("POST", "/v1/chat/completions", bench_app.body_of(bench_app.STREAM_REQUEST))
ANTHROPIC_STREAM = Load("POST", "/v1/messages", bench_app.body_of(bench_app.ANTHROPIC_STREAM_REQUEST))
HEALTH = Load("GET", "/health")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    load: Load
    guard: str
    check: str = "json"  # what one answer of the guarded server must look like: json, stream, events, refusal


SCENARIOS = (
    Scenario("nonguarded", "GET /health (not guarded)", HEALTH, "guarded_pre"),
    Scenario("chat_pre", "chat JSON, 1 pre-call hook", CHAT, "guarded_pre"),
    Scenario("chat_pre_floor", "chat JSON, reference: the bare-minimum guard (FloorGuard)", CHAT, "floor"),
    Scenario("stream100", "100-chunk stream, no streaming hook", STREAM, "guarded_pre", "stream"),
    Scenario("stream100_floor", "100-chunk stream, reference: FloorGuard", STREAM, "floor", "stream"),
    Scenario("stream100_chunk_hook", "100-chunk stream, per-chunk hook", STREAM, "guarded_stream", "stream"),
    Scenario(
        "stream100_chunk_hook_floor",
        "100-chunk stream, reference: FloorGuard with the per-chunk hook",
        STREAM,
        "floor_stream",
        "stream",
    ),
    Scenario(
        "anthropic_stream100_chunk_hook",
        "Anthropic 100-event stream, per-chunk hook",
        ANTHROPIC_STREAM,
        "guarded_stream",
        "events",
    ),
    Scenario("refusal", "guard's refusal vs bare app's normal answer", CHAT, "guarded_refuse", "refusal"),
)


def run_layer(
    quick: bool = False,
    rounds: int | None = None,
    seconds: float | None = None,
    litellm: bool = False,
    force_python: bool = False,
    scenarios: Sequence[str] | None = None,
) -> dict[str, Any]:
    rounds = rounds or (1 if quick else 5)
    seconds = seconds or (1.0 if quick else 5.0)
    warmup = 1.0
    chosen = [s for s in SCENARIOS if scenarios is None or s.name in scenarios]
    result: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        generator = LoadGenerator(work, force_python=force_python)
        result["loadgen"] = generator.name
        result["pinning"] = (
            f"servers on CPU {PINNING[0]}, load generator on CPU {PINNING[1]}" if PINNING else "none"
        )
        result["connections"] = generator.connections
        servers: dict[str, Server] = {}

        def server(variant: str) -> Server:
            if variant not in servers:
                servers[variant] = uvicorn_server(variant, work)
                stack.callback(servers[variant].stop)
            return servers[variant]

        for scenario in chosen:
            bare, guard = server("bare"), server(scenario.guard)
            check_answer(bare.url, scenario.load, scenario.check if scenario.check in ("stream", "events") else "json")
            check_answer(guard.url, scenario.load, scenario.check)
            print(
                f"  e2e {scenario.name}: {rounds} rounds x {seconds:.0f}s each side ...",
                file=sys.stderr,
                flush=True,
            )
            per_round = interleave(
                generator, ("bare", bare.url), ("guard", guard.url), scenario.load, rounds, seconds, warmup
            )
            result["scenarios"][scenario.name] = {
                "title": scenario.title,
                "guard_variant": scenario.guard,
                "rounds": per_round,
                "median_ratio": median([r["ratio"] for r in per_round]),
                "bare_p50_ms": median([r["bare"]["p50_ms"] for r in per_round]),
                "guard_p50_ms": median([r["guard"]["p50_ms"] for r in per_round]),
                "bare_p99_ms": median([r["bare"]["p99_ms"] for r in per_round]),
                "guard_p99_ms": median([r["guard"]["p99_ms"] for r in per_round]),
                "errors": sum(r["bare"]["errors"] + r["guard"]["errors"] for r in per_round),
                "bare_wakeups": _median_or_none([r["bare"]["wakeups_per_request"] for r in per_round]),
                "guard_wakeups": _median_or_none([r["guard"]["wakeups_per_request"] for r in per_round]),
            }
        if litellm:
            from benchmarks import litellm_proxy

            guard = server("guarded_pre")
            result["litellm"] = litellm_proxy.compare(
                generator, server("bare"), guard, CHAT, rounds, seconds, work, stack
            )
    return result


def _median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return median(known) if known else None


def _wakeup_pair(bare: float | None, guard: float | None) -> str:
    return "-" if bare is None or guard is None else f"{bare:.0f} -> {guard:.0f}"


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, s in result["scenarios"].items():
        for r in s["rounds"]:
            rows.append(
                [
                    name if r["round"] == 1 else "",
                    r["round"],
                    r["bare"]["rps"],
                    r["guard"]["rps"],
                    r["ratio"],
                    r["bare"]["p50_ms"],
                    r["guard"]["p50_ms"],
                    r["bare"]["p99_ms"],
                    r["guard"]["p99_ms"],
                    r["bare"]["errors"] + r["guard"]["errors"],
                    _wakeup_pair(r["bare"].get("wakeups_per_request"), r["guard"].get("wakeups_per_request")),
                ]
            )
        rows.append(
            [
                "",
                "median",
                "",
                "",
                s["median_ratio"],
                s["bare_p50_ms"],
                s["guard_p50_ms"],
                s["bare_p99_ms"],
                s["guard_p99_ms"],
                s["errors"],
                _wakeup_pair(s.get("bare_wakeups"), s.get("guard_wakeups")),
            ]
        )
    text = table(
        [
            "scenario",
            "round",
            "bare rps",
            "guard rps",
            "ratio",
            "bare p50 ms",
            "guard p50",
            "bare p99 ms",
            "guard p99",
            "errors",
            "wakeups/req",
        ],
        rows,
        left=1,
        title=(
            f"End to end: uvicorn (uvloop, httptools, 1 worker) on 127.0.0.1, load by {result['loadgen']} "
            f"(-c{result['connections']}, {result['seconds']:.0f}s per side per round; {result['pinning']}); "
            "ratio = guard/bare rps; wakeups/req = inter-processor interrupts the load generator's CPU got per "
            "request, bare -> guard"
        ),
    )
    lite = result.get("litellm")
    if lite:
        from benchmarks import litellm_proxy

        text += "\n\n" + litellm_proxy.report(lite)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--litellm", action="store_true")
    parser.add_argument(
        "--python-loadgen", action="store_true", help="use the Python load generator, not wrk"
    )
    parser.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    args = parser.parse_args()
    result = run_layer(
        args.quick, args.rounds, args.seconds, args.litellm, args.python_loadgen, args.scenario
    )
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
