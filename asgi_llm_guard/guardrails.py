"""``CustomGuardrail``: a guard written as one ``apply_guardrail`` method, run on every route
(docs/reference.md#guardrails).

The class has LiteLLM's name, constructor keywords and methods (``guardrail_name``, ``event_hook``,
``default_on``, ``should_run_guardrail``, ``apply_guardrail``), so a LiteLLM guardrail moves over by changing its
import. The middleware extracts the texts of whatever wire format the route speaks, calls ``apply_guardrail`` at
each stage the guardrail's ``event_hook`` names, and writes the result back (``guardrail_engine.py``).

Where we differ from LiteLLM, on purpose:

- ``event_hook=None`` means ``["pre_call", "post_call"]`` (the request and the response), not every event: in
  LiteLLM it runs the guardrail at every stage, monitor mode included, which runs it several times per request.
- Selection by the caller's identity (``user_api_key_dict.metadata["guardrails"]`` set by ``auth``) is free here;
  LiteLLM's per-key and per-team guardrails are an Enterprise feature.
- Only ``pre_call``, ``during_call``, ``post_call`` and ``logging_only`` are modes here; LiteLLM's MCP and
  realtime modes raise ``ValueError`` at construction rather than never running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .hooks import CallHook

__all__ = ["EVENT_HOOKS", "CustomGuardrail", "EventType", "requested_guardrails"]

#: The modes a guardrail may run in (``event_hook``), in the order a request meets them.
EVENT_HOOKS = ("pre_call", "during_call", "post_call", "logging_only")
#: What ``event_hook=None`` means here (see the module docstring).
DEFAULT_EVENT_HOOKS = ("pre_call", "post_call")


class EventType(str):
    """An event name (``"pre_call"``, ...) that also has the ``.value`` of LiteLLM's ``GuardrailEventHooks`` enum,
    so ``should_run_guardrail`` overrides written for LiteLLM (``event_type.value``) and for plain strings
    (``event_type == "pre_call"``) both work."""

    __slots__ = ()

    @property
    def value(self) -> str:
        return str.__str__(self)


def _modes(event_hook: object) -> tuple[str, ...]:
    if event_hook is None:
        return DEFAULT_EVENT_HOOKS
    entries: Sequence[object]
    if isinstance(event_hook, str):
        entries = [event_hook]
    elif isinstance(event_hook, (list, tuple, set, frozenset)):
        entries = list(event_hook)
        if not entries:
            raise ValueError(f"event_hook must name at least one mode of {list(EVENT_HOOKS)}, not []")
    else:
        raise TypeError(
            f"event_hook must be one of {list(EVENT_HOOKS)} or a list of them, e.g. event_hook=['pre_call', "
            f"'post_call'], not {event_hook!r}"
        )
    modes: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise TypeError(f"event_hook entries must be str such as 'pre_call', not {entry!r}")
        mode = str(getattr(entry, "value", entry))  # LiteLLM's GuardrailEventHooks members are str enums
        if mode not in EVENT_HOOKS:
            raise ValueError(f"unknown event_hook {mode!r}; choose from {list(EVENT_HOOKS)}")
        if mode not in modes:
            modes.append(mode)
    return tuple(mode for mode in EVENT_HOOKS if mode in modes)


def _names_in(value: object) -> list[str]:
    """Guardrail names in a ``guardrails`` list: ``"name"`` or LiteLLM's ``{"name": {"extra_body": ...}}``."""
    if not isinstance(value, (list, tuple)):
        return []
    names: list[str] = []
    for entry in value:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, Mapping):
            names.extend(key for key in entry if isinstance(key, str))
    return names


def requested_guardrails(data: Mapping[str, Any], identity_metadata: Mapping[str, Any] | None = None) -> list[str]:
    """The guardrail names a request asks for: ``guardrails`` at the body's root, then ``metadata.guardrails``,
    then the identity's ``metadata["guardrails"]`` (from ``auth``), without repeats::

        >>> requested_guardrails({"guardrails": ["a"], "metadata": {"guardrails": ["b", "a"]}}, {"guardrails": ["c"]})
        ['a', 'b', 'c']
    """
    names = _names_in(data.get("guardrails"))
    metadata = data.get("metadata")
    if isinstance(metadata, Mapping):
        names += _names_in(metadata.get("guardrails"))
    if identity_metadata:
        names += _names_in(identity_metadata.get("guardrails"))
    return list(dict.fromkeys(names))


