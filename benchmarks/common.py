"""Small helpers shared by the benchmark layers: statistics, tables, the event loop, targets."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """(Q1, Q3) by the inclusive method; both the value itself for a single sample."""
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (what the servers run on), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the venv
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return "asyncio"
    return "uvloop"


def run(coroutine_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = new_loop()
    try:
        return loop.run_until_complete(coroutine_factory())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "", left: int = 1) -> str:
    """A plain fixed-width table; floats get 1 decimal (3 below 10); the first ``left`` columns flush left."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return "-" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        padded = (
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join(padded))
    return "\n".join(lines)


def target(value: float | None, limit: float, op: str, where: str) -> dict[str, Any]:
    """One target: ``value op limit`` (``>=``, ``<=`` or ``<``); ``ok`` is None when it was not measured."""
    if value is None or value != value:
        return {"value": None, "limit": limit, "op": op, "ok": None, "layer": where}
    ok = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
    return {"value": round(value, 4), "limit": limit, "op": op, "ok": bool(ok), "layer": where}
