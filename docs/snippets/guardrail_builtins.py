from asgi_llm_guard.contrib import GenericGuardrailAPI, ModerationEndpointHook, PromptPatternGuard

hooks = [
    # Masks card numbers in prompts and in answers, streamed ones included.
    PromptPatternGuard(deny=[r"\b\d{4}(?: ?\d{4}){3}\b"], action="mask", mask="[card]",
                       guardrail_name="cards", event_hook=["pre_call", "post_call"]),
    # An OpenAI-compatible /moderations endpoint, raced against the model.
    ModerationEndpointHook(thresholds={"violence": 0.5}, timeout=2.0, guardrail_name="moderation"),
    # Any guard service built for LiteLLM's Generic Guardrail API; runs when a request or key names it.
    GenericGuardrailAPI("http://guard.internal:8080", api_key="guard-key", guardrail_name="corp-guard",
                        event_hook=["pre_call", "post_call"], timeout=2.0, fail_open=False),
]
