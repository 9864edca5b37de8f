"""ParallelRequestLimiter on an in-memory DualCache, in process: parallel, rpm and tpm limits, per key, user, team
and end user, per-identity overrides, and slots released whatever the outcome (success, downstream error, refusal,
client disconnect, cache failure, cancellation while a slot is being taken)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from asgi_llm_guard import DualCache, LLMHookMiddleware, RejectRequest, UserAPIKeyAuth
from asgi_llm_guard.auth import hash_key
from asgi_llm_guard.cache import CacheUnavailable
from asgi_llm_guard.contrib.limiter import ParallelRequestLimiter

from .apps import CHAT, Downstream, Script, body_messages, chat, chat_chunk, client, http_scope, sse

KEY = "sk-limited"
HEADERS = {"Authorization": f"Bearer {KEY}"}
IDENTITY = hash_key(KEY)


class Gate:
    """A downstream app that answers a chat completion once ``open`` is set, counting who is inside."""

    def __init__(self, status: int = 200) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.most_inside = 0
        self.status = status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.open.wait()
        finally:
            self.inside -= 1
        if self.status >= 400:
            body = orjson.dumps({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
        else:
            body = orjson.dumps({"object": "chat.completion", "choices": [], "usage": {"total_tokens": 5}})
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": body})


class Recorder:
    def __init__(self) -> None:
        self.rejected: list[str] = []

    def limiter_rejected(self, limit: str) -> None:
        self.rejected.append(limit)


async def wait_until(predicate: Any, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def usage(limiter: ParallelRequestLimiter, cache: DualCache, identity: str = IDENTITY) -> dict[str, int]:
    return await limiter.usage(cache, identity)


def rate_limit_envelope(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("rate_limit_error", None, "429")
    assert isinstance(error["message"], str) and error["message"]
    assert response.headers["content-type"] == "application/json"
    return dict(error)


# -- the parallel limit ------------------------------------------------------------------------------------


async def test_exactly_max_parallel_requests_get_through_and_the_rest_get_429() -> None:
    gate, cache, recorder = Gate(), DualCache(), Recorder()
    limiter = ParallelRequestLimiter(max_parallel_requests=3, observer=recorder)
    app = LLMHookMiddleware(gate, hooks=[limiter], cache=cache)
    async with client(app) as http:
        tasks = [asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)) for _ in range(8)]
        await wait_until(lambda: gate.inside == 3 and sum(t.done() for t in tasks) == 5)
        assert (await usage(limiter, cache))["parallel"] == 3
        gate.open.set()
        responses = await asyncio.gather(*tasks)

    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 5
    assert gate.most_inside == 3
    for response in responses:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert "parallel" in rate_limit_envelope(response)["message"]
    assert recorder.rejected == ["parallel"] * 5
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_slots_are_released_after_a_downstream_error() -> None:
    gate, cache = Gate(status=500), DualCache()
    gate.open.set()
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(gate, hooks=[limiter], cache=cache)
    async with client(app) as http:
        for _ in range(3):
            response = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
            assert response.status_code == 500
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_slots_are_released_when_a_later_hook_refuses() -> None:
    class Refuse:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any) -> str:
            return "no"

    cache = DualCache()
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter, Refuse()], cache=cache)
    async with client(app) as http:
        for _ in range(3):
            response = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
            assert response.headers["x-llm-guard-rejected"] == "pre_call"
            assert response.json()["choices"][0]["message"]["content"] == "no"
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_a_request_refused_before_the_limiter_ran_releases_nothing() -> None:
    class RefuseForbidden:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any) -> Any:
            return RejectRequest("blocked") if "forbidden" in str(data) else None

    gate, cache = Gate(), DualCache()
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(gate, hooks=[RefuseForbidden(), limiter], cache=cache)
    async with client(app) as http:
        held = asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT, headers=HEADERS))
        await wait_until(lambda: gate.inside == 1)
        refused = await http.post("/v1/chat/completions", json=chat("forbidden"), headers=HEADERS)
        assert refused.headers["x-llm-guard-rejected"] == "pre_call"
        assert (await usage(limiter, cache))["parallel"] == 1  # the refused request did not take the slot back
        second = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
        assert second.status_code == 429
        gate.open.set()
        assert (await held).status_code == 200
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_client_disconnect_mid_stream_releases_the_slot() -> None:
    async def endless(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        while True:
            await send({"type": "http.response.body", "body": sse([chat_chunk("m", "x")], False)[0], "more_body": True})
            await asyncio.sleep(0.01)

    cache = DualCache()
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(endless, hooks=[limiter], cache=cache)
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]
    script = Script(body_messages(orjson.dumps(chat(stream=True))))
    task = asyncio.ensure_future(app(http_scope(headers=headers), script.receive, script.send))
    await wait_until(lambda: len(script.sent) >= 3)
    assert (await usage(limiter, cache))["parallel"] == 1
    script.disconnect.set()
    await asyncio.wait_for(task, 2)
    assert (await usage(limiter, cache))["parallel"] == 0


class SlowCache(DualCache):
    """A DualCache whose increments take ``delay`` seconds before they land (a slow Redis)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.landed = 0

    async def async_increment_cache(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        self.landed += 1
        return await super().async_increment_cache(key, value, ttl, **kwargs)


async def test_client_disconnect_while_the_slot_is_being_taken_leaves_nothing_held() -> None:
    cache = SlowCache(0.2)
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]
    script = Script(body_messages(orjson.dumps(CHAT)))
    task = asyncio.ensure_future(app(http_scope(headers=headers), script.receive, script.send))
    await asyncio.sleep(0.05)  # the increment is on its way
    script.disconnect.set()
    await asyncio.wait_for(task, 2)
    assert script.sent == []
    assert cache.landed == 2  # the increment landed after the client left, and was taken back
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_a_hook_timeout_while_the_slot_is_being_taken_leaves_nothing_held() -> None:
    cache = SlowCache(0.2)
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache, hook_timeout=0.05)
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "timeout_error"
    await wait_until(lambda: cache.landed == 2)  # the release outlives the timed-out complete hook, briefly
    assert (await usage(limiter, cache))["parallel"] == 0


