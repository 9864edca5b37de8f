"""What the end-to-end layers share: uvicorn servers of the benchmark apps, the load generator (wrk, or a
bounded Python one), a checked single request, and interleaved rounds of two servers.

Used by ``benchmarks.e2e`` (guarded against bare) and ``benchmarks.litellm_proxy`` (against LiteLLM's proxy).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import app as bench_app
from benchmarks.common import ratio, run

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
AUTH = "Bearer sk-bench-0123456789abcdef"


# -- servers


def cpu_split() -> tuple[str, str] | None:
    """(server CPUs, load generator CPUs) for ``taskset -c``: the last allowed CPU serves, the others load.
    ``None`` (no pinning) with fewer than 2 CPUs or without ``taskset``."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    return str(cpus[-1]), ",".join(str(c) for c in cpus[:-1])


PINNING = cpu_split()


def pinned(argv: Sequence[str], role: str) -> list[str]:
    """``argv`` run on the server CPU (``role="server"``) or the load generator's CPUs (``"load"``)."""
    if PINNING is None:
        return list(argv)
    return ["taskset", "-c", PINNING[0] if role == "server" else PINNING[1], *argv]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """A subprocess serving HTTP on 127.0.0.1:``port``; always terminated by :meth:`stop` (by its own pid)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log_dir: Path,
        *,
        ready_path: str = "/health",
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            pinned(argv, "server"),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        try:
            self._wait_ready(ready_path, ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def uvicorn_server(variant: str, log_dir: Path) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        f"benchmarks.app:{variant}",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return Server(variant, argv, port, log_dir)


# -- load generation


@dataclass(frozen=True)
class Load:
    """One request shape for the load generator."""

    method: str
    path: str
    body: bytes = b""
    auth: str = AUTH

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": self.auth}
        if self.method == "POST":
            headers["Content-Type"] = "application/json"
        return headers

    def lua(self) -> str:
        lines = [f'wrk.method = "{self.method}"']
        if self.body:
            lines.append(f"wrk.body = [==[{self.body.decode()}]==]")
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in self.headers().items()]
        return "\n".join(lines) + "\n"


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors, timeouts and non-2xx answers
    #: Cross-CPU wake-ups of the load generator's CPUs per request (see ``wakeups``); None where not readable.
    wakeups: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "requests": self.requests,
            "errors": self.errors,
            "wakeups_per_request": None if self.wakeups is None else round(self.wakeups, 1),
        }


def wakeups(cpus: str | None) -> int | None:
    """Inter-processor interrupts so far (function-call and rescheduling, Linux ``/proc/interrupts``) received by
    ``cpus``: how often another CPU had to wake or poke them. Counted for the load generator's CPUs around a run,
    per request, it shows how often a server's write found the client's CPU idle and had to wake it. On a VM each
    of those is costly, and a server that is a little slower per streamed chunk lets the client go idle between
    chunks, so the end-to-end ratio falls faster than the CPU per chunk rises."""
    if cpus is None:
        return None
    try:
        lines = Path("/proc/interrupts").read_text().splitlines()
    except OSError:
        return None
    if not lines:
        return None
    columns = {name: index for index, name in enumerate(lines[0].split())}
    wanted = [columns.get(f"CPU{cpu}") for cpu in cpus.split(",")]
    if None in wanted:
        return None
    total = 0
    for line in lines[1:]:
        fields = line.split()
        if fields and fields[0] in ("CAL:", "RES:"):
            total += sum(int(fields[1 + index]) for index in wanted if index is not None)
    return total


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return LoadResult(rps, p50, p99, requests, errors)


class LoadGenerator:
    """wrk when installed, else a bounded Python generator; ``name`` says which."""

    def __init__(self, work_dir: Path, connections: int = 32, force_python: bool = False) -> None:
        self.wrk = None if force_python else shutil.which("wrk")
        if self.wrk:
            self.name = "wrk"
        else:
            self.name = "python (httpx)" if force_python else "python (httpx; wrk not found)"
        self.connections = connections
        self.work_dir = work_dir
        self._scripts: dict[Load, Path] = {}

    def run(self, base_url: str, load: Load, seconds: float) -> LoadResult:
        if not base_url.startswith(f"http://{HOST}:"):
            raise ValueError(f"load goes to {HOST} only, not {base_url}")
        if self.wrk is None:
            return _pinned_here(lambda: run(lambda: _python_load(base_url, load, self.connections, seconds)))
        script = self._scripts.get(load)
        if script is None:
            script = self.work_dir / f"load{len(self._scripts)}.lua"
            script.write_text(load.lua())
            self._scripts[load] = script
        argv = [
            *pinned([], "load"),
            self.wrk,
            "-t1",
            f"-c{self.connections}",
            f"-d{max(int(round(seconds)), 1)}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base_url + load.path,
        ]
        cpus = PINNING[1] if PINNING else None
        before = wakeups(cpus)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        after = wakeups(cpus)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        result = parse_wrk(done.stdout)
        if before is not None and after is not None and result.requests:
            result.wakeups = (after - before) / result.requests
        return result


def _pinned_here(work: Callable[[], LoadResult]) -> LoadResult:
    """Run ``work`` in this process on the load generator's CPUs, then restore the affinity."""
    if PINNING is None:
        return work()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in PINNING[1].split(",")})
    try:
        return work()
    finally:
        os.sched_setaffinity(0, before)


