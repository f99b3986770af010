"""Guarding calls: the ``circuit_breaker`` decorator and the ``guard`` context manager.

The decision path is the cheapest the contract allows: one dict lookup and two attribute
reads to decide, the user's call in the caller's own thread (no lock held across it), and
on success a counter bump when the circuit is healthy and nobody listens for ``success``
events. Only failures, half-open trials and state-changing successes talk to the actor.

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

from brama_actors import _rules as rules
from brama_actors._config import CONNECTION_OPTIONS, validate_options
from brama_actors._delivery import _telemetry
from brama_actors._errors import (
    AlreadyRegistered,
    CircuitOpenError,
    ConnectionNotFound,
    InvalidConfiguration,
    describe,
)
from brama_actors._events import EventType
from brama_actors._runtime import _nowait
from brama_actors._status import CircuitState
from brama_actors._system import _default
from brama_actors._system._connection import Cell
from brama_actors._system._messages import Apply

if TYPE_CHECKING:
    from brama_actors._system._brama import Brama

__all__ = ["Guard", "GuardBlock", "circuit_breaker"]

P = ParamSpec("P")
R = TypeVar("R")

_SUCCESS = EventType.SUCCESS
_HALF_OPEN = CircuitState.HALF_OPEN
_REGISTER_EXTRA = frozenset({"type", "metadata"})
_SUCCESS_VERDICT: tuple[str, Any] = ("success", None)
_IGNORE_VERDICT: tuple[str, Any] = ("ignore", None)
#: error_handler raised: nothing is recorded (the trial permit still goes back).
_JUDGE_FAILED = BaseException("error_handler raised")


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


def _check_register_options(options: Mapping[str, Any]) -> dict[str, Any]:
    kind = options.get("type", "general")
    if not isinstance(kind, str) or not kind:
        raise InvalidConfiguration(f"type must be a non-empty str, got {kind!r}")
    metadata = options.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
    settings = {k: v for k, v in options.items() if k not in _REGISTER_EXTRA}
    validate_options(settings, CONNECTION_OPTIONS, skip_none=True)
    return dict(options)


class Guard:
    """The decision logic shared by the decorator and the context manager.

    Args:
        identifier: the connection.
        scope: its scope.
        error_handler: ``result -> "success" | "failure" | ("failure", reason) | "ignore"``.
        brama: the system (``None``: the default system, looked up at each call).
        register: register the connection on first use if it is unknown.
        exclude: exception types re-raised without being recorded.
        register_options: options for that registration.
    """

    __slots__ = ("_brama", "_error_handler", "_exclude", "_key", "_register",
                 "_register_options", "identifier", "scope")

    def __init__(self, identifier: str, *, scope: str | None = None,
                 error_handler: Callable[[Any], Any] | None = None,
                 brama: Any = None, register: bool = True,
                 exclude: Any = (), **register_options: Any) -> None:
        from brama_actors._system._brama import _check_key

        self._key = _check_key(identifier, scope)
        if brama is not None and not hasattr(brama, "_guard_enter") and type(brama) is not _Brama():
            raise TypeError(f"brama must be a Brama system, a Client or None, got {brama!r}")
        self.identifier = identifier
        self.scope = scope
        if error_handler is not None and not callable(error_handler):
            raise TypeError(f"error_handler must be callable, got {error_handler!r}")
        if not isinstance(register, bool):
            raise TypeError(f"register must be a bool, got {register!r}")
        self._error_handler = error_handler
        self._brama = brama
        self._register = register
        self._exclude = _check_exclude(exclude)
        self._register_options = _check_register_options(register_options)

    def __repr__(self) -> str:
        return f"<Guard {describe(self.identifier, self.scope)}>"

    # -- deciding --------------------------------------------------------------------
    def _system(self) -> Any:
        brama = self._brama
        return _default.get() if brama is None else brama

    def _cell(self, brama: Any) -> Cell:
        cell: Cell | None = brama._cells.get(self._key)
        if cell is not None:
            return cell
        if not self._register:
            raise ConnectionNotFound(
                f"connection {describe(self.identifier, self.scope)} is not registered "
                "(register=False)")
        try:
            brama.register(self.identifier, scope=self.scope, **self._register_options)
        except AlreadyRegistered:
            pass  # another thread registered it first
        cell = brama._cells.get(self._key)
        if cell is None:  # unregistered again at once: report it as unknown
            raise ConnectionNotFound(
                f"connection {describe(self.identifier, self.scope)} is not registered")
        return cell

    def enter(self) -> tuple[Any, Any, bool]:
        """Decide whether a call may run; returns (system, cell, holds a trial permit).

        Raises:
            CircuitOpenError: the circuit is open, or half-open with every trial taken.
        """
        brama: Any = self._system()
        if type(brama) is not _Brama():
            # A client of a node in another process: the node decides.
            remote = brama._guard_enter(self.identifier, self.scope, self._register,
                                        self._register_options)
            return brama, remote, remote.trial
        cell = self._cell(brama)
        if not cell.available:
            raise CircuitOpenError(
                f"circuit for {describe(self.identifier, self.scope)} is open", cell.status)
        if cell.status.state is not _HALF_OPEN:
            return brama, cell, False
        with cell.lock:
            if cell.trials >= cell.status.half_open_max_calls:
                full = True
            else:
                cell.trials += 1
                full = False
        if full:
            raise CircuitOpenError(
                f"circuit for {describe(self.identifier, self.scope)} is half-open and "
                f"its {cell.status.half_open_max_calls} trial call(s) are running",
                cell.status)
        return brama, cell, True

    def release(self, cell: Any) -> None:
        """Give back a half-open trial permit."""
        if type(cell) is not Cell:
            cell.release()
            return
        with cell.lock:
            if cell.trials > 0:
                cell.trials -= 1

    # -- recording -------------------------------------------------------------------
    def succeeded(self, brama: Any, cell: Any, trial: bool) -> None:
        """Record a success; synchronous for a trial, so its permit is released after."""
        if type(cell) is not Cell:
            cell.succeeded()
            return
        if not trial and cell.quiet and not _telemetry.HANDLERS:
            core = brama._core
            if not core.interest.successes or not core.interest.wants(
                    _SUCCESS, self.identifier, self.scope):
                cell.add_quiet_success(core.clock.raw())
                return
        brama._call(self.identifier, self.scope, Apply(rules.Success()), block=trial)

    def failed(self, brama: Any, cell: Any, reason: Any) -> None:
        """Record a failure (returns once applied)."""
        if type(cell) is not Cell:
            cell.failed(reason)
            return
        brama._call(self.identifier, self.scope, Apply(rules.Failure(reason)))

    def verdict(self, result: Any) -> tuple[str, Any]:
        """What a returned result means: ``(kind, reason)``, kind success/failure/ignore.

        Runs ``error_handler`` (user code) exactly once, in the caller's thread.

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

    def record(self, brama: Any, cell: Any, trial: bool, verdict: tuple[str, Any]) -> None:
        """Record a verdict. Under ``_nowait.nowait()`` it does all of it or nothing."""
        kind, reason = verdict
        if kind == "success":
            self.succeeded(brama, cell, trial)
        elif kind == "failure":
            self.failed(brama, cell, reason)

    def judge(self, brama: Any, cell: Any, trial: bool, result: Any) -> None:
        """Apply ``error_handler`` to a returned result and record its verdict."""
        self.record(brama, cell, trial, self.verdict(result))

    def record_exception(self, brama: Any, cell: Any, exc: Exception) -> None:
        """Record an exception raised by the guarded code unless it is excluded."""
        self.record(brama, cell, False, self.exception_verdict(exc))

    def exit(self, entered: tuple[Any, Any, bool], exc: BaseException | None) -> None:
        """Record the outcome of a guarded block entered with ``enter()``."""
        brama, cell, trial = entered
        verdict = _SUCCESS_VERDICT if exc is None else self.exception_verdict(exc)
        try:
            self.record(brama, cell, trial, verdict)
        finally:
            if trial:
                self.release(cell)

    async def aexit(self, entered: tuple[Any, Any, bool], exc: BaseException | None) -> None:
        """``exit`` for asyncio code: never blocks the event loop."""
        brama, cell, trial = entered
        verdict = _SUCCESS_VERDICT if exc is None else self.exception_verdict(exc)
        try:
            await _nowait.run(self.record, brama, cell, trial, verdict)
        finally:
            if trial:
                await _nowait.run(self.release, cell)

    # -- decorator -------------------------------------------------------------------
    def wrap(self, function: Callable[P, R]) -> Callable[P, R]:
        """Wrap a function or ``async def`` coroutine function."""
        if inspect.iscoroutinefunction(function):
            return cast("Callable[P, R]", self._wrap_async(function))
        enter = self.enter
        judge = self.judge
        record_exception = self.record_exception
        release = self.release
        key = self._key
        fixed = self._brama
        handlers = _telemetry.HANDLERS
        defaults = _default

        def general(brama: Brama, args: Any, kwargs: Any) -> R:
            brama, cell, trial = enter()
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                try:
                    record_exception(brama, cell, exc)
                finally:
                    if trial:
                        release(cell)
                raise
            except BaseException:
                if trial:
                    release(cell)
                raise
            try:
                judge(brama, cell, trial, result)
            finally:
                if trial:
                    release(cell)
            return result

        if self._error_handler is not None:

            @functools.wraps(function)
            def guarded_judged(*args: P.args, **kwargs: P.kwargs) -> R:
                return general(fixed if fixed is not None else defaults.get(), args, kwargs)

            guarded_judged.__brama_guard__ = self  # type: ignore[attr-defined]
            return guarded_judged

        @functools.wraps(function)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            # The fast path, inlined: a healthy circuit nobody listens to for successes.
            brama = fixed if fixed is not None else defaults.get()
            cell = brama._cells.get(key)
            if cell is None or not cell.quiet:
                return general(brama, args, kwargs)
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                record_exception(brama, cell, exc)
                raise
            core = brama._core
            if cell.quiet and not handlers and not core.interest.successes:
                next(cell.quiet_counter)
                cell.quiet_raw = core.clock.raw()
            else:
                judge(brama, cell, False, result)
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
                await aexit(entered, _JUDGE_FAILED)
                raise
            brama, cell, trial = entered
            try:
                await run(self.record, brama, cell, trial, judged)
            finally:
                if trial:
                    await run(self.release, cell)
            return result

        guarded.__brama_guard__ = self  # type: ignore[attr-defined]
        return guarded


