"""asgi_llm_guard: LiteLLM-style call hooks for any ASGI service, as one middleware.

::

    from asgi_llm_guard import LLMHookMiddleware
    app.add_middleware(LLMHookMiddleware, hooks=[MyHook()])
"""

from .auth import UserAPIKeyAuth
from .cache import DualCache
from .call import GuardState
from .errors import GuardError, RejectRequest, UpstreamError
from .guardrails import CustomGuardrail
from .hooks import CallHook
from .middleware import LLMHookMiddleware
from .text import get_formatted_prompt, request_texts

__version__ = "0.1.0"  # the package's one version number: pyproject.toml reads it from here (hatch)

__all__ = [
    "CallHook",
    "CustomGuardrail",
    "DualCache",
    "GuardError",
    "GuardState",
    "LLMHookMiddleware",
    "RejectRequest",
    "UpstreamError",
    "UserAPIKeyAuth",
    "__version__",
    "get_formatted_prompt",
    "request_texts",
]
