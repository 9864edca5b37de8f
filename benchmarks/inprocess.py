"""Layer 1: the ASGI apps called directly, no sockets, no HTTP client.

Each request is a scripted ``receive``/``send`` pair that behaves like uvicorn's httptools protocol (same
scope keys, ASGI spec 2.3, the body in one message, then ``receive()`` waits until the response is complete
and answers ``http.disconnect``); each request runs in a task of its own, as uvicorn runs it. A repetition
runs N requests of one variant back to back and records the CPU time per request
(``time.process_time_ns``); variants are interleaved across repetitions with the order
rotated, so drift (turbo, caches, a noisy neighbour) hits them alike. Reported: median µs/request, IQR and
min-max over the repetitions, and the ratios against the bare app and against the no-op middleware floor.

Also here: the moderation race (wall clock): how much a moderation hook raced against the app adds over
max(moderation, app).

Run alone: ``python -m benchmarks.inprocess [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks import app as bench_app
from benchmarks.common import loop_name, median, quartiles, ratio, run, table

ASGIApp = Callable[..., Any]
_DISCONNECT = {"type": "http.disconnect"}


@dataclass(frozen=True)
class RequestSpec:
    """One scripted HTTP request: method, path, query, body; headers like a real client's."""

    method: str
    path: str
    body: bytes = b""
    query: bytes = b""
    chunk_size: int = 0  # > 0: the body arrives in messages of this size (as from a socket)

    def scope(self) -> dict[str, Any]:
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"*/*"),
            (b"authorization", b"Bearer sk-bench-0123456789abcdef"),
        ]
        if self.method == "POST":
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(self.body)).encode()))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "root_path": "",
            "headers": headers,
            "method": self.method,
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": self.query,
        }


class Exchange:
    """One request's ``receive`` and ``send``: uvicorn-like, keeping counts rather than the response bytes."""

    __slots__ = ("_messages", "_waiter", "complete", "status", "headers", "body_bytes", "body_messages")

    def __init__(self, messages: Iterator[dict[str, Any]]) -> None:
        self._messages: Iterator[dict[str, Any]] | None = messages
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_bytes = 0
        self.body_messages = 0

    async def receive(self) -> dict[str, Any]:
        messages = self._messages
        if messages is not None:
            message = next(messages, None)
            if message is not None:
                if not message["more_body"]:
                    self._messages = None
                return message
            self._messages = None
        if not self.complete:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return _DISCONNECT

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = message.get("headers", [])
            return
        self.body_bytes += len(message.get("body", b""))
        self.body_messages += 1
        if not message.get("more_body", False):
            self.complete = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


def _body_messages(spec: RequestSpec) -> Iterator[dict[str, Any]]:
    body, size = spec.body, spec.chunk_size
    if size <= 0 or len(body) <= size:
        yield {"type": "http.request", "body": body, "more_body": False}
        return
    view = memoryview(body)
    for start in range(0, len(body), size):
        end = start + size
        yield {"type": "http.request", "body": bytes(view[start:end]), "more_body": end < len(body)}


async def call(app: ASGIApp, spec: RequestSpec, scope: dict[str, Any]) -> Exchange:
    """Send one request through ``app``; ``scope`` is the spec's template, copied per request.

    The app runs in a task of its own, as uvicorn runs each request: the event loop turns between requests,
    so whatever a variant schedules (a watcher task's cancellation, done callbacks) runs, and is paid for,
    inside the request that scheduled it. Awaited in place, back to back, nothing would ever yield to the
    loop and such callbacks would pile up unrun (and be traversed by every garbage collection).
    """
    request_scope = dict(scope)
    request_scope["headers"] = list(scope["headers"])
    request_scope["state"] = {}
    exchange = Exchange(_body_messages(spec))
    await asyncio.get_running_loop().create_task(app(request_scope, exchange.receive, exchange.send))
    return exchange


async def tasks_left_behind() -> int:
    """Tasks still alive besides the caller once the loop has turned a few times (0 for a clean variant)."""
    for _ in range(3):
        await asyncio.sleep(0)
    return len(asyncio.all_tasks()) - 1


# -- scenarios

