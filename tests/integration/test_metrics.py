"""PrometheusObserver under a real uvicorn server: a mix of requests (answered, refused, a broken hook, a limiter
429, a bad body, embeddings, a stream), then the metrics scraped over HTTP from the path the app mounted them at."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.contrib.limiter import ParallelRequestLimiter
from asgi_llm_guard.contrib.prometheus import PrometheusObserver
from tests.apps import Downstream
from tests.servers import serve

METRICS_PATH = "/ops/guard-metrics"


class RefuseSecret:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any) -> Any:
        return "I can't share secrets." if "secret" in str(data) else None


class Broken:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any) -> Any:
        if "crash" in str(data):
            raise RuntimeError("bug in the hook")
        return None


class SlowModeration:
    async def async_moderation_hook(self, data: Any) -> None:
        await asyncio.sleep(0.1)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(content: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "stream": stream}


async def test_metrics_scraped_over_http_count_a_mix_of_requests() -> None:
    observer = PrometheusObserver()
    limiter = ParallelRequestLimiter(rpm_limit=2, observer=observer)
    guarded = LLMHookMiddleware(
        Downstream(), hooks=[limiter, RefuseSecret(), Broken(), SlowModeration()], observer=observer
    )
    app = Starlette(routes=[Mount(METRICS_PATH, app=observer.metrics_app()), Mount("/", app=guarded)])

    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        chat_url = "/v1/chat/completions"
        answered = [await http.post(chat_url, json=chat("good morning")) for _ in range(3)]
        refused = [await http.post(chat_url, json=chat("tell me the secret")) for _ in range(2)]
        broken = await http.post(chat_url, json=chat("crash please"))
        embeddings = [await http.post("/v1/embeddings", json={"model": "e", "input": "hi"}) for _ in range(2)]
        keyed = [
            await http.post(chat_url, json=chat("hi"), headers={"Authorization": "Bearer sk-metrics"}) for _ in range(3)
        ]
        bad_body = await http.post(chat_url, content=b"[1, 2]", headers={"content-type": "application/json"})
        streamed = await http.post(chat_url, json=chat("stream it", stream=True))

        assert [r.status_code for r in answered + refused + embeddings] == [200] * 7
        assert all(r.headers["x-llm-guard-rejected"] == "pre_call" for r in refused)
        assert (broken.status_code, [r.status_code for r in keyed], bad_body.status_code) == (500, [200, 200, 429], 400)
        assert streamed.status_code == 200 and b"[DONE]" in streamed.content

        scraped = await http.get(METRICS_PATH + "/")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        samples = parse(scraped.text)

    # 11 chat requests (the bad body included) and 2 embeddings
    assert value(samples, "llm_guard_requests_total", call_type="completion") == 11
    assert value(samples, "llm_guard_requests_total", call_type="embeddings") == 2
    responses = {
        (call_type, status): value(samples, "llm_guard_responses_total", call_type=call_type, status=status)
        for call_type, status in [
            ("completion", "200"), ("completion", "400"), ("completion", "429"), ("completion", "500"),
            ("embeddings", "200"),
        ]
    }  # fmt: skip
    assert responses == {
        ("completion", "200"): 8,
        ("completion", "400"): 1,
        ("completion", "429"): 1,
        ("completion", "500"): 1,
        ("embeddings", "200"): 2,
    }
    assert value(samples, "llm_guard_request_duration_seconds_count", call_type="completion") == 11
    assert value(samples, "llm_guard_request_duration_seconds_count", call_type="embeddings") == 2

    rejections = {
        labels: v
        for (name, labels), v in samples.items()
        if name == "llm_guard_rejections_total" and v
    }
    assert rejections == {
        frozenset({"stage": "pre_call", "hook": "RefuseSecret", "kind": "refusal"}.items()): 2,
        frozenset({"stage": "pre_call", "hook": "Broken", "kind": "error"}.items()): 1,
        frozenset({"stage": "pre_call", "hook": "ParallelRequestLimiter", "kind": "error"}.items()): 1,
        frozenset({"stage": "none", "hook": "none", "kind": "error"}.items()): 1,
    }

    hook_counts = {
        (dict(labels)["stage"], dict(labels)["hook"]): v
        for (name, labels), v in samples.items()
        if name == "llm_guard_hook_duration_seconds_count"
    }
    assert hook_counts == {
        ("pre_call", "ParallelRequestLimiter"): 12,  # every request with a parsed body
        ("pre_call", "RefuseSecret"): 11,  # not the one the limiter refused
        ("pre_call", "Broken"): 9,  # not the two refusals
        ("moderation", "SlowModeration"): 8,  # not the crash
        ("complete", "ParallelRequestLimiter"): 13,  # every guarded request
    }
    failures = {
        labels: v for (name, labels), v in samples.items() if name == "llm_guard_hook_failures_total" and v
    }
    assert failures == {
        frozenset({"stage": "pre_call", "hook": "Broken", "outcome": "error"}.items()): 1,
        frozenset({"stage": "pre_call", "hook": "ParallelRequestLimiter", "outcome": "rejected"}.items()): 1,
    }

    assert value(samples, "llm_guard_moderation_held_seconds_count") == 8
    held = value(samples, "llm_guard_moderation_held_seconds_sum")
    assert 8 * 0.05 < held < 8 * 2  # the downstream answered at once, so each response waited ~0.1 s

    assert value(samples, "llm_guard_limiter_rejections_total", limit="rpm") == 1
    assert value(samples, "llm_guard_limiter_rejections_total", limit="parallel") == 0


def test_each_observer_has_its_own_registry_unless_given_one() -> None:
    first, second = PrometheusObserver(), PrometheusObserver()  # no "Duplicated timeseries" error
    assert first.registry is not second.registry
    first.request_started("completion")
    assert second.registry.get_sample_value("llm_guard_requests_total", {"call_type": "completion"}) is None
    assert first.registry.get_sample_value("llm_guard_requests_total", {"call_type": "completion"}) == 1

    shared = CollectorRegistry()
    custom = PrometheusObserver(registry=shared, namespace="svc")
    custom.limiter_rejected("parallel")
    assert shared.get_sample_value("svc_limiter_rejections_total", {"limit": "parallel"}) == 1
    with pytest.raises(TypeError, match="CollectorRegistry"):
        PrometheusObserver(registry="default")


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"asgi-llm-guard\[prometheus\]"):
        PrometheusObserver()
