"""How the middleware's ``hooks`` become the hooks it runs, once, at construction: each hook bound to its methods
(``hooks.py``), LiteLLM's own classes given LiteLLM's runtime contract (docs/litellm.md), and CustomGuardrails
taken apart into the guardrail engine (docs/guardrails.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .guardrail_engine import GuardrailEngine
from .hooks import HookSet, bind_hooks
from .litellm_adapter import adapt as adapt_litellm
from .litellm_adapter import is_litellm_hook
from .observe import Observer


class Assembly(NamedTuple):
    hooks: HookSet
    #: LiteLLM hooks are configured: fields LiteLLM consumes are kept from the app (litellm_adapter).
    litellm_fields: bool
    #: The CustomGuardrails among the hooks (docs/guardrails.md); None when there are none, which costs nothing.
    guardrails: GuardrailEngine | None
    #: A failure hook takes ``traceback_str``: one is formatted per failure, only then.
    failure_wants_traceback: bool


def assemble(hooks: Iterable[object], hook_timeout: float | None, observer: Observer | None) -> Assembly:
    engine = GuardrailEngine(observer)
    litellm_hooks: list[object] = []

    def adapt(hook: object) -> object:
        # LiteLLM's own classes get LiteLLM's runtime contract (docs/litellm.md); nothing else is touched.
        if not is_litellm_hook(hook):
            return hook
        wrapped = adapt_litellm(hook)
        litellm_hooks.append(wrapped)
        return wrapped

    bound = bind_hooks(list(hooks), hook_timeout, observer, engine.expand, adapt)
    failure_wants_traceback = any(
        "traceback_str" in hook.positional or any(source == "traceback_str" for _, source in hook.keywords)
        for hook in bound.failure
    )
    return Assembly(bound, bool(litellm_hooks), engine if engine.guardrails else None, failure_wants_traceback)