class FailingCache(DualCache):
    """A DualCache whose Redis is 'down' for the operations named in ``failing``."""

    def __init__(self, *failing: str) -> None:
        super().__init__()
        self.failing = set(failing)

    async def async_increment_cache(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> Any:
        if "increment" in self.failing or ("decrement" in self.failing and value < 0):
            raise CacheUnavailable("redis.test:6379")
        return await super().async_increment_cache(key, value, ttl, **kwargs)

    async def async_batch_get_cache(self, keys: Any, **kwargs: Any) -> list[Any]:
        if "read" in self.failing:
            raise CacheUnavailable("redis.test:6379")
        return await super().async_batch_get_cache(keys, **kwargs)


async def test_cache_unavailable_is_a_503_and_nothing_is_held() -> None:
    cache = FailingCache("increment")
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    cache.failing.clear()
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_a_cache_failure_after_the_increment_takes_the_increment_back() -> None:
    cache = FailingCache("read")
    limiter = ParallelRequestLimiter(max_parallel_requests=1)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
    assert response.status_code == 503
    cache.failing.clear()
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_a_release_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    cache = FailingCache("decrement")
    limiter = ParallelRequestLimiter(max_parallel_requests=2)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)
    assert response.status_code == 200
    assert "could not release a slot" in caplog.text


# -- rpm and tpm ---------------------------------------------------------------------------------------------


async def test_rpm_limit() -> None:
    cache, recorder = DualCache(), Recorder()
    limiter = ParallelRequestLimiter(rpm_limit=2, observer=recorder)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)
    async with client(app) as http:
        statuses = [(await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert 1 <= int(statuses[2].headers["retry-after"]) <= 60
    assert "requests per minute" in rate_limit_envelope(statuses[2])["message"]
    assert recorder.rejected == ["rpm"]
    assert (await usage(limiter, cache))["rpm"] == 3


async def test_rpm_rejection_releases_the_parallel_slot() -> None:
    cache = DualCache()
    limiter = ParallelRequestLimiter(max_parallel_requests=1, rpm_limit=1)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)
    async with client(app) as http:
        statuses = [(await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS)).status_code for _ in range(2)]
    assert statuses == [200, 429]
    assert (await usage(limiter, cache))["parallel"] == 0


