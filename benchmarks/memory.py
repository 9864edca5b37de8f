"""Peak memory of the guard: long streams through a per-chunk hook, and a body at ``max_body_bytes``.

Each case runs in a fresh interpreter (``python -m benchmarks.memory --child …``) so one case's arenas do
not hide another's. In it, after one warm-up request, the case runs twice, driven in process
(``benchmarks.inprocess``):

- RSS: the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the request)
  minus the resident set just before it: what the machine pays, and the figure the targets use.
- tracemalloc: the peak of the bytes Python code asked ``malloc`` for during the request. It over-counts
  large orjson results: orjson reserves a generous buffer and only touches what it writes, so for an 8 MiB
  body ``orjson.loads`` shows ~104 MiB and ``orjson.dumps`` ~127 MiB traced, while RSS grows by 8 MiB each.

Cases: a chat stream of 1,000 and of 100,000 chunks, generated lazily by the bare app, through a guard with a
per-chunk hook (the client discards what it receives); and a JSON body of exactly ``max_body_bytes`` (8 MiB)
arriving in 64 KiB messages as from a socket, through a guard with one pre-call hook, in front of an app that
reads and drops the body, next to the same app without the guard.

Run alone: ``python -m benchmarks.memory [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import app as bench_app
from benchmarks.common import run, table
from benchmarks.inprocess import STREAM, RequestSpec, call

MiB = 1024 * 1024
BODY_LIMIT = 8 * MiB
SOCKET_CHUNK = 64 * 1024
ROOT = Path(__file__).resolve().parent.parent


async def sink_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and drops it, answers its size: the app costs no memory of its own."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"received": %d}' % size})


def body_of_size(size: int) -> bytes:
    """A chat request of exactly ``size`` bytes (the user message padded)."""
    head = b'{"model":"gpt-4o-mini","user":"user-1234","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _case(name: str, chunks: int) -> tuple[Callable[..., Any], RequestSpec, RequestSpec]:
    """(app, warm-up request, measured request)."""
    if name == "stream":
        app = bench_app.make_guarded_stream()
        spec = RequestSpec(STREAM.method, STREAM.path, STREAM.body, query=b"chunks=%d" % chunks)
        return app, RequestSpec(STREAM.method, STREAM.path, STREAM.body, query=b"chunks=10"), spec
    body = body_of_size(BODY_LIMIT)
    warm = RequestSpec(
        "POST", "/v1/chat/completions", body_of_size(SOCKET_CHUNK * 2), chunk_size=SOCKET_CHUNK
    )
    spec = RequestSpec("POST", "/v1/chat/completions", body, chunk_size=SOCKET_CHUNK)
    if name == "body_guarded":
        app = bench_app.LLMHookMiddleware(
            sink_app, hooks=[bench_app.PreCallHook()], max_body_bytes=BODY_LIMIT
        )
    elif name == "body_bare":
        app = sink_app
    else:
        raise ValueError(f"unknown case {name!r}")
    return app, warm, spec


def measure_case(name: str, chunks: int) -> dict[str, Any]:
    """Runs in the child process: one case, RSS then tracemalloc."""
    app, warm, spec = _case(name, chunks)

    async def once(request: RequestSpec) -> int:
        exchange = await call(app, request, request.scope())
        if exchange.status != 200 or not exchange.complete:
            raise RuntimeError(f"{name}: status {exchange.status}")
        return exchange.body_bytes

    async def main() -> dict[str, Any]:
        await once(warm)
        gc.collect()
        rss_before = _rss_kib("VmRSS")
        can_reset = _reset_peak_rss()
        answered = await once(spec)
        rss_peak = _rss_kib("VmHWM")
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        await once(spec)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {
            "case": name,
            "chunks": chunks if name == "stream" else None,
            "body_bytes": len(spec.body) if name != "stream" else None,
            "response_bytes": answered,
            "rss_before_mib": rss_before / 1024,
            "rss_peak_added_mib": (rss_peak - rss_before) / 1024 if can_reset else None,
            "traced_peak_mib": (peak - start) / MiB,
        }

    return run(main)


def _child(name: str, chunks: int = 0) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.memory", "--child", name, "--chunks", str(chunks)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory case {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_layer(quick: bool = False) -> dict[str, Any]:
    small, large = (100, 2_000) if quick else (1_000, 100_000)
    print(
        f"  memory: streams of {small:,} and {large:,} chunks, a {BODY_LIMIT // MiB} MiB body ...",
        file=sys.stderr,
        flush=True,
    )
    streams = [_child("stream", small), _child("stream", large)]
    bodies = [_child("body_bare"), _child("body_guarded")]
    growth = streams[1]["traced_peak_mib"] - streams[0]["traced_peak_mib"]
    rss_growth = None
    if streams[0]["rss_peak_added_mib"] is not None and streams[1]["rss_peak_added_mib"] is not None:
        rss_growth = streams[1]["rss_peak_added_mib"] - streams[0]["rss_peak_added_mib"]
    guarded = bodies[1]
    return {
        "streams": streams,
        "bodies": bodies,
        "stream_growth_mb": growth * MiB / 1e6,
        "stream_rss_growth_mb": rss_growth * MiB / 1e6 if rss_growth is not None else None,
        "body_limit_bytes": BODY_LIMIT,
        "body_peak_x": guarded["traced_peak_mib"] * MiB / BODY_LIMIT,
        "body_rss_x": (
            guarded["rss_peak_added_mib"] * MiB / BODY_LIMIT
            if guarded["rss_peak_added_mib"] is not None
            else None
        ),
    }


def report(result: dict[str, Any]) -> str:
    rows = []
    for s in result["streams"]:
        rows.append(
            [
                f"stream, {s['chunks']:,} chunks, per-chunk hook",
                s["response_bytes"] / MiB,
                s["traced_peak_mib"],
                s["rss_peak_added_mib"],
            ]
        )
    for b in result["bodies"]:
        label = "guard + pre-call hook" if b["case"] == "body_guarded" else "bare (no guard)"
        rows.append(
            [
                f"{b['body_bytes'] / MiB:.0f} MiB body (= max_body_bytes), {label}",
                b["response_bytes"] / MiB,
                b["traced_peak_mib"],
                b["rss_peak_added_mib"],
            ]
        )
    text = table(
        ["case", "sent to client MiB", "tracemalloc peak MiB", "RSS peak added MiB"],
        rows,
        title="Peak memory during one request (fresh process per case; targets use RSS, see memory.py)",
    )
    rss = result["stream_rss_growth_mb"]
    text += (
        f"\nstream growth {result['streams'][0]['chunks']:,} -> {result['streams'][1]['chunks']:,} chunks: "
        f"{result['stream_growth_mb']:.3f} MB traced"
        + (f", {rss:.2f} MB RSS" if rss is not None else "")
        + f"; body at the limit: peak {result['body_peak_x']:.2f}x its size traced"
        + (f", {result['body_rss_x']:.2f}x RSS" if result["body_rss_x"] is not None else "")
    )
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_case(args.child, args.chunks)))
        return 0
    print(report(run_layer(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
