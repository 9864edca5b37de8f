"""How the middleware runs :class:`~asgi_llm_guard.guardrails.CustomGuardrail` objects (docs/reference.md#guardrails).

Each guardrail becomes ordinary bound hooks at construction, in the position it has in ``hooks=``, so refusals,
errors, timeouts, the moderation race and stream endings are those of every other hook:

===============  ==========================================================================================
mode             runs as
===============  ==========================================================================================
``pre_call``     a pre-call hook: request texts in, rewritten texts written back before the app is called
``during_call``  a moderation hook: raced against the app; may block, its rewrites are ignored
``post_call``    a success hook (JSON responses) and a stream iterator hook (``holdback.py`` windows)
``logging_only`` a moderation hook, a success hook and a stream iterator hook that never block or modify
===============  ==========================================================================================

A guardrail that overrides LiteLLM's call hooks instead of ``apply_guardrail`` has those hooks bound, each
behind a gate asking the same selection. Per request, a :class:`GuardrailRun` (``args["guardrail_run"]``) holds
the names the request and the caller asked for, the guardrails that ran (the ``x-llm-guard-applied-guardrails``
header) and which decisions were recorded, so that a selected guardrail that never ran is recorded as
``not_run`` with its reason when the request ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .errors import RejectRequest, is_dependency_error, status_of
from .formats import ALL_CHANNELS, FORMATS, StreamText
from .guardrail_texts import Channel, Slot, request_extras, request_slots, response_extras, response_slots
from .guardrails import CustomGuardrail, EventType, requested_guardrails
from .holdback import DEFAULT_CHECK_CHARS, DEFAULT_HOLDBACK_CHARS, HeldText
from .hooks import HOOK_ERRORS, HOOK_METHODS, BoundHook, HookTimeout, bind_method, cancelling, field_of, off_loop
from .observe import Observer

logger = logging.getLogger("asgi_llm_guard")

HEADER = b"x-llm-guard-applied-guardrails"
#: The identity of the request a guardrail runs for (``apply_guardrail`` has LiteLLM's signature, which has no
#: place for it); set per request, only when guardrails are configured.
_CURRENT_USER: contextvars.ContextVar[Any] = contextvars.ContextVar("asgi_llm_guard_user", default=None)


def current_user() -> Any:
    """The ``UserAPIKeyAuth`` of the request a guardrail is running for (``None`` outside one)::

        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):
            user = current_user()
            if user is not None and user.team_id == "trusted":
                return None
    """
    return _CURRENT_USER.get()
_BLOCKING_MODES = ("pre_call", "during_call", "post_call")
#: Call hooks of a guardrail that does not use ``apply_guardrail``, and the mode that gates each.
_GATED = {
    "async_pre_call_hook": "pre_call",
    "async_moderation_hook": "during_call",
    "async_post_call_success_hook": "post_call",
    "async_post_call_streaming_hook": "post_call",
    "async_post_call_streaming_iterator_hook": "post_call",
}
#: Where each mode is recorded: (mode, input type) pairs a selected guardrail must have a decision for.
_SIDES = {
    "pre_call": ("request",),
    "during_call": ("request",),
    "post_call": ("response",),
    "logging_only": ("request", "response"),
}


class GuardrailResultError(Exception):
    """A guardrail returned something that cannot be written back (wrong shape, count or type of texts)."""


def _overrides(guard: object, name: str) -> bool:
    method = getattr(type(guard), name, None)
    return method is not None and method is not getattr(CustomGuardrail, name, None)


def _positive(value: object, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{name} must be a non-negative int (characters), not {value!r}")
    return value


class Guardrail:
    """One guardrail as bound at construction: its name, modes, limits and adapters."""

    def __init__(self, guard: CustomGuardrail, timeout: float | None, fail_open: bool, observer: Observer | None):
        self.guard = guard
        self.name = guard.guardrail_name or type(guard).__name__
        # A guardrail is a hook: its 500 says "<stage> hook <ClassName> failed" like any other hook's
        # (docs/reference.md#errors); its guardrail_name is in the applied-guardrails header, its decision and the log.
        self.display = type(guard).__name__
        self.modes: tuple[str, ...] = getattr(guard, "event_hooks", ("pre_call", "post_call"))
        self.timeout = timeout
        self.fail_open = fail_open
        self.observer = observer
        self.holdback = _positive(getattr(guard, "stream_holdback_chars", None), "stream_holdback_chars",
                                  DEFAULT_HOLDBACK_CHARS)
        self.check_every = max(1, _positive(getattr(guard, "stream_check_chars", None), "stream_check_chars",
                                            DEFAULT_CHECK_CHARS))
        call_types: Any = getattr(guard, "call_types", None)
        self.call_types: frozenset[str] | None = frozenset(call_types) if call_types is not None else None
        self.default_selection = not _overrides(guard, "should_run_guardrail")
        self.hooks: dict[str, BoundHook] = {}

    # -- binding -----------------------------------------------------------------------------------------

    def bind(self) -> list[tuple[str, BoundHook]]:
        guard = self.guard
        bound: list[tuple[str, BoundHook]] = []
        uses_apply = _overrides(guard, "apply_guardrail") or not any(_overrides(guard, m) for m in _GATED)
        if uses_apply:
            plan: dict[str, list[tuple[str, str, Callable[..., Any], tuple[str, ...]]]] = {
                "pre_call": [("pre_call", "async_pre_call_hook", self.pre_call, ("data", "call_type"))],
                "during_call": [("moderation", "async_moderation_hook", self.during_call, ("data", "call_type"))],
                "post_call": [
                    ("success", "async_post_call_success_hook", self.post_call, ("data", "response")),
                    ("streaming_iterator", "async_post_call_streaming_iterator_hook", self.post_call_stream,
                     ("response", "request_data")),
                ],
                "logging_only": [
                    ("moderation", "async_moderation_hook", self.log_request, ("data", "call_type")),
                    ("success", "async_post_call_success_hook", self.log_response, ("data", "response")),
                    ("streaming_iterator", "async_post_call_streaming_iterator_hook", self.log_stream,
                     ("response", "request_data")),
                ],
            }
            for mode in self.modes:
                for field_name, method_name, method, arguments in plan[mode]:
                    hook = BoundHook(
                        name=self.display,
                        method_name=method_name,
                        method=method,
                        keywords=(),
                        positional=("guardrail_run", *arguments),
                        timeout=None,  # apply_guardrail is bounded inside, so a timeout can be recorded
                        fail_open=self.fail_open,
                        observer=self.observer,
                        observes_only=mode == "logging_only",
                    )
                    self.hooks[f"{mode}:{field_name}"] = hook
                    bound.append((field_name, hook))
        else:
            for method_name, mode in _GATED.items():
                if _overrides(guard, method_name):
                    inner = bind_method(guard, method_name, self.timeout, self.fail_open, self.observer)
                    bound.append((field_of(method_name), self._gated(inner, mode)))
        for method_name in ("async_post_call_failure_hook", "async_post_call_complete_hook"):
            if _overrides(guard, method_name):
                bound.append((field_of(method_name), bind_method(guard, method_name, self.timeout,
                                                                 self.fail_open, self.observer)))
        return bound

    def _gated(self, inner: BoundHook, mode: str) -> BoundHook:
        offered = HOOK_METHODS[inner.method_name]
        passthrough = "response" if inner.method_name == "async_post_call_streaming_iterator_hook" else None

        async def gate(run: GuardrailRun, *values: Any) -> Any:
            arguments = dict(zip(offered, values, strict=True))
            arguments.setdefault("request_data", run.data)  # a per-chunk hook adapted from LiteLLM names it
            data = arguments.get("data", arguments.get("request_data", run.data))
            if not run.selects(self, mode, data):
                return arguments[passthrough] if passthrough else None
            run.ran(self)
            started = time.perf_counter()
            try:
                # a sync override runs in a worker thread, as every sync hook method does (hooks.py)
                result = inner.invoke(arguments) if passthrough else await inner.invoke_off_loop(arguments)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                run.record(self, mode, "request", _blocked_or_error(exc), time.perf_counter() - started,
                           type(exc).__name__)
                raise
            if passthrough is None and inner.method_name != "async_post_call_streaming_hook":
                decision = "modify" if result is not None and mode != "during_call" else "allow"
                side = "response" if mode == "post_call" else "request"
                run.record(self, mode, side, decision, time.perf_counter() - started, None)
            return result

        return BoundHook(
            name=inner.name,
            method_name=inner.method_name,
            method=gate,
            keywords=(),
            positional=("guardrail_run", *offered),
            timeout=inner.timeout,
            fail_open=inner.fail_open,
            observer=inner.observer,
        )

    # -- one call of apply_guardrail ---------------------------------------------------------------------

    async def check(
        self,
        run: GuardrailRun,
        mode: str,
        texts: list[str],
        extras: dict[str, Any],
        data: Any,
        input_type: str,
        hook: BoundHook,
        tally: Tally | None = None,
    ) -> tuple[list[str] | None, Any]:
        """Call ``apply_guardrail``; returns ``(new texts or None, stream_holdback_chars)``. Records its decision
        (into ``tally`` for the calls of a stream, recorded once at its end); raises what blocks."""
        run.ran(self)
        monitor = mode == "logging_only"
        inputs = {"texts": list(texts), **extras}
        started = time.perf_counter()

        def done(decision: str, reason: str | None = None) -> None:
            seconds = time.perf_counter() - started
            if tally is not None and decision in ("allow", "modify"):
                tally.add(decision, seconds)
            else:
                if tally is not None:
                    seconds += tally.seconds
                    tally.recorded = True
                run.record(self, mode, input_type, decision, seconds, reason)

        try:
            apply = self.guard.apply_guardrail
            if inspect.iscoroutinefunction(apply):
                result: Any = apply(inputs, data, input_type)
            else:  # a sync apply_guardrail runs in a worker thread, as every sync hook method does (hooks.py)
                result = off_loop(apply, inputs, data, input_type)
            if inspect.isawaitable(result):
                if self.timeout is None:
                    result = await result
                else:
                    try:
                        result = await asyncio.wait_for(result, self.timeout)
                    except asyncio.TimeoutError:
                        raise HookTimeout(hook, self.timeout) from None
        except HookTimeout as exc:
            done("error", f"timed out after {exc.seconds:g}s")
            if monitor or self.fail_open:
                logger.warning("%s; going on without it (%s)", exc, "logging_only" if monitor else "fail_open")
                return None, None
            raise
        except HOOK_ERRORS as exc:
            if isinstance(exc, asyncio.CancelledError) and cancelling():
                done("not_run", "cancelled (the request ended first)")
                raise
            # anything else, a CancelledError of the guardrail's own included, is its decision or its failure
            decision = _blocked_or_error(exc)
            if monitor:
                done("flag" if decision == "block" else "error", type(exc).__name__)
                if decision == "error":
                    logger.warning("logging_only guardrail %s raised %s (ignored)", self.name, type(exc).__name__)
                return None, None
            done(decision, type(exc).__name__)
            raise
        if result is None:
            # None passes, but a guard that rewrote inputs["texts"] in place (LiteLLM's handlers read the texts
            # back from the inputs) meant a rewrite: take it rather than let the unmasked text through.
            result = inputs
        try:
            new = _texts_of(result, texts)
        except GuardrailResultError as exc:
            done("error", str(exc))
            if monitor:
                logger.warning("logging_only guardrail %s: %s (ignored)", self.name, exc)
                return None, None
            raise GuardrailResultError(f"guardrail {self.name!r} {exc}") from None
        holdback = result.get("stream_holdback_chars") if isinstance(result, Mapping) else None
        if new is None:
            done("allow")
            return None, holdback
        if monitor:
            done("flag", "would modify")
            return None, holdback
        if mode == "during_call":
            logger.warning("during_call guardrail %s rewrote texts; a during_call guardrail cannot modify "
                           "(the app already has the request), so the rewrite was ignored", self.name)
            done("allow", "during_call cannot modify; rewrite ignored")
            return None, holdback
        done("modify")
        return new, holdback

    # -- adapters ----------------------------------------------------------------------------------------

    async def _request(self, run: GuardrailRun, data: Any, call_type: str, mode: str, hook: str) -> None:
        if not isinstance(data, dict) or not run.selects(self, mode, data):
            return
        slots = request_slots(data, call_type)
        extras = request_extras(data, call_type)
        if not slots and "tool_calls" not in extras and "images" not in extras:
            run.record(self, mode, "request", "not_run", 0.0, "the request has no text")
            return
        texts = [container[key] for container, key in slots]
        new, _ = await self.check(run, mode, texts, extras, data, "request", self.hooks[hook])
        if new is not None:
            _write(slots, new)

    async def pre_call(self, run: GuardrailRun, data: Any, call_type: str) -> None:
        await self._request(run, data, call_type, "pre_call", "pre_call:pre_call")

    async def during_call(self, run: GuardrailRun, data: Any, call_type: str) -> None:
        await self._request(run, data, call_type, "during_call", "during_call:moderation")

    async def log_request(self, run: GuardrailRun, data: Any, call_type: str) -> None:
        await self._request(run, data, call_type, "logging_only", "logging_only:moderation")

    async def _response(self, run: GuardrailRun, data: Any, response: Any, mode: str, hook: str) -> None:
        if not run.selects(self, mode, data):
            return
        slots = response_slots(response, run.call_type)
        extras = response_extras(response, run.call_type)
        if not slots and "tool_calls" not in extras:
            run.record(self, mode, "response", "not_run", 0.0, "the response has no text")
            return
        texts = [container[key] for container, key in slots]
        new, _ = await self.check(run, mode, texts, extras, data, "response", self.hooks[hook])
        if new is not None:
            _write(slots, new)

    async def post_call(self, run: GuardrailRun, data: Any, response: Any) -> None:
        await self._response(run, data, response, "post_call", "post_call:success")

    async def log_response(self, run: GuardrailRun, data: Any, response: Any) -> None:
        await self._response(run, data, response, "logging_only", "logging_only:success")

    async def post_call_stream(self, run: GuardrailRun, response: Any, request_data: Any) -> Any:
        if not run.selects(self, "post_call", request_data):
            return response
        form = _stream_text(run.call_type)
        if form is None:
            run.record(self, "post_call", "response", "not_run", 0.0, f"a {run.call_type} stream carries no text")
            return response
        run.ran(self)
        return self._held_stream(run, response, request_data, form)

    async def log_stream(self, run: GuardrailRun, response: Any, request_data: Any) -> Any:
        if not run.selects(self, "logging_only", request_data):
            return response
        form = _stream_text(run.call_type)
        if form is None:
            run.record(self, "logging_only", "response", "not_run", 0.0, f"a {run.call_type} stream carries no text")
            return response
        run.ran(self)
        return self._watched_stream(run, response, request_data, form)

    async def _held_stream(
        self, run: GuardrailRun, source: AsyncIterator[dict[str, Any]], data: Any, form: StreamText
    ) -> AsyncIterator[dict[str, Any]]:
        """The stream with every text delta held back and released through the guardrail (``holdback.py``)."""
        hook = self.hooks["post_call:streaming_iterator"]
        channels: dict[Channel, HeldText] = {}
        templates: dict[Channel, dict[str, Any]] = {}
        emitted: dict[Channel, list[str]] = {}
        extras = {"model": data["model"]} if isinstance(data, dict) and isinstance(data.get("model"), str) else {}
        tally = Tally()
        shift = 0  # sequence numbers added (carriers) minus dropped (held deltas), for sequenced formats

        async def window(held: HeldText, final: bool) -> str:
            new, holdback = await self.check(run, "post_call", [held.window], extras, data, "response", hook, tally)
            if holdback is not None:
                held.set_holdback(holdback)
            return held.release(held.window if new is None else new[0], final)

        try:
            async for chunk in source:
                closes = form.closes(chunk)
                if closes:
                    targets = list(channels) if closes == ALL_CHANNELS else [c for c in closes if c in channels]
                    for channel in targets:
                        held = channels[channel]
                        if not held.window:
                            continue
                        text = await window(held, final=True)
                        if text:
                            carrier = form.carrier(templates[channel], text)
                            if form.sequenced:
                                emitted[channel].append(text)
                                sequence = chunk.get("sequence_number")
                                if isinstance(sequence, int):
                                    carrier["sequence_number"] = sequence + shift
                                    shift += 1
                            yield carrier
                slots = form.slots(chunk)
                if slots:
                    released = False
                    for channel, container, key in slots:
                        found = channels.get(channel)
                        if found is None:
                            held = channels[channel] = HeldText(self.holdback, self.check_every)
                            emitted[channel] = []
                        else:
                            held = found
                        templates[channel] = chunk
                        text = await window(held, final=False) if held.add(container[key]) else ""
                        container[key] = text
                        if text:
                            released = True
                            if form.sequenced:
                                emitted[channel].append(text)
                    if not released and form.text_only(chunk):
                        shift -= 1
                        continue
                for channel, container, key in form.echoes(chunk):
                    text = container.get(key)
                    if channel not in emitted and isinstance(text, str) and text:
                        # a text the stream never sent as deltas, only whole here: checked here, once
                        new, _ = await self.check(run, "post_call", [text], extras, data, "response", hook, tally)
                        container[key] = text if new is None else new[0]
                        emitted[channel] = [container[key]]
                if form.sequenced:
                    form.complete(chunk, {channel: "".join(parts) for channel, parts in emitted.items()})
                    sequence = chunk.get("sequence_number")
                    if shift and isinstance(sequence, int):
                        chunk["sequence_number"] = sequence + shift
                yield chunk
            for channel, held in channels.items():  # a stream that ended without closing its texts
                if held.window:
                    text = await window(held, final=True)
                    if text:
                        yield form.carrier(templates[channel], text)
        finally:
            if not tally.recorded:
                if tally.calls:
                    run.record(self, "post_call", "response", tally.decision, tally.seconds, None)
                else:
                    run.record(self, "post_call", "response", "not_run", 0.0, "the stream had no text")

    async def _watched_stream(
        self, run: GuardrailRun, source: AsyncIterator[dict[str, Any]], data: Any, form: StreamText
    ) -> AsyncIterator[dict[str, Any]]:
        """The stream as it is; its whole text goes to the guardrail once, at the end (monitor)."""
        pieces: dict[Channel, list[str]] = {}
        completed = False
        try:
            async for chunk in source:
                for channel, container, key in form.slots(chunk):
                    pieces.setdefault(channel, []).append(container[key])
                yield chunk
            completed = True
        finally:
            if not completed:
                run.record(self, "logging_only", "response", "not_run", 0.0, "the stream did not finish")
        texts = ["".join(parts) for parts in pieces.values()]
        extras = {"model": data["model"]} if isinstance(data, dict) and isinstance(data.get("model"), str) else {}
        if texts:
            await self.check(run, "logging_only", texts, extras, data, "response",
                             self.hooks["logging_only:streaming_iterator"])
        else:
            run.record(self, "logging_only", "response", "not_run", 0.0, "the stream had no text")


class Tally:
    """The calls of one stream's guardrail, recorded as one decision when the stream ends."""

    __slots__ = ("calls", "seconds", "decision", "recorded")

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.decision = "allow"
        self.recorded = False

    def add(self, decision: str, seconds: float) -> None:
        self.calls += 1
        self.seconds += seconds
        if decision == "modify":
            self.decision = "modify"


