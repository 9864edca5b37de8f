"""Forwarding to a real model service: OpenAI-compatible (``OPENAI_BASE_URL``) or Anthropic (``ANTHROPIC_BASE_URL``).

The upstream's answer comes back as it is: its status, its body (streamed answers relayed as their bytes
arrive), and its headers, so a client still sees ``Retry-After``, ``x-ratelimit-*`` or ``request-id``. Only the
headers that describe one hop of the connection, or a body encoding httpx has already undone, are left out.

An upstream that cannot be reached is a 502 whose message does not name it: the address of an internal service
is for the log, not for the client.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from examples.replies import API, Reply, error

logger = logging.getLogger("examples.upstream")

# Hop-by-hop headers (RFC 9110, section 7.6.1) belong to the upstream connection; the content headers are the
# server's to set for the body it sends (httpx has decoded any Content-Encoding); date and server are set by
# the example's own server, and an upstream's cookies are for the upstream's domain.
NOT_PASSED_ON = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
    "content-length", "content-encoding", "content-type",
    "date", "server", "set-cookie",
})

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Upstream:
    """Where to forward and how to present the service's key there."""

    base_url: str
    headers: dict[str, str]
    api: API


def configured(endpoint: str, request_headers: Mapping[str, str] | None = None) -> Upstream | None:
    """The upstream for ``endpoint`` from the environment (read per call), or ``None`` for the built-in model.

    ``OPENAI_BASE_URL`` includes the version, as the ``openai`` SDK reads it (``https://api.openai.com/v1``);
    ``ANTHROPIC_BASE_URL`` does not, as the ``anthropic`` SDK reads it (``https://api.anthropic.com``).
    """
    request_headers = request_headers or {}
    if endpoint == "messages":
        base_url = os.environ.get("ANTHROPIC_BASE_URL")
        if not base_url:
            return None
        headers = {"anthropic-version": request_headers.get("anthropic-version", ANTHROPIC_VERSION)}
        if beta := request_headers.get("anthropic-beta"):
            headers["anthropic-beta"] = beta
        if api_key := os.environ.get("ANTHROPIC_API_KEY"):
            headers["x-api-key"] = api_key
        return Upstream(base_url.rstrip("/") + "/v1/", headers, "anthropic")
    base_url = os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        return None
    headers = {}
    if api_key := os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {api_key}"
    return Upstream(base_url.rstrip("/") + "/", headers, "openai")


async def forward(upstream: Upstream, endpoint: str, data: dict[str, Any] | None) -> Reply:
    """Send the call upstream; its answer comes back with its status and headers, streamed or not.

    One client per call keeps the example short; a real service would keep one ``httpx.AsyncClient`` for the
    app's lifetime (connection pooling).
    """
    client = httpx.AsyncClient(base_url=upstream.base_url, headers=upstream.headers,
                               timeout=httpx.Timeout(600.0, connect=10.0))
    method = "GET" if data is None else "POST"
    try:
        response = await client.send(client.build_request(method, endpoint, json=data), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        logger.warning("the upstream model at %s could not be reached: %r", upstream.base_url, exc)
        return error(502, f"The upstream model could not be reached ({type(exc).__name__}).", api=upstream.api)
    media_type = response.headers.get("content-type", "application/json")
    headers = {name: value for name, value in response.headers.items() if name.lower() not in NOT_PASSED_ON}
    if response.is_success and media_type.startswith("text/event-stream"):
        return Reply(response.status_code, relay(client, response), media_type, headers)
    try:
        body = await response.aread()
    except httpx.HTTPError as exc:
        logger.warning("the upstream model at %s broke off its answer: %r", upstream.base_url, exc)
        return error(502, f"The upstream model broke off its answer ({type(exc).__name__}).", api=upstream.api)
    finally:
        await response.aclose()
        await client.aclose()
    return Reply(response.status_code, body, media_type, headers)


async def relay(client: httpx.AsyncClient, response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they arrive (decoded from any Content-Encoding), then close the client."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    finally:
        await response.aclose()
        await client.aclose()
