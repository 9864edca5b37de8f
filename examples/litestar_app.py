"""The same OpenAI-compatible service with Litestar, guarded by LLMHookMiddleware as a plain ASGI wrapper.

Run it (port 4001, or ``PORT``; the FastAPI example takes 4000, so both can run side by side)::

    python examples/litestar_app.py

The middleware wraps the whole Litestar app (``app = LLMHookMiddleware(Litestar(...), ...)``) rather
than going into Litestar's ``middleware=[...]`` list: Litestar runs that list per route handler, after
routing, while the wrapper sees every request first, as in the FastAPI example. Litestar keeps
``scope["state"]``, so handlers read the middleware's notes from ``request.state.llm_guard`` as FastAPI's do.

The hooks are those of ``examples/hooks.py``, except that "forbidden" is blocked with Litestar's own
``HTTPException``: the middleware honours any exception with a ``status_code``, whatever framework defined it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from litestar import Litestar, Request, get, post
from litestar.exceptions import HTTPException
from litestar.response import Response, Stream

from asgi_llm_guard import DualCache, LLMHookMiddleware, UserAPIKeyAuth, get_formatted_prompt
from examples import model
from examples.hooks import FORBIDDEN_MESSAGE, CallType, MyCustomHandler

logger = logging.getLogger("examples.litestar_app")


class LitestarHandler(MyCustomHandler):
    """``MyCustomHandler`` raising Litestar's ``HTTPException`` for "forbidden" (same status and message)."""

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: DualCache, data: dict, call_type: CallType
    ) -> dict | str | Exception | None:
        if "forbidden" in get_formatted_prompt(data=data, call_type=call_type):
            raise HTTPException(status_code=400, detail=FORBIDDEN_MESSAGE)
        return await super().async_pre_call_hook(user_api_key_dict, cache, data, call_type)


proxy_handler_instance = LitestarHandler()


def to_response(reply: model.Reply) -> Response[Any]:
    if isinstance(reply.content, bytes):
        return Response(reply.content, status_code=reply.status_code, media_type=reply.media_type,
                        headers=reply.headers)
    return Stream(reply.content, status_code=reply.status_code, media_type=reply.media_type, headers=reply.headers)


@post("/v1/chat/completions")
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    # The middleware leaves the call type, the caller and the final request data here for the app.
    guard = request.state.llm_guard
    logger.info("chat completion for end user %s", guard.user_api_key_dict.end_user_id)
    return to_response(await model.answer("chat/completions", await request.json()))


@post("/v1/completions")
async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
    return to_response(await model.answer("completions", await request.json()))


@post("/v1/embeddings")
async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
    return to_response(await model.answer("embeddings", await request.json()))


@post("/v1/responses")
async def responses(request: Request[Any, Any, Any]) -> Response[Any]:
    return to_response(await model.answer("responses", await request.json()))


@post("/v1/messages")
async def messages(request: Request[Any, Any, Any]) -> Response[Any]:
    # Anthropic's Messages API; a forwarded call passes on the client's anthropic-version and anthropic-beta.
    return to_response(await model.answer("messages", await request.json(), request.headers))


@get("/v1/models")
async def models() -> Response[Any]:
    return to_response(await model.answer("models"))


litestar_app = Litestar(route_handlers=[chat_completions, completions, embeddings, responses, messages, models])
app = LLMHookMiddleware(litestar_app, hooks=[proxy_handler_instance], enforce_user_param=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "4001")))