def _stream_text(call_type: str) -> StreamText | None:
    """How the call type's stream events carry text (its wire format's), ``None`` for a stream with none."""
    wire = FORMATS.get(call_type)
    if wire is None or type(wire.stream_text) is StreamText:
        return None
    return wire.stream_text


def _blocked_or_error(exc: BaseException) -> str:
    status = status_of(exc)
    if isinstance(exc, RejectRequest) or (status is not None and status < 500 and not is_dependency_error(exc)):
        return "block"
    return "error"


def _texts_of(result: Any, texts: list[str]) -> list[str] | None:
    """The rewritten texts of a guardrail's result, ``None`` when unchanged; raises for a wrong shape."""
    if result is None:
        return None
    if not isinstance(result, Mapping):
        raise GuardrailResultError(f"returned {type(result).__name__}; return the inputs dict or None")
    if "texts" not in result:
        return None
    new = result["texts"]
    if not isinstance(new, (list, tuple)):
        raise GuardrailResultError(f"returned texts as {type(new).__name__}; return a list of str")
    if len(new) != len(texts):
        raise GuardrailResultError(f"returned {len(new)} texts for {len(texts)}; return one text for each")
    if not all(isinstance(text, str) for text in new):
        raise GuardrailResultError("returned texts that are not all str")
    if list(new) == texts:
        return None
    return list(new)