CHAT = RequestSpec("POST", "/v1/chat/completions", bench_app.body_of(bench_app.CHAT_REQUEST))
STREAM = RequestSpec("POST", "/v1/chat/completions", bench_app.body_of(bench_app.STREAM_REQUEST))
ANTHROPIC_STREAM = RequestSpec("POST", "/v1/messages", bench_app.body_of(bench_app.ANTHROPIC_STREAM_REQUEST))
HEALTH = RequestSpec("GET", "/health")
STREAM2000 = RequestSpec(
    "POST", "/v1/chat/completions", bench_app.body_of({**bench_app.STREAM_REQUEST, "bench_chunks": 2000})
)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    spec: RequestSpec
    guard: str  # the app.VARIANTS name of the guarded variant
    requests: int  # per repetition, full run
    expect_events: int = 0  # SSE events (chunks + [DONE]) the guarded answer must carry
    refusal: bool = False
    floor: str | None = None  # the FloorGuard variant doing the same work, as a reference
    chunks: int = 0  # a stream's chunk count, for the guardrail table (CPU per chunk, guard calls per stream)

    @property
    def labels(self) -> tuple[str, ...]:
        return VARIANT_LABELS + (("floor",) if self.floor else ())


SCENARIOS = (
    Scenario("nonguarded", "GET /health (not guarded)", HEALTH, "guarded_pre", 2000),
    Scenario("chat_pre", "chat JSON, 1 pre-call hook", CHAT, "guarded_pre", 1000, floor="floor"),
    Scenario("chat_pre_post", "chat JSON, pre + post-call success hooks", CHAT, "guarded_pre_post", 1000),
    Scenario(
        "stream100",
        "100-chunk stream, no streaming hook",
        STREAM,
        "guarded_pre",
        100,
        expect_events=101,
        floor="floor",
    ),
    Scenario(
        "stream100_chunk_hook",
        "100-chunk stream, per-chunk hook",
        STREAM,
        "guarded_stream",
        100,
        expect_events=101,
        floor="floor_stream",
    ),
    Scenario(
        "anthropic_stream100_chunk_hook",
        "Anthropic 100-event stream, per-chunk hook",
        ANTHROPIC_STREAM,
        "guarded_stream",
        100,
        expect_events=100,
    ),
    Scenario(
        "refusal",
        "refusal by a pre-call hook vs the bare app's normal answer",
        CHAT,
        "guarded_refuse",
        1000,
        refusal=True,
    ),
    # docs/guardrails.md: the cost of a guardrail, and of the same check as a pre-call hook.
    Scenario("chat_guardrail_pre", "chat JSON, a pre_call guardrail checking each text", CHAT, "guardrail_pre", 1000),
    Scenario("chat_hook_check", "chat JSON, the same check as a pre-call hook", CHAT, "hook_check", 1000),
    # docs/litellm.md: the same guardrail written on LiteLLM's CustomGuardrail, run unchanged.
    Scenario(
        "chat_litellm_guardrail_pre",
        "chat JSON, the same pre_call guardrail on LiteLLM's CustomGuardrail",
        CHAT,
        "litellm_guardrail_pre",
        1000,
    ),
    Scenario(
        "stream100_guardrail_mask",
        "100-chunk stream, a post_call masking guardrail (hold-back window)",
        STREAM,
        "guardrail_mask",
        100,
        chunks=100,
    ),
    Scenario(
        "stream2000_guardrail_mask",
        "2,000-chunk stream, a post_call masking guardrail (hold-back window)",
        STREAM2000,
        "guardrail_mask",
        5,
        chunks=2000,
    ),
)
VARIANT_LABELS = ("bare", "noop", "guard")


@dataclass
class Samples:
    us: dict[str, list[float]] = field(default_factory=dict)


def _check(label: str, scenario: Scenario, exchange: Exchange) -> None:
    """The variant answers what the scenario expects: a benchmark of broken answers measures nothing."""
    where = f"{scenario.name}/{label}"
    if exchange.status != 200 or not exchange.complete:
        raise RuntimeError(f"{where}: status {exchange.status}, complete={exchange.complete}")
    headers = dict(exchange.headers)
    rejected = headers.get(b"x-llm-guard-rejected")
    if scenario.refusal and label == "guard":
        if rejected != b"pre_call":
            raise RuntimeError(f"{where}: expected a refusal, got headers {headers}")
    elif rejected is not None:
        raise RuntimeError(f"{where}: unexpected refusal")
    if scenario.expect_events and exchange.body_messages < 2:
        raise RuntimeError(f"{where}: expected a stream, got {exchange.body_messages} body messages")