async def test_tpm_limit_counts_usage_of_json_responses() -> None:
    cache, recorder = DualCache(), Recorder()
    limiter = ParallelRequestLimiter(tpm_limit=10, observer=recorder)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache)  # answers usage.total_tokens == 5
    async with client(app) as http:
        responses = [await http.post("/v1/chat/completions", json=CHAT, headers=HEADERS) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].json()["usage"]["total_tokens"] == 5  # the response itself is unchanged
    assert "tokens per minute" in rate_limit_envelope(responses[2])["message"]
    assert 1 <= int(responses[2].headers["retry-after"]) <= 60
    assert recorder.rejected == ["tpm"]
    assert await usage(limiter, cache) == {"parallel": 0, "rpm": 0, "tpm": 10}


def streaming_app(events: list[bytes]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def test_tpm_counts_a_chat_stream_usage_chunk() -> None:
    chunks = [{**chat_chunk("m", "Hi"), "usage": None}, {**chat_chunk("m", None, "stop"), "usage": None}]
    usage_chunk = {**chat_chunk("m", None), "choices": [], "usage": {"prompt_tokens": 4, "total_tokens": 7}}
    cache = DualCache()
    limiter = ParallelRequestLimiter(tpm_limit=7)
    app = LLMHookMiddleware(streaming_app(sse([*chunks, usage_chunk])), hooks=[limiter], cache=cache)
    body = chat(stream=True, stream_options={"include_usage": True})
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=body, headers=HEADERS)
        assert first.status_code == 200 and b"[DONE]" in first.content
        assert (await usage(limiter, cache))["tpm"] == 7
        second = await http.post("/v1/chat/completions", json=body, headers=HEADERS)
    assert second.status_code == 429


async def test_tpm_counts_cumulative_usage_chunks_once() -> None:
    chunks = [{**chat_chunk("m", "x"), "usage": {"total_tokens": n}} for n in (3, 4, 5)]
    cache = DualCache()
    limiter = ParallelRequestLimiter(tpm_limit=100)
    app = LLMHookMiddleware(streaming_app(sse(chunks)), hooks=[limiter], cache=cache)
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=chat(stream=True), headers=HEADERS)
    assert (await usage(limiter, cache))["tpm"] == 5


async def test_tpm_counts_a_responses_api_completed_event() -> None:
    events = [
        b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n',
        b'event: response.completed\ndata: {"type":"response.completed",'
        b'"response":{"status":"completed","usage":{"input_tokens":2,"output_tokens":2,"total_tokens":4}}}\n\n',
    ]
    cache = DualCache()
    limiter = ParallelRequestLimiter(tpm_limit=100)
    app = LLMHookMiddleware(streaming_app(events), hooks=[limiter], cache=cache)
    async with client(app) as http:
        response = await http.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True}, headers=HEADERS)
    assert b"response.completed" in response.content
    assert (await usage(limiter, cache))["tpm"] == 4


def test_token_hooks_exist_only_when_tokens_are_counted() -> None:
    # A streaming hook makes the middleware parse every SSE stream: a limiter without tpm must not have one.
    without = LLMHookMiddleware(Downstream(), hooks=[ParallelRequestLimiter(max_parallel_requests=1, rpm_limit=5)])
    assert without.hooks.streaming == () and without.hooks.success == ()
    assert len(without.hooks.pre_call) == 1 and len(without.hooks.complete) == 1
    with_tpm = LLMHookMiddleware(Downstream(), hooks=[ParallelRequestLimiter(tpm_limit=100)])
    assert len(with_tpm.hooks.streaming) == 1 and len(with_tpm.hooks.success) == 1
    forced = LLMHookMiddleware(Downstream(), hooks=[ParallelRequestLimiter(count_tokens=True)])
    assert len(forced.hooks.streaming) == 1


