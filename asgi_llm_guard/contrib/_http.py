"""The one HTTP client a contrib guard that calls a service keeps: made on first use, closed by ``aclose()`` or
``async with``; a client passed in belongs to the caller and stays open."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import httpx

_Owner = TypeVar("_Owner", bound="ServiceClient")


class ServiceClient:
    """Mixin for guards that call an HTTP service (``ModerationEndpointHook``, ``GenericGuardrailAPI``)::

        async with GenericGuardrailAPI(api_base="http://guard:8080") as guard:
            ...
    """

    timeout: float | None

    def _use_client(self, client: httpx.AsyncClient | None, transport: httpx.AsyncBaseTransport | None) -> None:
        self._client = client
        self._transport = transport
        self._owns_client = client is None

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, timeout=self.timeout)
        return self._client

    async def aclose(self) -> None:
        """Close the client the guard created (a client passed in stays open): ``await guard.aclose()``."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self: _Owner) -> _Owner:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()
