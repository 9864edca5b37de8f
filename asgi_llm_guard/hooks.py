"""Hook discovery, binding and calling (docs/reference.md#construction, #hooks).

A hook is any object with at least one of :data:`HOOK_METHODS`; it need not subclass :class:`CallHook`. Methods
are called by parameter name, worked out once at construction, so the full LiteLLM signatures and the shorter ones
its documentation shows (``async_moderation_hook(self, data)``) both work. Two differences from LiteLLM, on
purpose: an inherited ``async_pre_call_hook`` runs (LiteLLM only calls one defined on the class itself), and the
no-op defaults of :class:`CallHook` are never called at all, so subclassing it costs nothing per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from .errors import RejectRequest, is_dependency_error, log_exception, status_of
from .observe import Observer

logger = logging.getLogger("asgi_llm_guard")

#: Each hook method with the arguments the middleware offers it, in LiteLLM's positional order.
HOOK_METHODS: dict[str, tuple[str, ...]] = {
    "async_pre_call_hook": ("user_api_key_dict", "cache", "data", "call_type"),
    "async_moderation_hook": ("data", "user_api_key_dict", "call_type"),
    "async_post_call_success_hook": ("data", "user_api_key_dict", "response"),
    "async_post_call_failure_hook": ("request_data", "original_exception", "user_api_key_dict"),
    "async_post_call_streaming_hook": ("user_api_key_dict", "response"),
    "async_post_call_streaming_iterator_hook": ("user_api_key_dict", "response", "request_data"),
    # Ours, not LiteLLM's: once per guarded request after it ended, whatever the outcome (see CallHook).
    "async_post_call_complete_hook": ("request_data", "user_api_key_dict", "status_code"),
}

#: Arguments a method gets only when it names a parameter after them (LiteLLM adapters need them; LiteLLM's own
#: signatures do not have them, so they are never handed out by position).
_BY_NAME_ONLY: dict[str, tuple[str, ...]] = {
    "async_post_call_streaming_hook": ("request_data",),
    "async_post_call_complete_hook": ("call_type",),
}

#: Other names a parameter may have, mapped to the argument they receive.
_ALIASES = {
    "request_data": "data",
    "data": "request_data",
    "exception": "original_exception",
    "user_api_key_auth": "user_api_key_dict",
    "traceback_str": "traceback_str",
}


class CallHook:
    """Optional base class for hooks: every hook method as an async no-op (LiteLLM's ``CustomLogger`` shape).

    Override the methods you need; the no-op ones are skipped by the middleware. Parameters are typed ``Any`` so
    that overrides annotated as in LiteLLM's documentation (``call_type: Literal[...]``) type-check::

        class BlockWord(CallHook):
            async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
                if "forbidden" in str(data):
                    return "I can't help with that."
                return data
    """

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any
    ) -> dict[str, Any] | str | Exception | None:
        return None

    async def async_moderation_hook(
        self, data: Any, user_api_key_dict: Any, call_type: Any
    ) -> Any:
        return None

    async def async_post_call_success_hook(
        self, data: Any, user_api_key_dict: Any, response: Any
    ) -> Any:
        return None

    async def async_post_call_failure_hook(
        self, request_data: Any, original_exception: Any, user_api_key_dict: Any
    ) -> Any:
        return None

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: Any) -> Any:
        return None

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: Any
    ) -> Any:
        return response

    async def async_post_call_complete_hook(
        self, request_data: Any, user_api_key_dict: Any, status_code: Any
    ) -> None:
        """Not in LiteLLM: called once per guarded request when it has ended, whatever the outcome (success,
        refusal, error, a stream that finished or broke, a client that left: ``status_code`` 499). What it
        raises is logged. Use it to release what a pre-call hook acquired, as the built-in limiter does."""
        return None


#: What a hook call may raise that is the hook's own failure: any ``Exception``, and a ``CancelledError`` the hook
#: raised of its own accord (it awaited a task that something else cancelled), told apart by :func:`cancelling`.
HOOK_ERRORS = (Exception, asyncio.CancelledError)


def cancelling() -> bool:
    """Whether the running task has been asked to cancel (its client left, the server is shutting down), so that
    a ``CancelledError`` is that cancellation on its way out, not a hook's failure (docs/reference.md#broken-hooks).
    Python 3.10 cannot tell: there a hook's ``CancelledError`` is its failure unless the middleware itself cancelled the
    request."""
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return False  # pragma: no cover - Python 3.10


class HookTimeout(Exception):
    """A hook call outlived its timeout."""

    def __init__(self, hook: BoundHook, seconds: float) -> None:
        super().__init__(f"{hook.stage} hook {hook.name} timed out after {seconds:g}s")
        self.hook = hook
        self.seconds = seconds


_STAGE_BY_METHOD = {
    "async_pre_call_hook": "pre_call",
    "async_moderation_hook": "moderation",
    "async_post_call_success_hook": "post_call",
    "async_post_call_failure_hook": "failure",
    "async_post_call_streaming_hook": "streaming",
    "async_post_call_streaming_iterator_hook": "streaming",
    "async_post_call_complete_hook": "complete",
}


@dataclass(frozen=True)
class BoundHook:
    """One hook method with its argument plan, worked out at construction."""

    name: str  # the hook's class name, used in error messages and logs
    method_name: str
    method: Callable[..., Any]
    keywords: tuple[tuple[str, str], ...]  # (parameter, argument) pairs, when not passed by position
    positional: tuple[str, ...]  # the arguments passed by position, in order
    timeout: float | None
    fail_open: bool
    observer: Observer | None = None
    #: A monitor (a ``logging_only`` guardrail): it never blocks, so an answer it cannot read passes without it
    #: (recorded as not run) instead of being replaced by an error.
    observes_only: bool = False
    is_async: bool = field(init=False)
    #: An async method with no timeout and no observer: ``await hook.invoke(arguments)`` is the whole call,
    #: one coroutine less than :meth:`call` on paths that run for every request or every streamed chunk.
    direct: bool = field(init=False)
    _arguments: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = field(init=False)

    def __post_init__(self) -> None:
        # Worked out once: these run for every request (and every streamed chunk).
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.method))
        object.__setattr__(self, "direct", self.is_async and self.timeout is None and self.observer is None)
        getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        if len(self.positional) > 1:
            getter = itemgetter(*self.positional)
        elif len(self.positional) == 1:
            only = self.positional[0]

            def getter(arguments: Mapping[str, Any]) -> tuple[Any, ...]:
                return (arguments[only],)

        elif not self.keywords:

            def getter(arguments: Mapping[str, Any]) -> tuple[Any, ...]:
                return ()

        object.__setattr__(self, "_arguments", getter)

    @property
    def stage(self) -> str:
        return _STAGE_BY_METHOD[self.method_name]

    def invoke(self, arguments: Mapping[str, Any]) -> Any:
        """Call the method; returns whatever it returns (an awaitable for async methods)."""
        if self._arguments is not None:
            return self.method(*self._arguments(arguments))
        return self.method(**{parameter: arguments[source] for parameter, source in self.keywords})

    def invoke_off_loop(self, arguments: Mapping[str, Any]) -> Awaitable[Any]:
        """What awaiting the method's result gives, with a sync method run in a worker thread (see
        :func:`_in_thread`): an async method's own coroutine, else a coroutine that waits for the thread."""
        if self.is_async:
            return self.invoke(arguments)  # type: ignore[no-any-return]
        return _in_thread(self, arguments)

    async def call(self, arguments: Mapping[str, Any]) -> Any:
        """Call and await the method, bounded by the hook's timeout (raises :class:`HookTimeout`); a sync method
        runs in a worker thread, so it neither blocks the event loop nor outlives its timeout for the request."""
        if self.observer is not None:
            return await self._observed(arguments, self.observer)
        result = self.invoke(arguments) if self.is_async else _in_thread(self, arguments)
        if self.timeout is None:
            return await result
        return await _bounded(result, self)

    async def _observed(self, arguments: Mapping[str, Any], observer: Observer) -> Any:
        observer.hook_started(self.stage, self.name)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = self.invoke_off_loop(arguments)
            result = await (result if self.timeout is None else _bounded(result, self))
            if isinstance(result, BaseException):  # a returned exception counts as raised
                outcome = _outcome_of(result)
            elif isinstance(result, str) and self.method_name == "async_pre_call_hook":
                outcome = "refused"
            else:
                outcome = "ok"
            return result
        except HookTimeout:
            outcome = "timeout"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = _outcome_of(exc)
            raise
        finally:
            observer.hook_finished(self.stage, self.name, time.perf_counter() - started, outcome)


