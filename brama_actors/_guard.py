"""Guarding calls: the ``circuit_breaker`` decorator and the ``guard`` context manager.

A guard works through its system's authority (``brama_actors._authority``) and never
asks which kind it is. The decision path is the cheapest the contract allows: one dict
lookup and an attribute read to decide, the user's call in the caller's own thread (no
lock held across it), and on success a counter bump when the circuit is healthy and
nobody listens for ``success`` events. Only failures, half-open trials and
state-changing successes reach the authority's writers.

Exceptions: an ``Exception`` is recorded as a failure (``reason=repr(exc)``) and
re-raised unchanged; one matching ``exclude`` (or, with ``record=``, not matching it) is
re-raised without being recorded; a ``BaseException`` (``KeyboardInterrupt``,
``SystemExit``, ``asyncio.CancelledError``) passes through untouched and records nothing.
Every outcome, also one that records nothing, gives a half-open trial permit back.

Options beyond the outcome: ``fallback`` (decorator only) answers a refused call instead
of ``CircuitOpenError``; ``timeout`` (``async`` only) cancels a call that takes too long
and records it as a failure with reason ``"Timeout"``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from brama_actors import _durations
from brama_actors._authority import Admission, Registration
from brama_actors._config import CONNECTION_OPTIONS, check_optional_int, validate_options
from brama_actors._errors import CircuitOpenError, InvalidConfiguration, describe
from brama_actors._keys import check_key
from brama_actors._runtime import _nowait
from brama_actors._status import freeze_mapping

if TYPE_CHECKING:
    from brama_actors._authority import Authority

__all__ = ["Guard", "GuardBlock", "Guardable", "check_system", "circuit_breaker",
           "set_default_system"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("brama_actors")

_REGISTER_EXTRA = frozenset({"type", "metadata"})
#: What a call cancelled by the guard's own ``timeout`` records.
_TIMEOUT_VERDICT: tuple[str, Any] = ("failure", "Timeout")
_SUCCESS_VERDICT: tuple[str, Any] = ("success", None)
_IGNORE_VERDICT: tuple[str, Any] = ("ignore", None)
#: Not an outcome at all (a BaseException passing through, an outside cancellation, an
#: error_handler that raised): the permit goes back, nothing is counted anywhere.
_NOTHING_VERDICT: tuple[str, Any] = ("none", None)


class Guardable:
    """Base of what a guard can run against (``Brama``, ``Client``): has an authority."""

    _authority: Authority


#: Returns the default system. The module defining it (``_system._default``) sits above
#: this one, so it registers itself here instead of being imported.
_default_system: Callable[[], Guardable] | None = None


def check_system(brama: Any) -> Any:
    """``brama`` if it is a system a guard, an integration or an exporter can use (a
    ``Brama``, a ``Client``) or None (the default system).

    Raises:
        TypeError: anything else.
    """
    if brama is not None and not isinstance(brama, Guardable):
        raise TypeError(f"brama must be a Brama system, a Client or None, got {brama!r}")
    return brama


def set_default_system(resolver: Callable[[], Guardable]) -> None:
    """Tell guards how to find the default system (``brama=None``)."""
    global _default_system
    _default_system = resolver


def _the_default() -> Guardable:
    assert _default_system is not None, "brama_actors._system._default sets the resolver"
    return _default_system()


def _safe_repr(exc: BaseException) -> str:
    """``repr(exc)``, or a stand-in when the exception's own ``__repr__`` raises."""
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__qualname__} (repr failed)>"


