"""Guarding calls: the ``circuit_breaker`` decorator and the ``guard`` context manager.

A guard works through its system's authority (``brama_actors._authority``) and never
asks which kind it is. The decision path is the cheapest the contract allows: one dict
lookup and an attribute read to decide, the user's call in the caller's own thread (no
lock held across it), and on success a counter bump when the circuit is healthy and
nobody listens for ``success`` events. Only failures, half-open trials and
state-changing successes reach the authority's writers.

Exceptions: an ``Exception`` is recorded as a failure (``reason=repr(exc)``) and
re-raised unchanged; a type listed in ``exclude`` is re-raised without being recorded; a
``BaseException`` (``KeyboardInterrupt``, ``SystemExit``, ``asyncio.CancelledError``)
passes through untouched and records nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from brama_actors._authority import Admission, Registration
from brama_actors._config import CONNECTION_OPTIONS, validate_options
from brama_actors._errors import InvalidConfiguration, describe
from brama_actors._keys import check_key
from brama_actors._runtime import _nowait
from brama_actors._status import freeze_mapping

if TYPE_CHECKING:
    from brama_actors._authority import Authority

__all__ = ["Guard", "GuardBlock", "Guardable", "circuit_breaker", "set_default_system"]

P = ParamSpec("P")
R = TypeVar("R")

_REGISTER_EXTRA = frozenset({"type", "metadata"})
_SUCCESS_VERDICT: tuple[str, Any] = ("success", None)
_IGNORE_VERDICT: tuple[str, Any] = ("ignore", None)


class Guardable:
    """Base of what a guard can run against (``Brama``, ``Client``): has an authority."""

    _authority: Authority


#: Returns the default system. The module defining it (``_system._default``) sits above
#: this one, so it registers itself here instead of being imported.
_default_system: Callable[[], Guardable] | None = None


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


def _check_exclude(exclude: Any) -> tuple[type[BaseException], ...]:
    if isinstance(exclude, type):
        exclude = (exclude,)
    try:
        excluded = tuple(exclude)
    except TypeError:
        raise TypeError(f"exclude must be exception types, got {exclude!r}") from None
    for item in excluded:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"exclude must contain exception types, got {item!r}")
    return excluded


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
        exclude: exception types re-raised without being recorded.
        register_options: ``type``, ``metadata`` and connection options for that
            registration.
    """

    __slots__ = ("_brama", "_error_handler", "_exclude", "_registration", "identifier",
                 "key", "scope")

    def __init__(self, identifier: str, *, scope: str | None = None,
                 error_handler: Callable[[Any], Any] | None = None,
                 brama: Any = None, register: bool = True,
                 exclude: Any = (), **register_options: Any) -> None:
        self.key = check_key(identifier, scope)
        if brama is not None and not isinstance(brama, Guardable):
            raise TypeError(f"brama must be a Brama system, a Client or None, got {brama!r}")
        if error_handler is not None and not callable(error_handler):
            raise TypeError(f"error_handler must be callable, got {error_handler!r}")
        if not isinstance(register, bool):
            raise TypeError(f"register must be a bool, got {register!r}")
        self.identifier = identifier
        self.scope = scope
        self._error_handler = error_handler
        self._brama = brama
        self._exclude = _check_exclude(exclude)
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
        return authority, authority.admit(self.key, self._registration)

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
        """What an exception raised by the guarded code means (``exclude`` applied).

        A ``BaseException`` that is not an ``Exception`` (cancellation, KeyboardInterrupt,
        SystemExit) records nothing.
        """
        if not isinstance(exc, Exception) or (self._exclude and isinstance(exc, self._exclude)):
            return _IGNORE_VERDICT
        return ("failure", _safe_repr(exc))

    # -- recording -------------------------------------------------------------------
    def exit(self, entered: tuple[Authority, Admission], exc: BaseException | None) -> None:
        """Record the outcome of a call entered with ``enter()``; give its permit back."""
        authority, admission = entered
        authority.settle(admission, _SUCCESS_VERDICT if exc is None
                         else self.exception_verdict(exc))

    async def aexit(self, entered: tuple[Authority, Admission],
                    exc: BaseException | None) -> None:
        """``exit`` for asyncio code: never blocks the event loop."""
        authority, admission = entered
        verdict = _SUCCESS_VERDICT if exc is None else self.exception_verdict(exc)
        await _nowait.run(authority.settle, admission, verdict)

    def _judge_and_settle(self, entered: tuple[Authority, Admission], result: Any) -> None:
        authority, admission = entered
        try:
            verdict = self.verdict(result)
        except BaseException:
            authority.settle(admission, _IGNORE_VERDICT)  # the permit goes back
            raise
        authority.settle(admission, verdict)

    # -- decorator -------------------------------------------------------------------
    def wrap(self, function: Callable[P, R]) -> Callable[P, R]:
        """Wrap a function or ``async def`` coroutine function."""
        if inspect.iscoroutinefunction(function):
            return cast("Callable[P, R]", self._wrap_async(function))
        enter = self.enter
        exit_ = self.exit
        judge_and_settle = self._judge_and_settle
        key = self.key
        fixed = self._brama
        resolve = _the_default

        def general(args: Any, kwargs: Any) -> R:
            entered = enter()
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
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                exit_((authority, Admission(key, view)), exc)
                raise
            authority.record_success(key, view)
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

        @functools.wraps(function)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            entered = await run(enter)
            try:
                result = await function(*args, **kwargs)
            except BaseException as exc:
                await aexit(entered, exc)
                raise
            try:
                judged = verdict(result)
            except BaseException:
                await run(entered[0].settle, entered[1], _IGNORE_VERDICT)
                raise
            await run(entered[0].settle, entered[1], judged)
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

    __slots__ = ("_entered", "guard")

    def __init__(self, guard: Guard) -> None:
        if guard.has_error_handler:
            raise TypeError("error_handler= applies to decorated functions: a guard block "
                            "has no result to judge")
        self.guard = guard
        self._entered: tuple[Authority, Admission] | None = None

    def __repr__(self) -> str:
        return f"<GuardBlock {describe(self.guard.identifier, self.guard.scope)}>"

    def _claim(self) -> None:
        if self._entered is not None:
            raise RuntimeError(f"{self!r} is already in use; call guard() for each block")

    def __enter__(self) -> GuardBlock:
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
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        entered, self._entered = self._entered, None
        assert entered is not None
        await self.guard.aexit(entered, exc)


def circuit_breaker(identifier: str, scope: str | None = None,
                    error_handler: Callable[[Any], Any] | None = None,
                    brama: Any = None, register: bool = True,
                    exclude: Any = (), **register_options: Any) -> Callable[[Callable[P, R]],
                                                                            Callable[P, R]]:
    """Decorate a function (or ``async def``) so calls go through the circuit.

    Args:
        identifier: the connection.
        scope: its scope.
        error_handler: decides on a returned value: ``"success"``, ``"failure"``,
            ``("failure", reason)`` or ``"ignore"``.
        brama: the system (default: the default system).
        register: register the connection on first use (with ``register_options``).
        exclude: exception types that are re-raised without counting as failures.
        **register_options: ``type``, ``metadata`` and connection options for that
            registration.

    Raises:
        InvalidIdentifier: bad identifier or scope (at decoration time).
        InvalidConfiguration: a bad registration option (at decoration time).
        TypeError: a non-callable error_handler or a non-exception in ``exclude``.
    """
    guard = Guard(identifier, scope=scope, error_handler=error_handler, brama=brama,
                  register=register, exclude=exclude, **register_options)
    return guard.wrap
