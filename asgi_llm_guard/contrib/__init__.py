"""Ready-made hooks: ``PromptPatternGuard`` (regex refuse/mask, pre-call) and ``ModerationEndpointHook``
(an OpenAI-compatible ``/moderations`` endpoint, moderation stage)::

    from asgi_llm_guard.contrib import ModerationEndpointHook, PromptPatternGuard

    hooks = [PromptPatternGuard(deny=[r"\\bforbidden\\b"]), ModerationEndpointHook()]
"""

from .moderation_endpoint import ModerationEndpointHook
from .pattern_guard import PromptPatternGuard

__all__ = ["ModerationEndpointHook", "PromptPatternGuard"]
