"""ParallelRequestLimiter across replicas: two uvicorn processes (tests/replica_app.py) sharing one real Redis.

A limit of 5 parallel requests per key holds across both processes, the Redis counter is back to 0 after the
requests end (also when the clients leave midway), and while Redis is down the cache's ``redis_failure`` mode is
what happens, quickly: 503 (``"closed"``) or per-process limiting (``"local"``)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import redis.asyncio as redis_asyncio

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
MAX_PARALLEL = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """One ``uvicorn tests.replica_app:app`` process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log: IO[bytes] = tempfile.TemporaryFile()
        command = [
            sys.executable, "-m", "uvicorn", "tests.replica_app:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--timeout-graceful-shutdown", "1",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"replica exited with {self.process.returncode}:\n{self.output()}")
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica did not answer within {timeout}s:\n{self.output()}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@asynccontextmanager
async def replicas(redis_url: str, namespace: str, count: int = 2, **env: str) -> AsyncIterator[list[Replica]]:
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "LLM_GUARD_NAMESPACE": namespace,
        "MAX_PARALLEL": str(MAX_PARALLEL),
        "DOWNSTREAM_DELAY": "1.0",
        **env,
    }
    started: list[Replica] = []
    try:
        for _ in range(count):
            started.append(Replica(environment))
        await asyncio.gather(*(replica.wait_ready() for replica in started))
        yield started
    finally:
        for replica in started:
            replica.stop()


@asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[Any]:
    # Wide timeouts: redis-py 8 gives up connecting after 5 s by default, which a loaded machine (a 1000-request
    # burst on the same cores) overran, failing a test whose replicas were fine.
    client = redis_asyncio.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=30)
    try:
        yield client
    finally:
        await client.aclose()


async def parallel_count(raw: Any, namespace: str) -> int:
    """The sum of the limiter's parallel counters in Redis (one per slot window)."""
    keys = [key async for key in raw.scan_iter(match=f"{namespace}limiter:key:*:parallel:*")]
    values = await raw.mget(keys) if keys else []
    return sum(int(value) for value in values if value is not None)


def _ns() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


