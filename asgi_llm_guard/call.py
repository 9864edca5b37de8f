"""What one guarded request carries through every layer: its wire format, identity, data and hooks, and how a
hook's exception or return value becomes the request's outcome.

The middleware (``middleware.py``) builds a :class:`CallState` per request and drives it; the response pipeline
and the stream rewriter receive it. It sits below all three, so none of them imports another in a circle.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .auth import UserAPIKeyAuth
from .errors import (
    DEPENDENCY_FAILED,
    GuardError,
    Halt,
    RejectRequest,
    dependency_status,
    from_exception,
    is_dependency_error,
    log_exception,
)
from .formats import RequestedFormat, WireFormat
from .guardrail_engine import GuardrailRun
from .hooks import HOOK_ERRORS, BoundHook, HookSet, HookTimeout, cancelling, log_hook_exception
from .observe import Observer

logger = logging.getLogger("asgi_llm_guard")

#: Stands in until the identity is known (a failure before that reports an empty identity).
NO_USER = UserAPIKeyAuth()
_NOT_STREAMED = RequestedFormat()


@dataclass
class GuardState:
    """What the downstream app finds in ``scope["state"]["llm_guard"]`` (``request.state.llm_guard``)."""

    call_type: str
    user_api_key_dict: UserAPIKeyAuth
    data: dict[str, Any]


@dataclass(frozen=True)
class CallSettings:
    """The middleware's options that every request reads, built once at construction."""

    hooks: HookSet
    observer: Observer | None
    expose_hook_errors: bool
    failure_wants_traceback: bool  # a failure hook takes traceback_str: format one per failure
    plain_responses: bool  # no hook reads a response, whatever its status


