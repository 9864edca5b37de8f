"""Run the benchmarks: ``python -m benchmarks [--quick] [--layer inprocess|e2e|memory|all] [--litellm]``.

Prints a table per layer, a table of the targets, and as the very last line one JSON object: the ratios, the
targets with whether each holds (``ok`` is null for a target whose layer did not run), and ``all_ok``. A full
run also writes everything it measured to ``benchmarks/results/<time>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import table, target

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGE = Path(__file__).resolve().parent.parent / "asgi_llm_guard"
LAYERS = ("inprocess", "e2e", "memory")


def _clean(value: Any) -> Any:
    """JSON-safe and short: floats rounded, NaN as null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _short(note: str | None, limit: int = 400) -> str | None:
    """The first line and the last two lines of a (possibly long) note."""
    if not note:
        return note
    lines = [line.strip() for line in note.splitlines() if line.strip()]
    kept = lines if len(lines) <= 3 else [lines[0], "...", *lines[-2:]]
    return " | ".join(kept)[:limit]


def package_digest() -> str:
    """A short digest of the package's sources, so a result names the code it measured."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    inp = results.get("inprocess")
    e2e = results.get("e2e")
    mem = results.get("memory")
    lite = (e2e or {}).get("litellm")

    def e2e_ratio(name: str) -> float | None:
        scenario = (e2e or {}).get("scenarios", {}).get(name)
        return scenario["median_ratio"] if scenario else None

    def inp_stat(name: str, key: str) -> float | None:
        return inp["scenarios"][name][key] if inp else None

    refusal_e2e = e2e_ratio("refusal")
    return {
        "nonguarded_throughput": target(e2e_ratio("nonguarded"), 0.97, ">=", "e2e"),
        "nonguarded_vs_noop_floor": target(inp_stat("nonguarded", "guard_vs_noop"), 1.2, "<=", "inprocess"),
        "chat_pre_throughput": target(e2e_ratio("chat_pre"), 0.90, ">=", "e2e"),
        "stream100_throughput": target(e2e_ratio("stream100"), 0.95, ">=", "e2e"),
        "stream100_chunk_hook_throughput": target(e2e_ratio("stream100_chunk_hook"), 0.60, ">=", "e2e"),
        # time of a refusal over time of the bare app's normal answer: < 1 means faster
        "refusal_time_vs_bare_inprocess": target(inp_stat("refusal", "guard_vs_bare"), 1.0, "<", "inprocess"),
        "refusal_time_vs_bare_e2e": target(1 / refusal_e2e if refusal_e2e else None, 1.0, "<", "e2e"),
        "moderation_race_added_ms": target(
            max(r["added_ms"] for r in inp["moderation_race"]) if inp else None, 5.0, "<", "inprocess"
        ),
        "stream_memory_growth_mb": target(
            None
            if mem is None
            else (
                mem["stream_rss_growth_mb"]
                if mem["stream_rss_growth_mb"] is not None
                else mem["stream_growth_mb"]
            ),
            5.0,
            "<",
            "memory",
        ),
        "body_at_limit_peak_x": target(
            None
            if mem is None
            else (mem["body_rss_x"] if mem["body_rss_x"] is not None else mem["body_peak_x"]),
            3.0,
            "<",
            "memory",
        ),
        "vs_litellm_throughput_x": target(
            lite["median_ratio"] if lite and lite.get("ok") else None, 50.0, ">=", "e2e --litellm"
        ),
    }


#: The end-to-end targets that have a reference floor: the scenario whose ratio is that target's, and beside it
#: the same load through FloorGuard (``benchmarks/app.py``), the least any guard doing that work can cost.
FLOORS = {
    "chat_pre_throughput": "chat_pre_floor",
    "stream100_throughput": "stream100_floor",
    "stream100_chunk_hook_throughput": "stream100_chunk_hook_floor",
}


def floors(results: dict[str, Any]) -> dict[str, float | None]:
    scenarios = (results.get("e2e") or {}).get("scenarios", {})
    return {
        name: scenarios[scenario]["median_ratio"] if scenario in scenarios else None
        for name, scenario in FLOORS.items()
    }


def summary(results: dict[str, Any], quick: bool, elapsed: float, digest: str) -> dict[str, Any]:
    checks = targets(results)
    measured = [t["ok"] for t in checks.values() if t["ok"] is not None]
    out: dict[str, Any] = {
        "benchmark": "asgi_llm_guard",
        "quick": quick,
        "layers": [layer for layer in LAYERS if layer in results],
        "elapsed_s": round(elapsed, 1),
        "package_digest": digest,
        "package_changed_during_run": package_digest() != digest,
        "all_ok": all(measured) if measured else None,
        "targets": checks,
        "floors": floors(results),
    }
    inp = results.get("inprocess")
    if inp:
        out["inprocess"] = {
            name: {
                "bare_us": s["bare"]["median_us"],
                "noop_us": s["noop"]["median_us"],
                "guard_us": s["guard"]["median_us"],
                "guard_vs_bare": s["guard_vs_bare"],
                "guard_vs_noop": s["guard_vs_noop"],
                **({"floor_us": s["floor"]["median_us"]} if "floor" in s else {}),
                **(
                    {
                        "guard_calls_per_stream": s["guard_calls_per_stream"],
                        "guard_us_per_chunk": s["guard_us_per_chunk"],
                    }
                    if "chunks" in s
                    else {}
                ),
            }
            for name, s in inp["scenarios"].items()
        }
        out["inprocess"]["moderation_race_added_ms"] = [r["added_ms"] for r in inp["moderation_race"]]
    e2e = results.get("e2e")
    if e2e:
        out["e2e"] = {
            name: {
                "ratio": s["median_ratio"],
                "per_round": [r["ratio"] for r in s["rounds"]],
                "bare_p50_ms": s["bare_p50_ms"],
                "guard_p50_ms": s["guard_p50_ms"],
                "bare_p99_ms": s["bare_p99_ms"],
                "guard_p99_ms": s["guard_p99_ms"],
                "bare_wakeups_per_request": s.get("bare_wakeups"),
                "guard_wakeups_per_request": s.get("guard_wakeups"),
            }
            for name, s in e2e["scenarios"].items()
        }
        out["e2e"]["loadgen"] = e2e["loadgen"]
        lite = e2e.get("litellm")
        if lite is not None:
            out["litellm"] = (
                {
                    "guard_vs_litellm": lite["median_ratio"],
                    "litellm_rps": lite["litellm_rps"],
                    "guard_rps": lite["guard_rps"],
                    "version": lite["version"],
                }
                if lite.get("ok")
                else {"measured": False, "note": _short(lite.get("note"))}
            )
    mem = results.get("memory")
    if mem:
        out["memory"] = {
            "stream_growth_mb_traced": mem["stream_growth_mb"],
            "stream_growth_mb_rss": mem["stream_rss_growth_mb"],
            "body_peak_x_traced": mem["body_peak_x"],
            "body_peak_x_rss": mem["body_rss_x"],
        }
    return _clean(out)


def targets_report(checks: dict[str, dict[str, Any]], floor_ratios: dict[str, float | None]) -> str:
    rows = [
        [
            name,
            t["layer"],
            "-" if t["value"] is None else t["value"],
            f"{t['op']} {t['limit']:g}",
            {True: "ok", False: "FAIL", None: "not run"}[t["ok"]],
            "" if floor_ratios.get(name) is None else floor_ratios[name],
        ]
        for name, t in checks.items()
    ]
    return table(
        ["target", "layer", "value", "needs", "result", "FloorGuard (reference)"],
        rows,
        title="Targets (same run). FloorGuard: the same load through the bare-minimum guard, a reference, not a target",
        left=2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few requests per variant")
    parser.add_argument("--layer", choices=(*LAYERS, "all"), default="all")
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="also measure the LiteLLM proxy (installed into benchmarks/.litellm-venv)",
    )
    parser.add_argument("--reps", type=int, help="in-process repetitions per variant (default 15)")
    parser.add_argument("--rounds", type=int, help="end-to-end rounds per side (default 5)")
    parser.add_argument("--seconds", type=float, help="end-to-end seconds per side per round (default 5)")
    parser.add_argument(
        "--python-loadgen", action="store_true", help="use the Python load generator, not wrk"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/<time>.json")
    args = parser.parse_args(argv)

    layers = LAYERS if args.layer == "all" else (args.layer,)
    started = time.monotonic()
    digest = package_digest()
    results: dict[str, Any] = {}
    if "inprocess" in layers:
        from benchmarks import inprocess

        print("running the in-process layer ...", file=sys.stderr, flush=True)
        results["inprocess"] = inprocess.run_layer(args.quick, args.reps)
        print(inprocess.report(results["inprocess"]) + "\n", flush=True)
    if "e2e" in layers:
        from benchmarks import e2e

        print("running the end-to-end layer ...", file=sys.stderr, flush=True)
        results["e2e"] = e2e.run_layer(
            args.quick, args.rounds, args.seconds, args.litellm, args.python_loadgen
        )
        print(e2e.report(results["e2e"]) + "\n", flush=True)
    if "memory" in layers:
        from benchmarks import memory

        print("running the memory layer ...", file=sys.stderr, flush=True)
        results["memory"] = memory.run_layer(args.quick)
        print(memory.report(results["memory"]) + "\n", flush=True)

    elapsed = time.monotonic() - started
    out = summary(results, args.quick, elapsed, digest)
    if out["package_changed_during_run"]:
        print("WARNING: asgi_llm_guard changed while the benchmark ran; layers may have measured "
              "different code", file=sys.stderr, flush=True)
    print(targets_report(out["targets"], out["floors"]) + "\n", flush=True)
    if not args.quick and not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / time.strftime("%Y%m%d-%H%M%S.json")
        path.write_text(json.dumps({"summary": out, "results": _clean(results)}, indent=1))
        print(f"full results: {path}", file=sys.stderr, flush=True)
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
