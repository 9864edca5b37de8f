"""The example hooks, written as LiteLLM's "Modify / Reject Incoming Requests" page writes them.

Only the imports differ from a LiteLLM ``custom_callbacks.py``: ``CallHook`` stands in for
``CustomLogger``, and ``UserAPIKeyAuth``, ``DualCache`` and ``get_formatted_prompt`` come from
``asgi_llm_guard``. What it shows:

- the model is rewritten: the public alias ``gpt-3.5-turbo`` becomes the service's own model;
- a prompt containing "forbidden" is blocked with FastAPI's ``HTTPException`` (400, an OpenAI error);
- a prompt containing "Hello world" is refused with a message, which the client gets as a normal completion
  (a normal Anthropic message on ``/v1/messages``);
- a first message of exactly "hello world" is blocked by a moderation hook running alongside the model.

``enforce_user_param=True`` is an option of the middleware, not a hook (see ``fastapi_app.py``). Give the
handler to the middleware as the object or as its import string::

    app = LLMHookMiddleware(app, hooks=["examples.hooks.proxy_handler_instance"], enforce_user_param=True)
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import HTTPException

from asgi_llm_guard import CallHook as CustomLogger
from asgi_llm_guard import DualCache, UserAPIKeyAuth, get_formatted_prompt

logger = logging.getLogger("examples.hooks")

# Public model names mapped to the service's own. The built-in model answers to any name, so here this only
# shows in the answers' "model"; with OPENAI_BASE_URL set, map to models your upstream serves.
MODEL_ALIASES = {"gpt-3.5-turbo": "gpt-4o-mini"}

FORBIDDEN_MESSAGE = "Your request contains a forbidden word."

CallType = Literal[
    "completion",
    "text_completion",
    "embeddings",
    "image_generation",
    "anthropic_messages",
    "moderation",
    "audio_transcription",
    "responses",
]


class MyCustomHandler(CustomLogger):
    # Class variables or attributes
    def __init__(self) -> None:
        pass

    #### CALL HOOKS ####

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: DualCache, data: dict, call_type: CallType
    ) -> dict | str | Exception | None:
        if data.get("model") in MODEL_ALIASES:
            data["model"] = MODEL_ALIASES[data["model"]]

        formatted_prompt = get_formatted_prompt(data=data, call_type=call_type)
        if "forbidden" in formatted_prompt:
            raise HTTPException(status_code=400, detail={"error": FORBIDDEN_MESSAGE})
        if "Hello world" in formatted_prompt:
            return "This is an invalid response"
        return data

    async def async_moderation_hook(  # call made in parallel to the model call
        self,
        data: dict,
    ) -> None:
        messages = data.get("messages")  # chat and Anthropic Messages requests have messages
        first = messages[0] if isinstance(messages, list) and messages else {}
        if isinstance(first, dict) and first.get("content") == "hello world":
            raise HTTPException(status_code=400, detail={"error": "Violated content safety policy"})

    async def async_post_call_success_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        response: Any,
    ) -> None:
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            logger.info("end user %s used %s tokens", user_api_key_dict.end_user_id,
                        usage.get("total_tokens"))

    async def async_post_call_failure_hook(
        self,
        request_data: dict,
        original_exception: Exception,
        user_api_key_dict: UserAPIKeyAuth,
    ) -> None:
        # Log what failed, never the prompt: it may hold personal data.
        status = getattr(original_exception, "status_code", None)
        logger.info("request of end user %s failed: %s %s", user_api_key_dict.end_user_id,
                    type(original_exception).__name__, status)

    async def async_post_call_streaming_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        response: dict,
    ) -> dict | None:
        # Called with each streamed chunk, parsed; return a dict to replace it. Defining this method makes the
        # middleware parse every stream: leave it out when you do not need it.
        return None


proxy_handler_instance = MyCustomHandler()
