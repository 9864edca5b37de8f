"""asgi_llm_guard: LiteLLM-style call hooks for any ASGI service, as one middleware.

::

    from asgi_llm_guard import LLMHookMiddleware
    app.add_middleware(LLMHookMiddleware, hooks=[MyHook()])
"""

from .auth import UserAPIKeyAuth
from .cache import DualCache
from .errors import GuardError, RejectRequest, UpstreamError
from .hooks import CallHook
from .middleware import GuardState, LLMHookMiddleware
from .text import get_formatted_prompt, request_texts

__all__ = [
    "CallHook",
    "DualCache",
    "GuardError",
    "GuardState",
    "LLMHookMiddleware",
    "RejectRequest",
    "UpstreamError",
    "UserAPIKeyAuth",
    "get_formatted_prompt",
    "request_texts",
]