def _write(slots: list[Slot], texts: list[str]) -> None:
    for (container, key), text in zip(slots, texts, strict=True):
        container[key] = text


class GuardrailRun:
    """One request's guardrails: what it asked for, what ran, what was recorded."""

    __slots__ = ("engine", "call_type", "data", "requested", "applied", "recorded", "_selected")

    def __init__(self, engine: GuardrailEngine, data: dict[str, Any], user: Any, call_type: str) -> None:
        _CURRENT_USER.set(user)
        metadata = getattr(user, "metadata", None)
        self.engine = engine
        self.call_type = call_type
        self.data = data
        self.requested = requested_guardrails(data, metadata if isinstance(metadata, Mapping) else None)
        self.applied: list[str] = []
        self.recorded: set[tuple[int, str, str]] = set()
        self._selected: dict[tuple[int, str], bool] = {}

    def selects(self, guardrail: Guardrail, mode: str, data: Any) -> bool:
        """Whether ``guardrail`` runs in ``mode`` for this request (worked out once per request and mode)."""
        key = (id(guardrail), mode)
        known = self._selected.get(key)
        if known is not None:
            return known
        if guardrail.call_types is not None and self.call_type not in guardrail.call_types:
            chosen = False
        elif guardrail.default_selection:
            guard = guardrail.guard
            chosen = mode in guardrail.modes and (guard.default_on or guardrail.name in self.requested)
        else:
            view = {**(data if isinstance(data, Mapping) else self.data), "guardrails": list(self.requested)}
            chosen = bool(guardrail.guard.should_run_guardrail(view, EventType(mode)))
        self._selected[key] = chosen
        return chosen

    def ran(self, guardrail: Guardrail) -> None:
        if guardrail.name not in self.applied:
            self.applied.append(guardrail.name)

    def record(
        self, guardrail: Guardrail, mode: str, input_type: str, decision: str, seconds: float, reason: str | None
    ) -> None:
        self.recorded.add((id(guardrail), mode, input_type))
        logger.debug(
            "guardrail %s %s (%s): %s in %.2f ms%s", guardrail.name, mode, input_type, decision, seconds * 1000,
            f" ({reason})" if reason else "",
        )
        observer = self.engine.observer
        if observer is not None:
            observer.guardrail_finished(guardrail.name, mode, decision, seconds, reason)

    def header(self) -> tuple[bytes, bytes] | None:
        """``x-llm-guard-applied-guardrails`` for the answer, once a guardrail ran."""
        if not self.applied:
            return None
        return HEADER, ",".join(self.applied).encode("utf-8", "replace")

    def finish(self, status: int) -> None:
        """Record ``not_run`` for every selected guardrail that has no decision: nothing is skipped silently."""
        for guardrail in self.engine.guardrails:
            for mode in guardrail.modes:
                for side in _SIDES[mode]:
                    if (id(guardrail), mode, side) in self.recorded or not self.selects(guardrail, mode, self.data):
                        continue
                    if side == "request":
                        reason = f"the request ended before this stage (status {status})"
                    elif status >= 400:
                        reason = f"the answer was an error (status {status})"
                    else:
                        reason = "no response text reached it (a refusal, or a body neither JSON nor an event stream)"
                    self.record(guardrail, mode, side, "not_run", 0.0, reason)


class GuardrailEngine:
    """The guardrails of one middleware; :meth:`expand` is given to ``bind_hooks``."""

    def __init__(self, observer: Observer | None) -> None:
        self.observer = observer
        self.guardrails: list[Guardrail] = []

    def expand(self, hook: object, timeout: float | None, fail_open: bool) -> list[tuple[str, BoundHook]] | None:
        if not isinstance(hook, CustomGuardrail):
            return None
        guardrail = Guardrail(hook, timeout, fail_open, self.observer)
        self.guardrails.append(guardrail)
        return guardrail.bind()

    def start(self, data: dict[str, Any], user: Any, call_type: str) -> GuardrailRun:
        return GuardrailRun(self, data, user, call_type)


def strip_guardrail_fields(data: dict[str, Any]) -> None:
    """Remove what only the guard reads before the body is forwarded: ``guardrails`` at the root and in
    ``metadata`` (a ``metadata`` left empty goes too: the client sent it for the guard)."""
    data.pop("guardrails", None)
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and "guardrails" in metadata:
        del metadata["guardrails"]
        if not metadata:
            del data["metadata"]