class CallState:
    """The state of one guarded request that the middleware, the response pipeline and the stream rewriter share;
    never shared between requests."""

    __slots__ = (
        "settings", "hooks", "wire", "call_type", "data", "requested", "model", "user", "args", "plain_response",
        "client_gone", "_failure_reported", "guardrail_run", "stopping",
    )

    def __init__(self, settings: CallSettings, wire: WireFormat, model: str) -> None:
        self.settings = settings
        self.hooks = settings.hooks
        self.wire = wire
        self.call_type = wire.call_type
        self.data: dict[str, Any] = {}
        # the form a refusal takes (docs/reference.md#refusals), read before any hook ran
        self.requested = _NOT_STREAMED
        self.model = model  # the model the client asked for: what a refusal names (docs/reference.md#refusals)
        self.user = NO_USER
        self.args: dict[str, Any] = {}
        # No hook reads the response, whatever its status: the response pipeline forwards it as it comes.
        self.plain_response = settings.plain_responses
        self.client_gone = False  # the client left: the request is being cancelled
        self._failure_reported = False
        #: Tasks the request cancelled and has not awaited (the app, moderation hooks after a rejection): the
        #: middleware awaits them, bounded, once the client has its answer.
        self.stopping: list[asyncio.Future[Any]] | None = None
        self.guardrail_run: GuardrailRun | None = None  # the request's guardrails, when there are any

    # -- outcomes --------------------------------------------------------------------------------------------

    def outcome(self, exc: BaseException, hook: BoundHook, stage: str) -> RejectRequest | GuardError:
        """What the client gets for an exception a hook raised at ``stage``."""
        if isinstance(exc, RejectRequest):
            exc.stage, exc.hook = stage, hook.name
            return exc
        if isinstance(exc, HookTimeout):
            return GuardError(503, str(exc), type="timeout_error", stage=stage, hook=hook.name)
        error = from_exception(exc, stage=stage)
        if error is not None:
            error.stage = error.stage or stage
            error.hook = error.hook or hook.name
            return error
        if is_dependency_error(exc):
            # What a provider SDK raised for the hook's own call (the service's key, its quota): a 502, with the
            # provider's status and message in the ERROR log only (see errors.py).
            what = f"{stage} hook {hook.name} (a call it made{dependency_status(exc)})"
            log_exception(what, exc, expose=True)  # the operator's to fix: docs/reference.md#privacy
            return GuardError(502, f"{stage} hook {hook.name} failed: {DEPENDENCY_FAILED}", stage=stage, hook=hook.name)
        expose = self.settings.expose_hook_errors
        log_hook_exception(hook, exc, expose)
        message = f"{stage} hook {hook.name} failed"
        if expose:
            message += f": {type(exc).__name__}: {exc}"
        return GuardError(500, message, stage=stage, hook=hook.name)

    def cancelled(self) -> bool:
        """Whether this request is being cancelled: a ``CancelledError`` is then that cancellation, not a hook's
        (or the app's) own failure."""
        return self.client_gone or cancelling()

    def hook_failed(self, exc: BaseException, hook: BoundHook, stage: str) -> Halt:
        """The :class:`Halt` for what a hook raised at ``stage``; a ``CancelledError`` while this request is being
        cancelled is re-raised instead: the cancellation goes on."""
        if isinstance(exc, asyncio.CancelledError) and self.cancelled():
            raise exc
        return Halt(self.outcome(exc, hook, stage), exc)

    def wrong_type(self, hook: BoundHook, result: object, expected: str) -> GuardError:
        logger.error(
            "%s hook %s returned %s; it must return %s", hook.stage, hook.name, type(result).__name__, expected
        )
        return GuardError(500, f"{hook.stage} hook {hook.name} failed", stage=hook.stage, hook=hook.name)

    async def run_hook(self, hook: BoundHook, arguments: Mapping[str, Any], stage: str) -> Any:
        """Call one hook: what it returns, or :class:`Halt` with the outcome of its failure. A timed-out
        ``fail_open`` hook counts as having returned ``None`` (docs/reference.md#timeouts)."""
        try:
            if hook.direct:
                return await hook.invoke(arguments)
            return await hook.call(arguments)
        except HookTimeout as exc:
            if hook.fail_open:
                logger.warning("%s; going on without it (fail_open)", exc)
                return None
            raise Halt(self.outcome(exc, hook, stage), exc) from None
        except HOOK_ERRORS as exc:
            raise self.hook_failed(exc, hook, stage) from None

    def unencodable(self, exc: TypeError, hooks: tuple[BoundHook, ...], stage: str) -> Halt:
        """What orjson could not write back: nesting deeper than its 254 levels (the client's doing: orjson reads
        1024) is a 400; anything else is a value a hook put there (a set, an object) and so that hook's 500."""
        if "Recursion limit" in str(exc) or not hooks:
            error = GuardError(400, "The request body is nested too deeply (more than 254 levels).")
        else:
            hook = hooks[-1]
            logger.error("%s hook %s left a value that is not JSON: %s", stage, hook.name, exc)
            error = GuardError(500, f"{stage} hook {hook.name} failed", stage=stage, hook=hook.name)
        return Halt(error, exc)

    def app_outcome(self, exc: BaseException) -> GuardError:
        error = from_exception(exc)
        if error is not None:
            return error
        if is_dependency_error(exc):  # the app's own call to a provider failed: not the client's doing
            return GuardError(502, f"The downstream app failed: {DEPENDENCY_FAILED}.")
        return GuardError(500, "The downstream app failed while handling the request.")

    async def report_failure(self, original: BaseException) -> GuardError | None:
        """Call the failure hooks once for this request; returns the error a hook put in place, if any."""
        if self._failure_reported:
            return None
        self._failure_reported = True
        hooks = self.hooks.failure
        if not hooks:
            return None
        args = self.args or {"user_api_key_dict": self.user, "data": self.data}
        args["request_data"] = self.data
        args["original_exception"] = original
        if self.settings.failure_wants_traceback:  # formatting one costs more than most refusals: only when asked
            args["traceback_str"] = "".join(traceback.format_exception(original))
        replacement: GuardError | None = None
        for hook in hooks:
            try:
                result = await hook.call(args)
            except HookTimeout as exc:
                logger.warning("%s", exc)
                continue
            except HOOK_ERRORS as exc:
                if isinstance(exc, asyncio.CancelledError) and cancelling():
                    raise
                error = from_exception(exc)
                if error is None:
                    log_hook_exception(hook, exc, self.settings.expose_hook_errors)
                else:
                    replacement = error
                continue
            if isinstance(result, BaseException):
                error = from_exception(result)
                if error is not None:
                    replacement = error
        return replacement

    # -- the request hooks ----------------------------------------------------------------------------------

    async def pre_call(self) -> tuple[str, BoundHook] | None:
        """Run the pre-call hooks; a refusal (a returned string) comes back with its hook, not raised: it is an
        answer, not an accident, and raising costs more than the refusal itself."""
        args = self.args
        for hook in self.hooks.pre_call:
            if hook.direct:  # run_hook's work, one coroutine less
                try:
                    result = await hook.invoke(args)
                except HOOK_ERRORS as exc:
                    raise self.hook_failed(exc, hook, "pre_call") from None
            else:
                result = await self.run_hook(hook, args, "pre_call")
            if result is None:
                continue
            if isinstance(result, dict):
                self.data = args["data"] = args["request_data"] = result
            elif isinstance(result, str):
                return result, hook
            elif isinstance(result, Exception):
                raise Halt(self.outcome(result, hook, "pre_call"), result)
            else:
                error = self.wrong_type(hook, result, "a dict, None, a str or an exception")
                raise Halt(error, TypeError(error.message))
        return None

    async def moderate(self) -> None:
        hooks = self.hooks.moderation
        if len(hooks) == 1:
            await self.run_hook(hooks[0], self.args, "moderation")
            return
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self.run_hook(hook, self.args, "moderation")) for hook in hooks]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:  # the first failure in hook order decides, as it would run one by one
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            # Not awaited here: a hook slow to stop (or swallowing its cancellation) must not delay the answer.
            left = [task for task in tasks if not task.done()]
            for task in left:
                task.cancel()
            if left:
                self.stopping = [*(self.stopping or ()), *left]

    async def complete(self, status: int) -> None:
        """Run the completion hooks once the request is over: what they raise is logged, never answered."""
        arguments = {
            "request_data": self.data,
            "user_api_key_dict": self.user,
            "status_code": status,
            "call_type": self.call_type,
        }
        for hook in self.hooks.complete:
            try:
                await hook.call(arguments)
            except HOOK_ERRORS as exc:
                if isinstance(exc, asyncio.CancelledError) and cancelling():
                    raise
                log_hook_exception(hook, exc, self.settings.expose_hook_errors)