async def _stream_events(app: ASGIApp, spec: RequestSpec) -> int:
    """The number of SSE events in one streamed answer (checks chunk count end to end)."""
    events = 0
    scope = spec.scope()
    request_scope = {**scope, "headers": list(scope["headers"]), "state": {}}
    exchange = Exchange(_body_messages(spec))
    original_send = exchange.send

    async def counting_send(message: dict[str, Any]) -> None:
        nonlocal events
        if message["type"] == "http.response.body":
            events += message.get("body", b"").count(b"\n\n")
        await original_send(message)

    await app(request_scope, exchange.receive, counting_send)
    return events


async def _batch(app: ASGIApp, spec: RequestSpec, scope: dict[str, Any], n: int) -> float:
    gc.collect()
    start = time.process_time_ns()
    for _ in range(n):
        await call(app, spec, scope)
    return (time.process_time_ns() - start) / n / 1000


async def measure_scenario(scenario: Scenario, reps: int, n: int) -> Samples:
    apps = {
        "bare": bench_app.build("bare"),
        "noop": bench_app.build("noop"),
        "guard": bench_app.build(scenario.guard),
    }
    if scenario.floor:
        apps["floor"] = bench_app.build(scenario.floor)
    scope = scenario.spec.scope()
    for label, app in apps.items():
        _check(label, scenario, await call(app, scenario.spec, scope))
        if scenario.expect_events and label in ("guard", "floor"):
            events = await _stream_events(app, scenario.spec)
            if events != scenario.expect_events:
                raise RuntimeError(
                    f"{scenario.name}/{label}: {events} SSE events, expected {scenario.expect_events}"
                )
        await _batch(app, scenario.spec, scope, max(n // 4, 1))  # warm-up, discarded
    labels = scenario.labels
    samples = Samples({label: [] for label in labels})
    for rep in range(reps):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:
            samples.us[label].append(await _batch(apps[label], scenario.spec, scope, n))
    left = await tasks_left_behind()
    if left:
        raise RuntimeError(f"{scenario.name}: {left} tasks still alive after the requests ended")
    return samples


# -- the moderation race

RACES = ((20.0, 50.0), (50.0, 20.0), (40.0, 40.0))
QUICK_RACES = ((5.0, 10.0),)


async def _wall_ms(app: ASGIApp, spec: RequestSpec, scope: dict[str, Any]) -> float:
    start = time.perf_counter()
    exchange = await call(app, spec, scope)
    if exchange.status != 200:
        raise RuntimeError(f"moderation race: status {exchange.status}")
    return (time.perf_counter() - start) * 1000


async def measure_races(races: tuple[tuple[float, float], ...], reps: int) -> list[dict[str, Any]]:
    """For each (moderation ms, app ms): the guarded request's wall time over max(moderation, app), next to
    the bare app's own overshoot over its sleep (what asyncio timers cost without any guard)."""
    scope = CHAT.scope()
    results = []
    for moderation_ms, app_ms in races:
        guarded = bench_app.make_moderation(moderation_ms, app_ms)
        bare = bench_app.make_bare(delay_ms=app_ms)
        await _wall_ms(guarded, CHAT, scope)
        await _wall_ms(bare, CHAT, scope)
        guarded_ms: list[float] = []
        bare_ms: list[float] = []
        for _ in range(reps):
            guarded_ms.append(await _wall_ms(guarded, CHAT, scope))
            bare_ms.append(await _wall_ms(bare, CHAT, scope))
        floor = max(moderation_ms, app_ms)
        results.append(
            {
                "moderation_ms": moderation_ms,
                "app_ms": app_ms,
                "guarded_ms": median(guarded_ms),
                "bare_ms": median(bare_ms),
                "added_ms": median(guarded_ms) - floor,
                "bare_overshoot_ms": median(bare_ms) - app_ms,
                "sum_ms": moderation_ms + app_ms,
            }
        )
    return results


# -- the layer


def run_layer(quick: bool = False, reps: int | None = None) -> dict[str, Any]:
    reps = reps or (2 if quick else 15)

    async def main() -> dict[str, Any]:
        scenarios: dict[str, Any] = {}
        for scenario in SCENARIOS:
            n = 5 if quick else scenario.requests
            samples = await measure_scenario(scenario, reps, n)
            stats: dict[str, Any] = {
                "title": scenario.title,
                "guard_variant": scenario.guard,
                "floor_variant": scenario.floor,
                "requests": n,
                "reps": reps,
            }
            for label in scenario.labels:
                values = samples.us[label]
                q1, q3 = quartiles(values)
                stats[label] = {
                    "median_us": median(values),
                    "q1_us": q1,
                    "q3_us": q3,
                    "min_us": min(values),
                    "max_us": max(values),
                }
            bare, noop, guard = (stats[label]["median_us"] for label in VARIANT_LABELS)
            stats["guard_vs_bare"] = ratio(guard, bare)
            stats["guard_vs_noop"] = ratio(guard, noop)
            stats["noop_vs_bare"] = ratio(noop, bare)
            stats["guard_added_us"] = guard - bare
            stats["noop_added_us"] = noop - bare
            if scenario.chunks:
                stats["chunks"] = scenario.chunks
                stats["guard_us_per_chunk"] = guard / scenario.chunks
                stats["guard_added_us_per_chunk"] = (guard - bare) / scenario.chunks
                stats["guard_calls_per_stream"] = await _guard_calls(scenario)
            scenarios[scenario.name] = stats
        races = await measure_races(QUICK_RACES if quick else RACES, 2 if quick else 15)
        return {"loop": loop_name(), "scenarios": scenarios, "moderation_race": races}

    return run(main)


async def _guard_calls(scenario: Scenario) -> int:
    """How many times the masking guardrail is called on one stream of the scenario."""
    app = bench_app.build(scenario.guard)
    before = bench_app.MaskGuardrail.calls
    await call(app, scenario.spec, scenario.spec.scope())
    return bench_app.MaskGuardrail.calls - before


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, stats in result["scenarios"].items():
        for label in (*VARIANT_LABELS, "floor"):
            if label not in stats:
                continue
            s = stats[label]
            rows.append(
                [
                    name if label == "bare" else "",
                    {
                        "guard": f"guard ({stats['guard_variant']})",
                        "floor": f"FloorGuard ({stats.get('floor_variant')}, reference)",
                    }.get(label, label),
                    s["median_us"],
                    f"{s['q1_us']:.1f}-{s['q3_us']:.1f}",
                    f"{s['min_us']:.1f}-{s['max_us']:.1f}",
                    ratio(s["median_us"], stats["bare"]["median_us"]),
                    ratio(s["median_us"], stats["noop"]["median_us"]),
                    ratio(stats["bare"]["median_us"], s["median_us"]),
                ]
            )
    first = next(iter(result["scenarios"].values()))
    text = table(
        ["scenario", "variant", "us/req", "IQR", "min-max", "x bare", "x noop", "tput vs bare"],
        rows,
        left=2,
        title=(
            f"In-process CPU per request ({result['loop']}; {first['reps']} interleaved reps, "
            "N requests each; 'tput vs bare' = bare us / variant us)"
        ),
    )
    stream_rows = [
        [name, stats["chunks"], stats["guard_calls_per_stream"], stats["guard_us_per_chunk"],
         stats["guard_added_us_per_chunk"]]
        for name, stats in result["scenarios"].items()
        if "chunks" in stats
    ]
    if stream_rows:
        text += "\n\n" + table(
            ["scenario", "chunks", "guard calls/stream", "guard us/chunk", "added us/chunk"],
            stream_rows,
            title="Guardrail streams: calls per stream and CPU per chunk (added = guarded - bare)",
        )
    race_rows = [
        [
            f"{r['moderation_ms']:.0f} / {r['app_ms']:.0f}",
            r["guarded_ms"],
            r["bare_ms"],
            r["added_ms"],
            r["bare_overshoot_ms"],
            r["sum_ms"],
        ]
        for r in result["moderation_race"]
    ]
    text += "\n\n" + table(
        [
            "moderation / app ms",
            "guarded ms",
            "bare app ms",
            "added over max",
            "bare overshoot",
            "sequential",
        ],
        race_rows,
        title="Moderation race (wall clock, median): added = guarded - max(moderation, app)",
    )
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int)
    args = parser.parse_args()
    print(report(run_layer(args.quick, args.reps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
