from asgi_llm_guard.contrib import ModerationEndpointHook, PromptPatternGuard

hooks = [
    PromptPatternGuard(deny=[r"\bforbidden\b"], action="reject"),  # or action="mask"
    ModerationEndpointHook(base_url="https://api.openai.com/v1", thresholds={"violence": 0.5}, timeout=2.0),
]