class GuardBlock:
    """One use of a guard as a context manager (``with`` / ``async with``).

    Returned by ``guard(...)``: a tiny per-block object, so the validated ``Guard`` it
    uses can be shared by every block and thread.
    """

    __slots__ = ("_entered", "guard")

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self._entered: tuple[Any, Any, bool] | None = None

    def __repr__(self) -> str:
        return f"<GuardBlock {describe(self.guard.identifier, self.guard.scope)}>"

    def __enter__(self) -> GuardBlock:
        if self._entered is not None:
            raise RuntimeError(f"{self!r} is already in use; call guard() for each block")
        self._entered = self.guard.enter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        entered, self._entered = self._entered, None
        assert entered is not None
        self.guard.exit(entered, exc)

    async def __aenter__(self) -> GuardBlock:
        if self._entered is not None:
            raise RuntimeError(f"{self!r} is already in use; call guard() for each block")
        self._entered = await _nowait.run(self.guard.enter)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        entered, self._entered = self._entered, None
        assert entered is not None
        await self.guard.aexit(entered, exc)


_brama_type: type | None = None


def _Brama() -> type:
    """``Brama``, imported late (``_system`` imports this module)."""
    global _brama_type
    if _brama_type is None:
        from brama_actors._system._brama import Brama

        _brama_type = Brama
    return _brama_type


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