class _Matcher:
    """Which exceptions an ``exclude=`` or ``record=`` option names.

    Exception types match subclasses (``isinstance``); a predicate ``exc -> bool`` that
    raises counts as no match and is logged (it is user code run in the caller's
    thread, never in an actor).
    """

    __slots__ = ("_option", "_predicates", "_types")

    def __init__(self, option: str, spec: Any) -> None:
        if isinstance(spec, type) or (callable(spec) and not isinstance(spec, tuple)):
            spec = (spec,)
        elif isinstance(spec, str | bytes) or not hasattr(spec, "__iter__"):
            raise TypeError(f"{option} must be an exception type, a predicate or a tuple "
                            f"of them, got {spec!r}")
        types: list[type[BaseException]] = []
        predicates: list[Callable[[BaseException], Any]] = []
        for item in spec:
            if isinstance(item, type):
                if not issubclass(item, BaseException):
                    raise TypeError(f"{option} must contain exception types or predicates, "
                                    f"got the class {item.__qualname__}")
                types.append(item)
            elif callable(item):
                predicates.append(item)
            else:
                raise TypeError(f"{option} must contain exception types or predicates, "
                                f"got {item!r}")
        self._option = option
        self._types = tuple(types)
        self._predicates = tuple(predicates)

    def __bool__(self) -> bool:
        return bool(self._types or self._predicates)

    def matches(self, exc: BaseException) -> bool:
        if isinstance(exc, self._types):
            return True
        for predicate in self._predicates:
            try:
                if predicate(exc):
                    return True
            except Exception:
                logger.warning("%s predicate %r raised on %s; counted as no match",
                               self._option, predicate, _safe_repr(exc), exc_info=True)
        return False


class _Expired(Exception):
    """The guard's own ``timeout`` ended the call (raised to the user as TimeoutError)."""


async def _within(awaitable: Awaitable[R], timeout_ms: int) -> R:
    """Await ``awaitable``, cancelled after ``timeout_ms`` (then ``_Expired``).

    ``_Expired`` tells the guard's own timeout from a ``TimeoutError`` the call raised.
    """
    import asyncio  # only async guards with a timeout pay for it

    deadline = asyncio.timeout(timeout_ms / 1000)
    try:
        async with deadline:
            return await awaitable
    except TimeoutError:
        if deadline.expired():
            raise _Expired from None
        raise


def _timeout_error(what: str, timeout_ms: int) -> TimeoutError:
    return TimeoutError(f"the {what} took longer than {timeout_ms} ms")


def _registration(options: Mapping[str, Any]) -> Registration:
    """Check the options a guard registers its connection with, at decoration time."""
    kind = options.get("type", "general")
    if not isinstance(kind, str) or not kind:
        raise InvalidConfiguration(f"type must be a non-empty str, got {kind!r}")
    metadata = options.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
    settings = {k: v for k, v in options.items() if k not in _REGISTER_EXTRA}
    checked = validate_options(settings, CONNECTION_OPTIONS, skip_none=True)
    return Registration(kind, checked, None if metadata is None else freeze_mapping(metadata))