#: The worker threads sync hook methods run in: their own pool, not the event loop's default executor, which
#: resolves host names (``getaddrinfo``) for every HTTP client in the process; hooks that hang must not starve it.
#: Bounded: beyond it calls queue, and a queued call's wait counts against its hook's timeout.
_SYNC_HOOK_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="asgi_llm_guard-hook")


async def _in_thread(hook: BoundHook, arguments: Mapping[str, Any]) -> Any:
    """Run a sync hook method in a worker thread (see :func:`off_loop`)."""
    return await off_loop(hook.invoke, arguments)


async def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Run a sync hook function in a worker thread (with the caller's context variables); an awaitable it returns
    is awaited here, on the loop. A timed-out call stops being awaited, but its thread runs the function to its
    end: threads cannot be cancelled."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(_SYNC_HOOK_THREADS, context.run, function, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _outcome_of(exc: BaseException) -> str:
    status = status_of(exc)
    if isinstance(exc, RejectRequest) or (status is not None and status < 500 and not is_dependency_error(exc)):
        return "rejected"
    return "error"


if sys.version_info >= (3, 11):

    async def _bounded(awaitable: Awaitable[Any], hook: BoundHook) -> Any:
        assert hook.timeout is not None
        try:
            async with asyncio.timeout(hook.timeout) as scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise HookTimeout(hook, hook.timeout) from None
            raise

else:  # pragma: no cover - Python 3.10

    async def _bounded(awaitable: Awaitable[Any], hook: BoundHook) -> Any:
        assert hook.timeout is not None
        try:
            return await asyncio.wait_for(awaitable, hook.timeout)
        except asyncio.TimeoutError:
            raise HookTimeout(hook, hook.timeout) from None


def resolve_hook(entry: object) -> object:
    """An import string ``"pkg.module.attr"`` / ``"pkg.module:attr"`` to the object it names; other entries as
    they are."""
    if not isinstance(entry, str):
        return entry
    module_name, sep, attribute = entry.partition(":")
    if not sep:
        module_name, _, attribute = entry.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"hook {entry!r} is not an import string; write it as 'package.module.attribute'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"hook {entry!r} does not resolve: cannot import module {module_name!r} ({exc})"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(
                f"hook {entry!r} does not resolve: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target


def _is_default(hook: object, method_name: str) -> bool:
    """True when the method is CallHook's own no-op, which need not be called (a function set on the instance
    is not)."""
    method = getattr(hook, method_name, None)
    return getattr(method, "__func__", None) is getattr(CallHook, method_name)


def _plan(
    hook_name: str, method_name: str, method: Callable[..., Any]
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """How to call a hook method: ``(keywords, positional)``, one of them empty.

    A parameter named after an argument (or an alias) gets that argument; each other required parameter gets
    the next argument no parameter is named after, in LiteLLM's order. So ``(self, data)`` gets ``data``,
    ``(self, a, b, c, d)`` gets LiteLLM's four by position, and a failure hook ``(self, user_api_key_dict,
    original_exception, req)`` gets ``request_data`` as ``req``. Parameters that lead the signature are passed
    by position, the cheapest call there is; otherwise by keyword.
    """
    offered = HOOK_METHODS[method_name]
    available = set(offered) | {"traceback_str", *_BY_NAME_ONLY.get(method_name, ())}
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return (), offered  # a builtin or C callable: LiteLLM's positional order
    parameters = [
        p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if not parameters and any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        return (), offered  # (self, *args): LiteLLM's positional order
    takes_var_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    sources: dict[str, str] = {}
    unknown: list[str] = []
    for parameter in parameters:
        name = parameter.name
        source = name if name in available else _ALIASES.get(name)
        if source is not None and source in available:
            sources[name] = source
        elif parameter.default is parameter.empty:
            unknown.append(name)
    unused = [name for name in offered if name not in sources.values()]
    if len(unknown) > len(unused):
        raise TypeError(
            f"{hook_name}.{method_name} has parameters {', '.join(unknown)} that the middleware cannot fill; "
            f"name them from: {', '.join(offered)}"
        )
    sources.update(zip(unknown, unused[: len(unknown)], strict=True))
    # **kwargs takes every argument no parameter is named after.
    extra = [(name, name) for name in offered if name not in sources.values()] if takes_var_keyword else []
    leading = parameters[: len(sources)]
    if not extra and all(
        p.name in sources and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in leading
    ):
        return (), tuple(sources[p.name] for p in leading)
    if any(p.kind is p.POSITIONAL_ONLY for p in parameters if p.name in sources):
        raise TypeError(
            f"{hook_name}.{method_name} has positional-only parameters the middleware cannot fill in order; "
            f"name them from: {', '.join(offered)}"
        )
    return (*sources.items(), *extra), ()


@dataclass(frozen=True)
class HookSet:
    """The bound hook methods of a middleware, per stage, in the order the hooks were given."""

    pre_call: tuple[BoundHook, ...] = ()
    moderation: tuple[BoundHook, ...] = ()
    success: tuple[BoundHook, ...] = ()
    failure: tuple[BoundHook, ...] = ()
    streaming: tuple[BoundHook, ...] = ()
    streaming_iterator: tuple[BoundHook, ...] = ()
    complete: tuple[BoundHook, ...] = ()

    @property
    def touches_response(self) -> bool:
        """Some hook reads the response body (worked out per request: keep it cheap)."""
        return bool(self.success) or bool(self.streaming) or bool(self.streaming_iterator)


_FIELD_BY_METHOD = {
    "async_pre_call_hook": "pre_call",
    "async_moderation_hook": "moderation",
    "async_post_call_success_hook": "success",
    "async_post_call_failure_hook": "failure",
    "async_post_call_streaming_hook": "streaming",
    "async_post_call_streaming_iterator_hook": "streaming_iterator",
    "async_post_call_complete_hook": "complete",
}


#: Binds a hook object another way (guardrails): ``(hook, timeout, fail_open) -> [(HookSet field, BoundHook)]``,
#: or ``None`` to bind it as usual.
Expander = Callable[[object, "float | None", bool], "list[tuple[str, BoundHook]] | None"]


def bind_method(
    hook: object, method_name: str, timeout: float | None, fail_open: bool, observer: Observer | None = None
) -> BoundHook:
    """One hook method bound with its argument plan (see :func:`_plan`)."""
    name = getattr(hook, "__llm_guard_name__", None) or type(hook).__name__
    method = getattr(hook, method_name)
    keywords, positional = _plan(name, method_name, method)
    return BoundHook(
        name=name,
        method_name=method_name,
        method=method,
        keywords=keywords,
        positional=positional,
        timeout=float(timeout) if timeout is not None else None,
        fail_open=fail_open,
        observer=observer,
    )


def field_of(method_name: str) -> str:
    """The :class:`HookSet` field holding a hook method's bindings."""
    return _FIELD_BY_METHOD[method_name]


def bind_hooks(
    entries: Iterable[object],
    default_timeout: float | None,
    observer: Observer | None = None,
    expand: Expander | None = None,
    adapt: Callable[[object], object] | None = None,
) -> HookSet:
    """Resolve and bind every hook, raising ``TypeError``/``ValueError`` for entries that cannot work.

    ``adapt`` may replace each resolved hook object first (the middleware wraps LiteLLM's own classes with it)."""
    stages: dict[str, list[BoundHook]] = {field: [] for field in _FIELD_BY_METHOD.values()}
    for index, entry in enumerate(entries):
        hook = resolve_hook(entry)
        where = f"hooks[{index}]" + (f" ({entry!r})" if isinstance(entry, str) else "")
        if isinstance(hook, type):
            raise TypeError(
                f"{where} is the class {hook.__name__}; pass an instance, not the class: hooks=[{hook.__name__}()]"
            )
        if adapt is not None:
            hook = adapt(hook)
        name = getattr(hook, "__llm_guard_name__", None) or type(hook).__name__
        methods = [method for method in HOOK_METHODS if callable(getattr(hook, method, None))]
        if not methods:
            raise TypeError(
                f"{where} ({name}) has none of the hook methods "
                f"({', '.join(HOOK_METHODS)}); define at least one, e.g. async_pre_call_hook"
            )
        timeout = getattr(hook, "timeout", default_timeout)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise TypeError(f"{name}.timeout must be a positive number of seconds or None, not {timeout!r}")
        fail_open = getattr(hook, "fail_open", False)
        if not isinstance(fail_open, bool):
            raise TypeError(f"{name}.fail_open must be True or False, not {fail_open!r}")
        expanded = expand(hook, timeout, fail_open) if expand is not None else None
        if expanded is not None:
            for field_name, bound in expanded:
                stages[field_name].append(bound)
            continue
        for method_name in methods:
            if _is_default(hook, method_name):
                continue
            stages[_FIELD_BY_METHOD[method_name]].append(bind_method(hook, method_name, timeout, fail_open, observer))
    return HookSet(**{field: tuple(bound) for field, bound in stages.items()})


def log_hook_exception(hook: BoundHook, exc: BaseException, expose: bool = False) -> None:
    log_exception(f"{hook.stage} hook {hook.name}", exc, expose=expose)
