"""An OpenAI-compatible FastAPI service guarded by LLMHookMiddleware.

Run it (port 4000, or ``PORT``)::

    python examples/fastapi_app.py

    curl http://127.0.0.1:4000/v1/chat/completions -H 'content-type: application/json' -d '{
      "model": "gpt-3.5-turbo", "user": "ishaan-app",
      "messages": [{"role": "user", "content": "Hello world"}]}'

    curl http://127.0.0.1:4000/v1/messages -H 'content-type: application/json' -d '{
      "model": "claude-sonnet-4-5", "max_tokens": 256, "metadata": {"user_id": "ishaan-app"},
      "messages": [{"role": "user", "content": "Hello world"}]}'

The built-in model of ``examples/model.py`` answers OpenAI's chat, completions, embeddings and Responses API
and Anthropic's Messages API; set ``OPENAI_BASE_URL`` (and ``OPENAI_API_KEY``) to forward the OpenAI routes
to a real OpenAI-compatible service instead, ``ANTHROPIC_BASE_URL`` (and ``ANTHROPIC_API_KEY``) to forward
``/v1/messages`` to an Anthropic-compatible one (read per request). The routes take the raw JSON body rather
than pydantic models, so whatever the hooks forward is accepted as it is.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from asgi_llm_guard import LLMHookMiddleware
from examples import model
from examples.hooks import proxy_handler_instance

logger = logging.getLogger("examples.fastapi_app")

app = FastAPI(title="asgi-llm-guard example (FastAPI)")
app.add_middleware(LLMHookMiddleware, hooks=[proxy_handler_instance], enforce_user_param=True)


def to_response(reply: model.Reply) -> Response:
    if isinstance(reply.content, bytes):
        return Response(reply.content, reply.status_code, reply.headers, reply.media_type)
    return StreamingResponse(reply.content, reply.status_code, reply.headers, reply.media_type)


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    # The middleware leaves the call type, the caller and the final request data here for the app.
    guard = request.state.llm_guard
    logger.info("chat completion for end user %s", guard.user_api_key_dict.end_user_id)
    return to_response(await model.answer("chat/completions", await request.json()))


@app.post("/v1/completions")
async def completions(request: Request) -> Response:
    return to_response(await model.answer("completions", await request.json()))


@app.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return to_response(await model.answer("embeddings", await request.json()))


@app.post("/v1/responses")
async def responses(request: Request) -> Response:
    return to_response(await model.answer("responses", await request.json()))


@app.post("/v1/messages")
async def messages(request: Request) -> Response:
    # Anthropic's Messages API; a forwarded call passes on the client's anthropic-version and anthropic-beta.
    return to_response(await model.answer("messages", await request.json(), request.headers))


@app.get("/v1/models")
async def models() -> Response:
    return to_response(await model.answer("models"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "4000")))