class Guard:
    """The decision logic shared by the decorator and the context manager.

    Args:
        identifier: the connection.
        scope: its scope.
        error_handler: ``result -> "success" | "failure" | ("failure", reason) | "ignore"``.
        brama: the system (``None``: the default system, looked up at each call).
        register: register the connection on first use if it is unknown.
        exclude: exception types and/or predicates: a match is re-raised unrecorded.
        record: ``None`` (every exception is a failure) or the same forms: only a
            match is a failure, anything else is re-raised unrecorded.
        fallback: called with the call's arguments when the circuit refuses it
            (decorator only).
        timeout: ms after which an ``async`` call is cancelled and recorded as a
            failure (``"Timeout"``); ``TimeoutError`` is raised.
        register_options: ``type``, ``metadata`` and connection options for that
            registration.

    Raises:
        TypeError: a bad ``exclude``/``record``/``timeout`` or a non-callable
            ``error_handler``/``fallback``.
        ValueError: ``timeout`` below 1 ms.
    """

    __slots__ = ("_brama", "_error_handler", "_exclude", "_record", "_registration",
                 "fallback", "identifier", "key", "scope", "timeout")

    def __init__(self, identifier: str, *, scope: str | None = None,
                 error_handler: Callable[[Any], Any] | None = None,
                 brama: Any = None, register: bool = True,
                 exclude: Any = (), record: Any = None,
                 fallback: Callable[..., Any] | None = None, timeout: int | None = None,
                 **register_options: Any) -> None:
        self.key = check_key(identifier, scope)
        check_system(brama)
        if error_handler is not None and not callable(error_handler):
            raise TypeError(f"error_handler must be callable, got {error_handler!r}")
        if not isinstance(register, bool):
            raise TypeError(f"register must be a bool, got {register!r}")
        self.identifier = identifier
        self.scope = scope
        self._error_handler = error_handler
        self._brama = brama
        if fallback is not None and not callable(fallback):
            raise TypeError(f"fallback must be callable, got {fallback!r}")
        self._exclude = _Matcher("exclude", exclude)
        self._record = None if record is None else _Matcher("record", record)
        self.fallback = fallback
        self.timeout = check_optional_int("timeout", timeout)  # ms
        registration = _registration(register_options)
        self._registration = registration if register else None

    def __repr__(self) -> str:
        return f"<Guard {describe(self.identifier, self.scope)}>"

    @property
    def has_error_handler(self) -> bool:
        """True if an ``error_handler`` judges returned results."""
        return self._error_handler is not None

    # -- deciding --------------------------------------------------------------------
    def _authority(self) -> Authority:
        brama = self._brama
        return (_the_default() if brama is None else brama)._authority

    def enter(self) -> tuple[Authority, Admission]:
        """Let a call through; returns the authority and its admission.

        Raises:
            CircuitOpenError: the circuit is open, or half-open with every trial taken.
            ConnectionNotFound: unknown, with ``register=False``.
        """
        authority = self._authority()
        admission = authority.admit(self.key, self._registration)
        view = admission.view
        if _durations.OBSERVERS or view is None or view.slow is not None:
            admission.started = time.perf_counter()
        return authority, admission

    def _settle(self, entered: tuple[Authority, Admission], verdict: tuple[str, Any]) -> None:
        """Record ``verdict`` with the call's duration, if it was timed."""
        authority, admission = entered
        authority.settle(admission, verdict, self._duration(admission, verdict[0]))

    def _duration(self, admission: Admission, kind: str) -> float | None:
        """The timed call's duration in ms (observers get it in seconds), or None."""
        started = admission.started
        if started is None:
            return None
        seconds = time.perf_counter() - started
        if _durations.OBSERVERS and kind in ("success", "failure"):
            _durations.notify((self.identifier, self.scope, kind, seconds))
        return seconds * 1000.0

    # -- judging (user code: runs once, in the caller's thread) ----------------------
    def verdict(self, result: Any) -> tuple[str, Any]:
        """What a returned result means: ``(kind, reason)``, kind success/failure/ignore.

        Raises:
            TypeError: the handler returned something other than the four verdicts.
        """
        handler = self._error_handler
        if handler is None:
            return _SUCCESS_VERDICT
        verdict = handler(result)
        if verdict == "success" and isinstance(verdict, str):
            return _SUCCESS_VERDICT
        if verdict == "failure" and isinstance(verdict, str):
            return ("failure", None)
        if verdict == "ignore" and isinstance(verdict, str):
            return _IGNORE_VERDICT
        if (isinstance(verdict, tuple) and len(verdict) == 2
                and verdict[0] == "failure" and isinstance(verdict[0], str)):
            return ("failure", verdict[1])
        raise TypeError(
            "error_handler must return 'success', 'failure', ('failure', reason) or "
            f"'ignore', got {verdict!r}")

    def exception_verdict(self, exc: BaseException) -> tuple[str, Any]:
        """What an exception raised by the guarded code means (``exclude``/``record``).

        A ``BaseException`` that is not an ``Exception`` (cancellation, KeyboardInterrupt,
        SystemExit) records nothing and is not counted as ignored either.
        """
        if not isinstance(exc, Exception):
            return _NOTHING_VERDICT
        if self._exclude and self._exclude.matches(exc):
            return _IGNORE_VERDICT
        if self._record is not None and not self._record.matches(exc):
            return _IGNORE_VERDICT
        return ("failure", _safe_repr(exc))

    # -- recording -------------------------------------------------------------------
    def exit(self, entered: tuple[Authority, Admission], exc: BaseException | None) -> None:
        """Record the outcome of a call entered with ``enter()``; give its permit back."""
        self._settle(entered, _SUCCESS_VERDICT if exc is None else self.exception_verdict(exc))

    async def aexit(self, entered: tuple[Authority, Admission],
                    exc: BaseException | None, verdict: tuple[str, Any] | None = None) -> None:
        """``exit`` for asyncio code (or a given ``verdict``): never blocks the loop."""
        authority, admission = entered
        if verdict is None:
            verdict = _SUCCESS_VERDICT if exc is None else self.exception_verdict(exc)
        duration = self._duration(admission, verdict[0])
        await _nowait.run(authority.settle, admission, verdict, duration)

    def judge(self, entered: tuple[Authority, Admission], result: Any) -> None:
        """Record what a returned ``result`` means (``error_handler``); give the permit back."""
        try:
            verdict = self.verdict(result)
        except BaseException:
            self._settle(entered, _NOTHING_VERDICT)  # the permit goes back
            raise
        self._settle(entered, verdict)

    async def ajudge(self, entered: tuple[Authority, Admission], result: Any) -> None:
        """``judge`` for asyncio code: the handler runs on the loop, recording never blocks it."""
        try:
            verdict = self.verdict(result)
        except BaseException:
            await self.aexit(entered, None, _NOTHING_VERDICT)
            raise
        await self.aexit(entered, None, verdict)

    # -- decorator -------------------------------------------------------------------
    def wrap(self, function: Callable[P, R]) -> Callable[P, R]:
        """Wrap a function or ``async def`` coroutine function."""
        if inspect.iscoroutinefunction(function):
            return cast("Callable[P, R]", self._wrap_async(function))
        if self.timeout is not None:
            raise TypeError(f"timeout= applies to async def functions; {function!r} is not "
                            "one (a thread running sync code cannot be cancelled)")
        enter = self.enter
        fallback = self.fallback
        exit_ = self.exit
        judge_and_settle = self.judge
        key = self.key
        fixed = self._brama
        resolve = _the_default
        observers = _durations.OBSERVERS
        notify_failed = _durations.notify_failed
        perf_counter = time.perf_counter
        identifier, scope = self.identifier, self.scope

        def general(args: Any, kwargs: Any) -> R:
            try:
                entered = enter()
            except CircuitOpenError:
                if fallback is None:
                    raise
                return cast("R", fallback(*args, **kwargs))
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                exit_(entered, exc)
                raise
            judge_and_settle(entered, result)
            return result

        if self._error_handler is not None:

            @functools.wraps(function)
            def guarded_judged(*args: P.args, **kwargs: P.kwargs) -> R:
                return general(args, kwargs)

            guarded_judged.__brama_guard__ = self  # type: ignore[attr-defined]
            return guarded_judged

        @functools.wraps(function)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            # The fast path, inlined: a healthy circuit, nothing to admit.
            authority = (fixed if fixed is not None else resolve())._authority
            view = authority.views.get(key)
            if view is None or not view.quiet:
                return general(args, kwargs)
            if view.slow is not None or observers:
                return timed(authority, view, args, kwargs)
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                exit_((authority, Admission(key, view)), exc)
                raise
            authority.record_success(key, view)
            return result

        def timed(authority: Authority, view: Any, args: Any, kwargs: Any) -> R:
            # The fast path for a call that must be timed (a slow-call rule, a
            # duration observer): the same, with the duration measured and reported.
            started = perf_counter()
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                exit_((authority, Admission(key, view, started=started)), exc)
                raise
            seconds = perf_counter() - started
            if observers:
                timing = (identifier, scope, "success", seconds)
                try:  # inlined notify(): a frame less on the hot path
                    for observer in observers:
                        observer(timing)
                except Exception:
                    notify_failed()
            authority.record_success(key, view, seconds * 1000.0)
            return result

        guarded.__brama_guard__ = self  # type: ignore[attr-defined]
        return guarded

    def _wrap_async(self, function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        # Every step that may wait (an actor's answer, a paced event manager, a node's
        # reply) runs through _nowait.run: in this thread when it completes at once,
        # else on the loop's executor, so the event loop never blocks on brama_actors.
        # User code (error_handler) runs once, on the loop, before that.
        enter = self.enter
        verdict = self.verdict
        aexit = self.aexit
        run = _nowait.run
        fallback = self.fallback
        timeout_ms = self.timeout

        @functools.wraps(function)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                entered = await run(enter)
            except CircuitOpenError:
                if fallback is None:
                    raise
                answer = fallback(*args, **kwargs)
                if inspect.isawaitable(answer):
                    answer = await answer
                return cast("R", answer)
            try:
                if timeout_ms is None:
                    result = await function(*args, **kwargs)
                else:
                    result = await _within(function(*args, **kwargs), timeout_ms)
            except _Expired:
                await aexit(entered, None, _TIMEOUT_VERDICT)
                raise _timeout_error("call", cast(int, timeout_ms)) from None
            except BaseException as exc:
                await aexit(entered, exc)
                raise
            try:
                judged = verdict(result)
            except BaseException:
                await aexit(entered, None, _NOTHING_VERDICT)
                raise
            await aexit(entered, None, judged)
            return result

        guarded.__brama_guard__ = self  # type: ignore[attr-defined]
        return guarded


class GuardBlock:
    """One use of a guard as a context manager (``with`` / ``async with``).

    Returned by ``guard(...)``: a tiny per-block object, so the validated ``Guard`` it
    uses can be shared by every block and thread.

    Raises:
        TypeError: the guard has an ``error_handler`` (a block has no result to judge).
    """

    __slots__ = ("_deadline", "_entered", "guard")

    def __init__(self, guard: Guard) -> None:
        if guard.has_error_handler:
            raise TypeError("error_handler= applies to decorated functions: a guard block "
                            "has no result to judge")
        if guard.fallback is not None:
            raise TypeError("fallback= applies to decorated functions: a guard block has "
                            "no call to answer in its place")
        self.guard = guard
        self._entered: tuple[Authority, Admission] | None = None
        self._deadline: Any = None

    def __repr__(self) -> str:
        return f"<GuardBlock {describe(self.guard.identifier, self.guard.scope)}>"

    def _claim(self) -> None:
        if self._entered is not None:
            raise RuntimeError(f"{self!r} is already in use; call guard() for each block")

    def __enter__(self) -> GuardBlock:
        if self.guard.timeout is not None:
            raise TypeError("timeout= applies to async with: a block of sync code cannot "
                            "be cancelled")
        self._claim()
        self._entered = self.guard.enter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        entered, self._entered = self._entered, None
        assert entered is not None
        self.guard.exit(entered, exc)

    async def __aenter__(self) -> GuardBlock:
        self._claim()
        self._entered = await _nowait.run(self.guard.enter)
        if self.guard.timeout is not None:
            import asyncio

            self._deadline = asyncio.timeout(self.guard.timeout / 1000)
            await self._deadline.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        entered, self._entered = self._entered, None
        deadline, self._deadline = self._deadline, None
        assert entered is not None
        if deadline is not None:
            try:
                await deadline.__aexit__(exc_type, exc, tb)
            except TimeoutError:
                if not deadline.expired():  # not ours: record the block's own outcome
                    await self.guard.aexit(entered, exc)
                    raise
                await self.guard.aexit(entered, None, _TIMEOUT_VERDICT)
                assert self.guard.timeout is not None
                raise _timeout_error("block", self.guard.timeout) from None
        await self.guard.aexit(entered, exc)


def circuit_breaker(identifier: str, scope: str | None = None,
                    error_handler: Callable[[Any], Any] | None = None,
                    brama: Any = None, register: bool = True,
                    exclude: Any = (), record: Any = None,
                    fallback: Callable[..., Any] | None = None, timeout: int | None = None,
                    **register_options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function (or ``async def``) so calls go through the circuit.

    Args:
        identifier: the connection.
        scope: its scope.
        error_handler: decides on a returned value: ``"success"``, ``"failure"``,
            ``("failure", reason)`` or ``"ignore"``.
        brama: the system (default: the default system).
        register: register the connection on first use (with ``register_options``).
        exclude: exception types and/or predicates ``exc -> bool``: a matching
            exception is re-raised without counting as a failure.
        record: ``None`` (every exception counts) or the same forms: only a match
            counts as a failure; ``exclude`` wins.
        fallback: ``fallback(*args, **kwargs)`` answers a call the circuit refuses
            (awaited if the function is ``async def`` and it returns an awaitable).
        timeout: ms (``async def`` only): the call is cancelled after that long,
            recorded as a failure (``"Timeout"``), and ``TimeoutError`` is raised.
        **register_options: ``type``, ``metadata`` and connection options for that
            registration.

    Raises:
        InvalidIdentifier: bad identifier or scope (at decoration time).
        InvalidConfiguration: a bad registration option (at decoration time).
        TypeError: a non-callable ``error_handler``/``fallback``, something in
            ``exclude``/``record`` that is neither an exception type nor a callable, or
            ``timeout`` on a sync function.
        ValueError: ``timeout`` below 1 ms.
    """
    guard = Guard(identifier, scope=scope, error_handler=error_handler, brama=brama,
                  register=register, exclude=exclude, record=record, fallback=fallback,
                  timeout=timeout, **register_options)
    return guard.wrap