async def test_count_tokens_applies_per_identity_tpm_limits_set_by_auth() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="k-1", tpm_limit=5)

    cache = DualCache()
    limiter = ParallelRequestLimiter(count_tokens=True)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache, auth=auth)
    async with client(app) as http:
        statuses = [(await http.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(2)]
    assert statuses == [200, 429]
    assert (await usage(limiter, cache, "k-1"))["tpm"] == 5


# -- identities and overrides --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per", "field"), [("key", "api_key"), ("user", "user_id"), ("team", "team_id"), ("end_user", "end_user_id")]
)
async def test_limits_are_per_identity(per: Any, field: str) -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        headers = dict(scope["headers"])
        who = headers[b"x-who"].decode()
        user = UserAPIKeyAuth(api_key="shared-key", user_id="shared-user", team_id="shared-team")
        if per != "end_user":
            setattr(user, field, who)
        return user

    cache = DualCache()
    limiter = ParallelRequestLimiter(rpm_limit=1, per=per)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], cache=cache, auth=auth)

    async def post(who: str) -> int:
        body = {**CHAT, "user": who}  # the end user is the request's `user`
        response = await http.post("/v1/chat/completions", json=body, headers={"x-who": who})
        return response.status_code

    async with client(app) as http:
        assert [await post("a"), await post("b"), await post("a"), await post("b"), await post("c")] == [
            200,
            200,
            429,
            429,
            200,
        ]
    assert (await usage(limiter, cache, "a"))["rpm"] == 2


async def test_requests_without_an_identity_are_not_limited() -> None:
    cache = DualCache()
    app = LLMHookMiddleware(Downstream(), hooks=[ParallelRequestLimiter(rpm_limit=1)], cache=cache)
    async with client(app) as http:
        statuses = [(await http.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]


async def test_per_identity_limits_override_the_defaults() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="k-strict", max_parallel_requests=1)

    gate, cache = Gate(), DualCache()
    limiter = ParallelRequestLimiter(max_parallel_requests=5)
    app = LLMHookMiddleware(gate, hooks=[limiter], cache=cache, auth=auth)
    async with client(app) as http:
        tasks = [asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT)) for _ in range(3)]
        await wait_until(lambda: gate.inside == 1 and sum(t.done() for t in tasks) == 2)
        gate.open.set()
        responses = await asyncio.gather(*tasks)
    assert sorted(r.status_code for r in responses) == [200, 429, 429]
    assert (await usage(limiter, cache, "k-strict"))["parallel"] == 0


async def test_per_identity_rpm_override_without_a_default() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="k-rpm", rpm_limit=1)

    app = LLMHookMiddleware(Downstream(), hooks=[ParallelRequestLimiter()], auth=auth)
    async with client(app) as http:
        statuses = [(await http.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(2)]
    assert statuses == [200, 429]


async def test_two_limiters_on_one_request_keep_separate_slots() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key=dict(scope["headers"])[b"x-key"].decode(), team_id="team-1")

    gate, cache = Gate(), DualCache()
    per_key = ParallelRequestLimiter(max_parallel_requests=1, per="key")
    per_team = ParallelRequestLimiter(max_parallel_requests=2, per="team")
    app = LLMHookMiddleware(gate, hooks=[per_key, per_team], cache=cache, auth=auth)
    async with client(app) as http:
        keys = ["k1", "k1", "k2", "k3"]
        tasks = [
            asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT, headers={"x-key": k})) for k in keys
        ]
        await wait_until(lambda: gate.inside == 2 and sum(t.done() for t in tasks) == 2)
        gate.open.set()
        responses = await asyncio.gather(*tasks)
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
    for identity in ("k1", "k2", "k3"):
        assert (await per_key.usage(cache, identity))["parallel"] == 0
    assert (await per_team.usage(cache, "team-1"))["parallel"] == 0


# -- construction ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_parallel_requests": -1}, TypeError),
        ({"rpm_limit": "10"}, TypeError),
        ({"tpm_limit": True}, TypeError),
        ({"per": "org"}, ValueError),
        ({"slot_ttl": 0}, TypeError),
        ({"count_tokens": "yes"}, TypeError),
        ({"observer": object()}, TypeError),
    ],
)
def test_wrong_options_fail_at_construction(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ParallelRequestLimiter(**kwargs)