class CustomGuardrail(CallHook):
    """A guardrail: override :meth:`apply_guardrail` to check or rewrite the texts of requests and responses,
    on every route, streamed or not::

        class NoSecrets(CustomGuardrail):
            async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):
                texts = [t.replace("s3cr3t", "[REDACTED]") for t in inputs["texts"]]
                if any("rm -rf" in t for t in texts):
                    raise RejectRequest("I can't help with that.")
                return {**inputs, "texts": texts}

        guard = NoSecrets(guardrail_name="no-secrets", event_hook=["pre_call", "post_call"], default_on=True)
        app.add_middleware(LLMHookMiddleware, hooks=[guard])

    ``event_hook``: ``"pre_call"`` (before the app; may modify or block), ``"during_call"`` (raced against the
    app; may block, not modify), ``"post_call"`` (the response, streamed or not; may modify or block),
    ``"logging_only"`` (monitor: runs on request and response, recorded, never blocks or modifies), or a list of
    them; ``None`` means ``["pre_call", "post_call"]``. ``default_on=True`` runs it on every request; otherwise a
    request runs it by naming it in ``guardrails`` (at the body's root or in ``metadata``), or the caller's
    identity does in ``user_api_key_dict.metadata["guardrails"]``. Every other keyword (LiteLLM passes many) is
    kept as an attribute; those the middleware reads: ``timeout`` and ``fail_open`` (as for any hook),
    ``stream_holdback_chars`` and ``stream_check_chars`` (streams, see ``docs/guardrails.md``).

    A subclass that overrides LiteLLM's call hooks (``async_pre_call_hook``, ...) instead of
    :meth:`apply_guardrail` has those hooks run, gated by the same selection.
    """

    def __init__(
        self,
        guardrail_name: str | None = None,
        event_hook: Any = None,
        default_on: bool = False,
        *,
        supported_event_hooks: list[Any] | None = None,  # keyword only: LiteLLM's guardrails pass it by name
        **kwargs: Any,
    ) -> None:
        if guardrail_name is not None and (not isinstance(guardrail_name, str) or not guardrail_name):
            raise TypeError(f"guardrail_name must be a non-empty str such as 'no-secrets', not {guardrail_name!r}")
        if not isinstance(default_on, bool):
            raise TypeError(f"default_on must be True or False, not {default_on!r}")
        modes = _modes(event_hook)
        if supported_event_hooks:
            supported = {str(getattr(mode, "value", mode)) for mode in supported_event_hooks}
            unsupported = [mode for mode in modes if mode not in supported and mode != "logging_only"]
            if unsupported:
                raise ValueError(
                    f"event_hook {unsupported} is not in the supported event hooks {sorted(supported)}"
                )
        self.guardrail_name = guardrail_name
        self.supported_event_hooks = supported_event_hooks
        self.event_hook = event_hook
        self.default_on = default_on
        self.event_hooks: tuple[str, ...] = modes  # event_hook as a tuple of modes, worked out once
        for key, value in kwargs.items():
            setattr(self, key, value)

    def get_guardrail_from_metadata(self, data: Mapping[str, Any]) -> list[str]:
        """The guardrail names ``data`` asks for (LiteLLM's name for it): ``guardrails`` at the root, else
        ``metadata.guardrails``."""
        if "guardrails" in data:
            return _names_in(data["guardrails"])
        metadata = data.get("metadata")
        return _names_in(metadata.get("guardrails")) if isinstance(metadata, Mapping) else []

    def should_run_guardrail(self, data: Mapping[str, Any], event_type: Any) -> bool:
        """Whether to run at ``event_type`` (a mode name) for a request with body ``data``.

        True when ``event_hook`` covers the mode and the guardrail is ``default_on`` or named in ``guardrails``.
        The middleware passes ``data`` with ``guardrails`` listing every name the request and the caller's
        identity ask for. Override to add conditions (``return super().should_run_guardrail(...) and ...``).
        """
        if str(getattr(event_type, "value", event_type)) not in self.event_hooks:
            return False
        if self.default_on:
            return True
        name = self.guardrail_name or type(self).__name__
        return name in self.get_guardrail_from_metadata(data)

    async def apply_guardrail(
        self,
        inputs: dict[str, Any],
        request_data: dict[str, Any],
        input_type: str,
        logging_obj: Any = None,
    ) -> dict[str, Any] | None:
        """Check or rewrite ``inputs["texts"]``: return the inputs with changed ``texts`` (same number, all str)
        to rewrite them in place (or change ``inputs["texts"]`` in place), ``None`` or the inputs unchanged to pass,
        raise to block (``RejectRequest``
        for a refusal, an exception with ``status_code`` for an error). ``input_type`` is ``"request"`` or
        ``"response"``; ``inputs`` may also hold ``images``, ``tool_calls``, ``structured_messages``, ``model``.
        """
        return inputs

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(guardrail_name={self.guardrail_name!r}, event_hook={self.event_hook!r}, "
            f"default_on={self.default_on!r})"
        )