def chat(stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def wait_for_count(raw: Any, namespace: str, expected: int, timeout: float = 30.0) -> int:
    """The counters' sum once it is ``expected`` (polled), or as it stands after ``timeout`` seconds: a wide
    deadline, so that a loaded machine only makes a passing test slower."""
    deadline = time.monotonic() + timeout
    while True:
        count = await parallel_count(raw, namespace)
        if count == expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


async def test_five_parallel_requests_across_two_replicas_and_counters_back_to_zero(redis_url: str) -> None:
    namespace, key = _ns(), f"sk-{uuid.uuid4().hex}"
    async with replicas(redis_url, namespace) as (one, two), raw_redis(redis_url) as raw:
        async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {key}"}) as http:
            # one request per replica first, so both have their Redis connection before the burst
            warm = [
                http.post(f"{r.url}/v1/chat/completions", json=chat(), headers={"x-delay": "0"}) for r in (one, two)
            ]
            assert [r.status_code for r in await asyncio.gather(*warm)] == [200, 200]

            started = time.monotonic()
            urls = [(one, two)[i % 2].url for i in range(20)]
            tasks = [asyncio.ensure_future(http.post(f"{url}/v1/chat/completions", json=chat())) for url in urls]
            while sum(task.done() for task in tasks) < 15 and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
            in_flight = await parallel_count(raw, namespace)
            still_running = sum(not task.done() for task in tasks)
            responses = await asyncio.gather(*tasks)

        statuses = [response.status_code for response in responses]
        assert sorted(statuses) == [200] * 5 + [429] * 15
        assert (still_running, in_flight) == (5, 5)
        for response in responses:
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["type"] == "rate_limit_error"
        served_by = {response.json()["pid"] for response in responses if response.status_code == 200}
        assert served_by <= {one.process.pid, two.process.pid}
        assert await wait_for_count(raw, namespace, 0) == 0


async def test_one_replica_holds_1000_parallel_requests_without_a_503(redis_url: str) -> None:
    # Regression: redis-py's asyncio pool (100 connections) raised MaxConnectionsError when a burst needed more,
    # the cache took it for "Redis unreachable", and the burst got 503s. Now the calls beyond the pool wait for
    # a connection: every request takes its slot, the counter is exact while they run and 0 once they end.
    namespace, key, burst = _ns(), f"sk-{uuid.uuid4().hex}", 1_000
    async with replicas(redis_url, namespace, count=1, MAX_PARALLEL=str(burst)) as (one,), raw_redis(redis_url) as raw:
        limits = httpx.Limits(max_connections=burst + 10, max_keepalive_connections=burst + 10)
        async with httpx.AsyncClient(timeout=90.0, limits=limits, headers={"Authorization": f"Bearer {key}"}) as http:
            url = f"{one.url}/v1/chat/completions"
            tasks = [asyncio.ensure_future(http.post(url, json=chat(), headers={"x-gate": "1"})) for _ in range(burst)]
            # the gated requests cannot finish before the gate opens: one that did was refused (the deadline is
            # wide for a loaded machine, and below the 60 s a gated request waits at most)
            deadline = time.monotonic() + 45
            held = 0
            while time.monotonic() < deadline and not any(task.done() for task in tasks):
                held = await parallel_count(raw, namespace)
                if held == burst:
                    break
                await asyncio.sleep(0.05)
            assert (await http.post(f"{one.url}/open-gate")).status_code == 200
            responses = await asyncio.gather(*tasks)
        statuses = [response.status_code for response in responses]
        assert {status: statuses.count(status) for status in statuses} == {200: burst}
        assert held == burst
        assert await wait_for_count(raw, namespace, 0) == 0


async def test_counters_back_to_zero_when_clients_leave_midway(redis_url: str) -> None:
    # The clients leave once the limiter's state is settled (5 slots held, 15 refused), not after a fixed read
    # timeout: on a loaded machine a 429 could take longer than such a timeout, and a client that gave up before
    # its request took a slot made the counts differ from run to run (the flake this test had). Each wait has a
    # wide deadline that is still far below the model's 60 s, so "released when the client left" stays proven.
    namespace, key = _ns(), f"sk-{uuid.uuid4().hex}"
    async with replicas(redis_url, namespace, DOWNSTREAM_DELAY="60") as (one, two), raw_redis(redis_url) as raw:
        headers = {"Authorization": f"Bearer {key}"}
        urls = [(one, two)[i % 2].url for i in range(20)]

        # non-streaming requests whose clients give up while the model is still working
        async with httpx.AsyncClient(timeout=60.0, headers=headers) as http:
            tasks = [asyncio.ensure_future(http.post(f"{url}/v1/chat/completions", json=chat())) for url in urls]
            deadline = time.monotonic() + 30
            while sum(task.done() for task in tasks) < 15 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            refused = [task.result().status_code for task in tasks if task.done()]
            assert refused == [429] * 15
            assert await wait_for_count(raw, namespace, 5) == 5
            for task in tasks:
                task.cancel()  # the client closes its connection mid-request
            await asyncio.gather(*tasks, return_exceptions=True)
        left = time.monotonic()
        assert await wait_for_count(raw, namespace, 0) == 0
        assert time.monotonic() - left < 30  # released when the client left, not when the 60 s model would end

        # streaming requests closed after their first chunk, once every request has its answer's status (a
        # stream closed earlier frees its slot, and a request slowed by the load could then take it)
        async with httpx.AsyncClient(timeout=60.0, headers=headers) as http:
            answered: list[int] = []
            all_answered = asyncio.Event()

            async def read_one_chunk(url: str) -> int:
                async with http.stream("POST", f"{url}/v1/chat/completions", json=chat(stream=True)) as response:
                    answered.append(response.status_code)
                    if len(answered) == len(urls):
                        all_answered.set()
                    if response.status_code == 200:
                        async for _ in response.aiter_bytes():
                            break
                        await asyncio.wait_for(all_answered.wait(), 30)
                    return response.status_code

            streamed = await asyncio.gather(*(read_one_chunk(url) for url in urls))
        assert sorted(streamed) == [200] * 5 + [429] * 15
        assert await wait_for_count(raw, namespace, 0) == 0


async def test_redis_down_with_failure_closed_answers_503_quickly(redis_server: RedisServer, redis_url: str) -> None:
    namespace, key = _ns(), f"sk-{uuid.uuid4().hex}"
    try:
        async with replicas(redis_url, namespace) as (one, two):
            async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {key}"}) as http:
                # a request in flight when Redis stops still gets its answer; its release fails and is logged
                in_flight = asyncio.ensure_future(http.post(f"{one.url}/v1/chat/completions", json=chat()))
                await asyncio.sleep(0.3)
                redis_server.stop()
                started = time.monotonic()
                down = await asyncio.gather(
                    *(http.post(f"{r.url}/v1/chat/completions", json=chat()) for r in (one, two, one, two))
                )
                took = time.monotonic() - started
                assert [r.status_code for r in down] == [503] * 4
                assert down[0].json()["error"]["code"] == "503"
                assert down[0].headers["retry-after"] == "1"
                assert took < 3
                assert (await in_flight).status_code == 200
                deadline = time.monotonic() + 3
                while "could not release a slot" not in one.output() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert "could not release a slot" in one.output()

                redis_server.start()
                back = [await http.post(f"{r.url}/v1/chat/completions", json=chat(), headers={"x-delay": "0"})
                        for r in (one, two)]  # fmt: skip
                assert [r.status_code for r in back] == [200, 200]
    finally:
        if not redis_server.running:
            redis_server.start()


async def test_redis_down_with_failure_local_limits_per_process(redis_server: RedisServer, redis_url: str) -> None:
    namespace, key = _ns(), f"sk-{uuid.uuid4().hex}"
    try:
        async with replicas(redis_url, namespace, REDIS_FAILURE="local") as (one, two):
            async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {key}"}) as http:
                redis_server.stop()
                started = time.monotonic()
                # each replica now limits on its own: 6 concurrent requests to each, 5 through on each
                urls = [(one, two)[i % 2].url for i in range(12)]
                posts = [http.post(f"{url}/v1/chat/completions", json=chat()) for url in urls]
                responses = await asyncio.gather(*posts)
                assert time.monotonic() - started < 5
                assert sorted(r.status_code for r in responses) == [200] * 10 + [429] * 2
                pids = [r.json()["pid"] for r in responses if r.status_code == 200]
                assert sorted(pids.count(pid) for pid in set(pids)) == [5, 5]
    finally:
        if not redis_server.running:
            redis_server.start()