async def _python_load(base_url: str, load: Load, connections: int, seconds: float) -> LoadResult:
    """``connections`` concurrent keep-alive clients for ``seconds`` (and at most 1,000,000 requests)."""
    import asyncio

    latencies: list[float] = []
    errors = 0
    limit = 1_000_000
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) + errors < limit:
                began = time.perf_counter()
                try:
                    response = await client.request(
                        load.method, load.path, content=load.body or None, headers=load.headers()
                    )
                    await response.aread()
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - began) * 1000)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(int(p * len(latencies)), len(latencies) - 1)] if latencies else float("nan")

    return LoadResult(len(latencies) / elapsed, pct(0.50), pct(0.99), len(latencies), errors)



def check_answer(base_url: str, load: Load, kind: str) -> None:
    """One request, checked, so the benchmark never measures broken answers."""
    response = httpx.request(
        load.method, base_url + load.path, content=load.body or None, headers=load.headers(), timeout=10.0
    )
    where = f"{base_url}{load.path}"
    if response.status_code != 200:
        raise RuntimeError(f"{where}: status {response.status_code}: {response.text[:300]}")
    rejected = response.headers.get("x-llm-guard-rejected")
    if kind == "refusal":
        if rejected != "pre_call":
            raise RuntimeError(f"{where}: expected a refusal, got {response.text[:300]}")
    elif rejected is not None:
        raise RuntimeError(f"{where}: unexpected refusal {response.text[:300]}")
    if kind == "stream":
        events = response.content.count(b"\n\n")
        if events != bench_app.DEFAULT_CHUNKS + 1 or not response.content.endswith(bench_app.DONE):
            raise RuntimeError(f"{where}: {events} SSE events, expected {bench_app.DEFAULT_CHUNKS + 1}")
    if kind == "events":  # an Anthropic stream: its events, no [DONE]
        events = response.content.count(b"\n\n")
        if events != bench_app.DEFAULT_CHUNKS or not response.content.endswith(bench_app.ANTHROPIC_END[-1]):
            raise RuntimeError(f"{where}: {events} SSE events, expected {bench_app.DEFAULT_CHUNKS}")


def interleave(
    generator: LoadGenerator,
    left: tuple[str, str],
    right: tuple[str, str],
    load: Load,
    rounds: int,
    seconds: float,
    warmup: float,
    right_load: Load | None = None,
) -> list[dict[str, Any]]:
    """``rounds`` of (left, right) back to back after a warm-up of each; each side is (label, base url).
    ``right_load`` is the right side's request when it differs (another API key)."""
    right_load = right_load or load
    generator.run(left[1], load, warmup)
    generator.run(right[1], right_load, warmup)
    results = []
    for index in range(rounds):
        a = generator.run(left[1], load, seconds)
        b = generator.run(right[1], right_load, seconds)
        results.append(
            {"round": index + 1, left[0]: a.as_dict(), right[0]: b.as_dict(), "ratio": ratio(b.rps, a.rps)}
        )
    return results
