"""Property-based fuzzing of every public function's arguments (hypothesis).

Each call gets arguments of every type (None, bool, ints of any size, floats including
NaN/inf, empty/unicode/huge strings, bytes, containers, arbitrary objects, enum members,
str subclasses, tuples shaped like internal keys, and hostile objects whose methods raise)
and must either succeed as the docs say or raise the error the contract documents for that
argument — never another exception, never a hang — and afterwards the system must be
consistent: what ``connections()`` lists is what was registered, a refused call changed
nothing, and no actor crashed or restarted.

One allowance: a hostile object (``Hostile*`` below) may make the call raise its own
``HostileError`` in the caller's thread; that is the caller's object failing, not us. It
must still never crash an actor, be recorded half-way, or take the system down.

The expectations are written from the contract (docs/circuit-rules.md, docs/events.md) (and
docs/circuit-rules.md where the contract is
silent), independently of the validation code in ``brama_actors``.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import warnings
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import hypothesis.strategies as st
import pykka
import pytest
from hypothesis import HealthCheck, given, settings

from brama_actors import (
    AlreadyRegistered,
    Brama,
    CircuitOpenError,
    CircuitState,
    ConnectionNotFound,
    EventType,
    InvalidConfiguration,
    InvalidIdentifier,
    Subscription,
    circuit_breaker,
    telemetry,
)
from brama_actors.testing import ManualClock

with warnings.catch_warnings():
    # When a @given test fails, hypothesis' pytest plugin imports this module (and libcst,
    # which warns on import); under filterwarnings=error that turns a plain test failure
    # into an INTERNALERROR that aborts the whole session. Import it quietly up front.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # pragma: no cover - libcst not installed: nothing to pre-import
        pass

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

CONNECTION_KEYS = ("max_attempts", "expiry", "expiry_strategy", "initial_expiry", "max_expiry",
                   "backoff_factor", "half_open_max_calls")
SYSTEM_KEYS = ("cleanup_interval", "inactive_threshold", "max_restarts", "restart_window")
GLOBAL_KEYS = CONNECTION_KEYS + SYSTEM_KEYS
BOGUS_KEYS = ("max_attempt", "Expiry", "timeout", "fail_max", "x" * 200, "é")
DEFAULTS = {"max_attempts": 5, "expiry": 60_000, "expiry_strategy": "fixed",
            "backoff_factor": 2.0, "half_open_max_calls": 1}
MINIMUM = {"max_attempts": 1, "expiry": 1, "initial_expiry": 1, "max_expiry": 1,
           "half_open_max_calls": 1, "cleanup_interval": 1, "inactive_threshold": 1,
           "max_restarts": 0, "restart_window": 1}
EVENT_NAMES = tuple(e.value for e in EventType)
HUGE = "\u0119" * 1_000_000  # 1 M characters, 2 MB of UTF-8


def huge_text() -> str:
    """HUGE, drawn through st.builds so that strategy reprs stay readable."""
    return HUGE


def huge_metadata() -> dict[str, Any]:
    return {"blob": HUGE, **{str(i): i for i in range(2_000)}}


huge = st.builds(huge_text)


# -- hostile and odd objects ------------------------------------------------------------------


class HostileError(Exception):
    """Raised by the hostile objects' own methods."""


class HostileMapping(Mapping[str, Any]):
    """A Mapping (so metadata= must accept it by type) whose every access raises."""

    def __getitem__(self, key: str) -> Any:
        raise HostileError("__getitem__")

    def __iter__(self) -> Iterator[str]:
        raise HostileError("__iter__")

    def __len__(self) -> int:
        raise HostileError("__len__")


class HostileRepr:
    """An object whose repr/str raise (errors must not be built from it carelessly)."""

    def __repr__(self) -> str:
        raise HostileError("__repr__")

    __str__ = __repr__


class Named(str):
    """A str subclass: a valid identifier, to be normalised to a plain str."""


class Unrelated:
    """An arbitrary object."""


ODD = [object(), Unrelated(), HostileMapping(), HostileRepr(), Named("named"), print,
       EventType.FAILURE, CircuitState.OPEN, {1, 2}, frozenset(), (), [], {}, b"", bytearray(b"x"),
       ("eu", "db"), ("db",), range(3), 1j, Ellipsis, NotImplemented, type, ValueError("x")]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**13, 10**400]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 1.5, 2.0]),
    st.text(max_size=20),
    st.sampled_from(["", " ", "\x00", "\ud800", "🙂", "fixed", "progressive", "db", "eu",
                     "FIXED"]),
    huge,
    st.binary(max_size=8),
)
anything = st.one_of(
    st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=4),
    st.sampled_from(ODD),
)
good_option_values: dict[str, st.SearchStrategy[Any]] = {
    "max_attempts": st.integers(1, 10**6),
    "expiry": st.integers(1, 10**9),
    "expiry_strategy": st.sampled_from(["fixed", "progressive"]),
    "initial_expiry": st.integers(1, 10**6),
    "max_expiry": st.integers(1, 10**9),
    "backoff_factor": st.one_of(st.floats(1.0, 1e6), st.integers(1, 100)),
    "half_open_max_calls": st.integers(1, 100),
    "cleanup_interval": st.integers(1, 10**9),
    "inactive_threshold": st.integers(1, 10**12),
    "max_restarts": st.integers(0, 100),
    "restart_window": st.integers(1, 10**9),
}


def option_dicts(names: tuple[str, ...], *, bogus: bool = True) -> st.SearchStrategy[Any]:
    """Option dicts: good values, arbitrary values, and sometimes an unknown name."""
    keys = st.sampled_from(names + BOGUS_KEYS) if bogus else st.sampled_from(names)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name in draw(st.lists(keys, max_size=4, unique=True)):
            good = good_option_values.get(name)
            if good is not None and draw(st.booleans()):
                options[name] = draw(good)
            else:
                options[name] = draw(anything)
        return options

    return build()


identifiers = st.one_of(st.sampled_from(["a", "b", "db", Named("db"), "\ud800", "🙂"]), huge,
                        st.text(max_size=10), anything,
                        # shaped like the internal key of ("db", scope="eu")
                        st.sampled_from([("eu", "db"), ("eu", "a"), ("db",), HostileRepr()]))
scopes = st.one_of(st.none(), st.sampled_from(["eu", "us", "", Named("eu")]), anything)


# -- the contract's expectations --------------------------------------------------------------


class Invalid(Exception):
    """The contract refuses an option value."""


def valid_identifier(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 0


def valid_scope(value: Any) -> bool:
    return value is None or valid_identifier(value)


def check_option(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise Invalid(name)
    if name in MINIMUM:
        if type(value) is not int and not (isinstance(value, int) and type(value) is not bool):
            raise Invalid(name)
        if value < MINIMUM[name]:
            raise Invalid(name)
    elif name == "backoff_factor":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(name)
        if not (math.isfinite(value) and value >= 1.0):
            raise Invalid(name)
    elif name == "expiry_strategy" and (not isinstance(value, str)
                                        or value not in ("fixed", "progressive")):
        raise Invalid(name)


def accepted(options: Mapping[str, Any], allowed: tuple[str, ...], *,
             none_means_default: bool = False) -> dict[str, Any]:
    """The options the contract accepts, or Invalid."""
    result = {}
    for name, value in options.items():
        if value is None and none_means_default and name in allowed:
            continue
        check_option(name, value, allowed)
        result[name] = value
    return result


def resolve(explicit: Mapping[str, Any]) -> dict[str, Any]:
    """A connection's settings (docs/circuit-rules.md defaults); Invalid if inconsistent."""
    expiry = explicit.get("expiry", DEFAULTS["expiry"])
    initial = explicit.get("initial_expiry", expiry)
    maximum = explicit.get("max_expiry", 10 * initial)
    if maximum < initial:
        raise Invalid("max_expiry")
    settings = {name: explicit.get(name, DEFAULTS.get(name)) for name in CONNECTION_KEYS}
    settings.update(initial_expiry=initial, max_expiry=maximum, expiry=expiry)
    settings["backoff_factor"] = float(settings["backoff_factor"])
    return settings


def settings_of(status: Any) -> dict[str, Any]:
    return {name: getattr(status, name) for name in CONNECTION_KEYS}


def expect(errors: set[type[BaseException]], call: Any, *,
           may_succeed: bool = False) -> tuple[bool, Any]:
    """Run ``call``: (True, result) if it returned, (False, exc) if it raised an allowed error.

    With no ``errors`` the contract says the call succeeds; with some, it must raise one of
    them (unless ``may_succeed``: the contract leaves that input open). HostileError is
    always allowed (see the module docstring).
    """
    allowed: tuple[type[BaseException], ...] = (*errors, HostileError)
    try:
        result = call()
    except allowed as exc:
        assert errors or isinstance(exc, HostileError), f"unexpected {exc!r}"
        return False, exc
    except BaseException as exc:
        raise AssertionError(
            f"raised {type(exc).__name__}: {_safe(exc)}; allowed: "
            f"{sorted(e.__name__ for e in errors) or 'success'}") from exc
    assert not errors or may_succeed, (
        f"returned {_safe(result)}; expected one of {sorted(e.__name__ for e in errors)}")
    return True, result


def _safe(value: Any) -> str:
    try:
        return repr(value)[:300]
    except Exception:
        return f"<{type(value).__name__} with a failing repr>"


def keys_of(brama: Brama) -> set[tuple[str, str | None]]:
    return {(s.identifier, s.scope) for s in brama.connections()}


# -- systems ----------------------------------------------------------------------------------


def contains(keys: set[Any], key: Any) -> bool:
    """``key in keys`` for keys that may be unhashable (then they are not there)."""
    try:
        return key in keys
    except TypeError:
        return False


class Restarts:
    """Counts ("brama", "supervisor", "restart") telemetry (delivered by drain())."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, name: Any, measurements: Any, metadata: Any) -> None:
        self.count += 1


@contextlib.contextmanager
def fresh(*, populate: bool = False, **config: Any) -> Iterator[Brama]:
    """A system for one example; afterwards no actor may have crashed and it still runs."""
    restarts = Restarts()
    telemetry.attach("test-fuzz-restarts", ("brama", "supervisor", "restart"), restarts)
    brama = Brama.start(clock=ManualClock(), **config)
    try:
        if populate:
            for identifier, scope, options in POPULATION:
                brama.register(identifier, scope=scope, **options)
        yield brama
        assert not brama.stopped, "the system stopped itself"
        brama.drain(timeout=5)
        assert restarts.count == 0, f"{restarts.count} actor restart(s) caused by the input"
    finally:
        telemetry.detach("test-fuzz-restarts")
        brama.stop()


POPULATION: list[tuple[str, str | None, dict[str, Any]]] = [
    ("a", None, {"max_attempts": 10**9}),
    ("a", "eu", {"max_attempts": 10**9}),
    ("db", "eu", {"max_attempts": 10**9}),
    ("b", None, {"max_attempts": 1, "expiry": 10}),
]


# -- connections (docs/circuit-rules.md) ----------------------------------------------------------


@FUZZ
@given(identifier=identifiers, scope=scopes,
       kind=st.one_of(st.just("general"), st.sampled_from(["db", ""]), huge, anything),
       options=option_dicts(CONNECTION_KEYS), metadata=st.one_of(
           st.none(), st.dictionaries(st.text(max_size=5), anything, max_size=4), anything),
       twice=st.booleans())
def test_register(identifier: Any, scope: Any, kind: Any, options: dict[str, Any],
                  metadata: Any, twice: bool) -> None:
    """register() with any arguments registers as documented or refuses, changing nothing."""
    with fresh(populate=True) as brama:
        before = keys_of(brama)
        if twice and valid_identifier(identifier) and valid_scope(scope) \
                and not contains(before, (identifier, scope)):
            brama.register(identifier, scope=scope)
            before = keys_of(brama)
        errors: set[type[BaseException]] = set()
        if not (valid_identifier(identifier) and valid_scope(scope)):
            errors.add(InvalidIdentifier)
        if not (isinstance(kind, str) and kind):
            errors.add(InvalidConfiguration)
        if not (metadata is None or isinstance(metadata, Mapping)):
            errors.add(TypeError)
        if any(name not in CONNECTION_KEYS for name in options):
            errors.add(TypeError)  # register has explicit keyword parameters only
        try:
            given_options = accepted(
                {k: v for k, v in options.items() if k in CONNECTION_KEYS}, CONNECTION_KEYS,
                none_means_default=True)
            expected_settings = resolve(given_options)
        except Invalid:
            errors.add(InvalidConfiguration)
        if contains(before, (identifier, scope)):
            errors.add(AlreadyRegistered)
        ok, status = expect(errors, lambda: brama.register(
            identifier, scope=scope, type=kind, metadata=metadata, **options))
        if not ok:
            assert keys_of(brama) == before
            return
        assert keys_of(brama) == before | {(identifier, scope)}
        assert type(status.identifier) is str and status.identifier == identifier
        assert status.scope == scope and status.type == kind
        assert (status.state, status.failure_count, status.success_rate) == ("closed", 0, None)
        assert settings_of(status) == expected_settings
        assert dict(status.metadata) == dict(metadata or {})
        assert brama.status(identifier, scope=scope) == status
        assert brama.available(identifier, scope=scope) is True


known_ids = st.one_of(st.sampled_from(["a", "b", "db", Named("a")]), identifiers)
known_scopes = st.one_of(st.none(), st.just("eu"), scopes)
#: (identifier, scope): mostly a registered connection of POPULATION, else anything.
some_keys = st.one_of(st.sampled_from([(i, s) for i, s, _ in POPULATION]),
                      st.sampled_from([(i, s) for i, s, _ in POPULATION]),
                      st.tuples(known_ids, known_scopes),
                      # an identifier shaped like the internal key of ("db", scope="eu")
                      st.sampled_from([(("eu", "db"), None), (("eu", "a"), None),
                                       (Named("a"), Named("eu")), ("a", ("eu",))]))


@FUZZ
@given(reports=st.lists(st.tuples(
    st.sampled_from(["success", "failure"]), some_keys, anything,
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), anything, max_size=4), anything,
              st.builds(huge_metadata),
              st.sampled_from([HostileMapping(), MappingProxyType({"k": [1]})]))),
    min_size=1, max_size=4))
def test_success_and_failure(reports: list[tuple[str, Any, Any, Any]]) -> None:
    """success()/failure() count exactly one report each, or refuse with the documented error."""
    with fresh(populate=True) as brama:
        registered = keys_of(brama)
        for kind, key, reason, metadata in reports:
            identifier, scope = key
            errors: set[type[BaseException]] = set()
            if not (valid_identifier(identifier) and valid_scope(scope)):
                errors.add(InvalidIdentifier)
            elif not contains(registered, key):
                errors.add(ConnectionNotFound)
            if not (metadata is None or isinstance(metadata, Mapping)):
                errors.add(TypeError)
            before = None if errors else brama.status(identifier, scope=scope)
            if kind == "success":
                ok, _ = expect(errors, lambda: brama.success(
                    identifier, scope=scope, metadata=metadata))  # noqa: B023
            else:
                ok, _ = expect(errors, lambda: brama.failure(
                    identifier, scope=scope, reason=reason, metadata=metadata))  # noqa: B023
            assert keys_of(brama) == registered
            if before is None:
                continue
            after = brama.status(identifier, scope=scope)  # same thread: reflects the report
            added = 1 if ok else 0
            if kind == "success":
                assert after.total_successes == before.total_successes + added
                assert after.total_failures == before.total_failures
                assert after.failure_count == (0 if ok else before.failure_count)
            else:
                assert after.total_failures == before.total_failures + added
                assert after.total_successes == before.total_successes
                assert after.failure_count == before.failure_count + added


@FUZZ
@given(key=some_keys, listing_scope=st.one_of(st.none(), scopes))
def test_lookups(key: tuple[Any, Any], listing_scope: Any) -> None:
    """available()/status()/unregister()/connections() validate, and a bad call removes nothing."""
    identifier, scope = key
    with fresh(populate=True) as brama:
        registered = keys_of(brama)
        known = contains(registered, key)
        valid = valid_identifier(identifier) and valid_scope(scope)
        ok, result = expect(set() if valid else {InvalidIdentifier},
                            lambda: brama.available(identifier, scope=scope))
        if ok:
            assert result is (known and brama.status(identifier, scope=scope).available)
        errors: set[type[BaseException]] = (
            {InvalidIdentifier} if not valid else (set() if known else {ConnectionNotFound}))
        ok, status = expect(errors, lambda: brama.status(identifier, scope=scope))
        if ok:
            assert (status.identifier, status.scope) == key
        ok, listed = expect(set() if valid_scope(listing_scope) else {InvalidIdentifier},
                            lambda: brama.connections(scope=listing_scope))
        if ok:
            assert {(s.identifier, s.scope) for s in listed} == {
                k for k in registered if k[1] == listing_scope}
        ok, existed = expect(set() if valid else {InvalidIdentifier},
                             lambda: brama.unregister(identifier, scope=scope))
        if ok:
            assert existed is known
            assert keys_of(brama) == registered - {key}
        else:
            assert keys_of(brama) == registered


@FUZZ
@given(actions=st.lists(st.tuples(
    st.sampled_from(["open", "close", "reset"]), some_keys, anything,
    st.one_of(st.none(), st.integers(1, 10**40), anything)), min_size=1, max_size=4))
def test_manual_control(actions: list[tuple[str, Any, Any, Any]]) -> None:
    """open/close/reset_circuit apply exactly as documented or refuse, changing nothing."""
    with fresh(populate=True) as brama:
        registered = keys_of(brama)
        for action, key, reason, expiry in actions:
            identifier, scope = key
            errors: set[type[BaseException]] = set()
            if not (valid_identifier(identifier) and valid_scope(scope)):
                errors.add(InvalidIdentifier)
            elif not contains(registered, key):
                errors.add(ConnectionNotFound)
            if action == "open" and expiry is not None:
                try:
                    check_option("expiry", expiry, ("expiry",))
                except Invalid:
                    errors.add(InvalidConfiguration)
            before = brama.status(identifier, scope=scope) if not errors else None
            if action == "open":
                call: Any = lambda: brama.open_circuit(  # noqa: E731
                    identifier, scope=scope, reason=reason, expiry=expiry)  # noqa: B023
            elif action == "close":
                call = lambda: brama.close_circuit(  # noqa: E731
                    identifier, scope=scope, reason=reason)  # noqa: B023
            else:
                call = lambda: brama.reset_circuit(  # noqa: E731
                    identifier, scope=scope, reason=reason)  # noqa: B023
            ok, _ = expect(errors, call)
            assert keys_of(brama) == registered
            if before is None:
                continue
            after = brama.status(identifier, scope=scope)
            if not ok:
                assert after == before
            elif action == "open":
                assert after.state == "open" and brama.available(identifier, scope=scope) is False
                if expiry is not None:
                    assert after.expiry == expiry
            else:
                assert after.state == "closed"
                expected_count = before.failure_count if action == "close" else 0
                assert after.failure_count == expected_count


@FUZZ
@given(calls=st.lists(st.tuples(option_dicts(GLOBAL_KEYS),
                                st.one_of(st.none(), st.none(), st.none(), anything)),
                      min_size=1, max_size=3))
def test_configure_system(calls: list[tuple[dict[str, Any], Any]]) -> None:
    """configure(**options) changes later registrations' defaults, or refuses, changing nothing."""
    with fresh() as brama:
        explicit: dict[str, Any] = {}
        for options, scope in calls:
            errors: set[type[BaseException]] = set()
            if scope is not None:
                errors.add(InvalidConfiguration)
            try:
                merged = {**explicit, **accepted(options, GLOBAL_KEYS)}
                resolve({k: v for k, v in merged.items() if k in CONNECTION_KEYS})
            except Invalid:
                errors.add(InvalidConfiguration)
            ok, _ = expect(errors, lambda: brama.configure(scope=scope, **options))  # noqa: B023
            if ok:
                explicit = merged
            probe = brama.register("probe")
            assert settings_of(probe) == resolve(
                {k: v for k, v in explicit.items() if k in CONNECTION_KEYS})
            assert brama.unregister("probe") is True


@FUZZ
@given(calls=st.lists(st.tuples(some_keys.filter(lambda key: key[0] is not None),
                                option_dicts(CONNECTION_KEYS)), min_size=1, max_size=3))
def test_configure_connection(calls: list[tuple[Any, dict[str, Any]]]) -> None:
    """configure(identifier, **options) changes that connection, or refuses and changes nothing."""
    with fresh(populate=True) as brama:
        registered = keys_of(brama)
        model = {(i, s): dict(o) for i, s, o in POPULATION}
        for key, options in calls:
            identifier, scope = key
            errors: set[type[BaseException]] = set()
            if not (valid_identifier(identifier) and valid_scope(scope)):
                errors.add(InvalidIdentifier)
            elif not contains(registered, key):
                errors.add(ConnectionNotFound)
            before = brama.status(identifier, scope=scope) if not errors else None
            try:
                merged = {**model.get(key, {}), **accepted(options, CONNECTION_KEYS)}
                expected = resolve(merged)
            except (Invalid, TypeError):
                errors.add(InvalidConfiguration)
            ok, _ = expect(errors, lambda: brama.configure(
                identifier, scope=scope, **options))  # noqa: B023
            assert keys_of(brama) == registered
            if before is None:
                continue
            after = brama.status(identifier, scope=scope)
            if ok:
                model[key] = merged
                assert settings_of(after) == expected  # never opened: expiry is the setting
                assert (after.state, after.failure_count) == (before.state, before.failure_count)
            else:
                assert after == before


# -- subscriptions (docs/events.md) ----------------------------------------------------------


class Sink(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return None


@pytest.fixture
def sink() -> Iterator[pykka.ActorRef[Any]]:
    ref = Sink.start()
    yield ref
    ref.stop()


event_filters = st.one_of(
    st.none(),
    st.sampled_from(EVENT_NAMES),
    st.lists(st.sampled_from([*EVENT_NAMES, *EventType]), min_size=1, max_size=4),
    st.frozensets(st.sampled_from(EVENT_NAMES), max_size=3),
    st.lists(st.one_of(st.sampled_from(EVENT_NAMES), st.text(max_size=8), anything),
             max_size=3),
    anything,
)


def predict_events(events: Any) -> set[type[BaseException]]:
    """docs/events.md: unknown names are a ValueError; non-names a TypeError."""
    if events is None or isinstance(events, EventType):
        return set()
    if isinstance(events, str):
        return set() if events in EVENT_NAMES else {ValueError}
    try:
        items = list(events)
    except (TypeError, HostileError):
        return {TypeError}
    if not items:
        return {ValueError}
    errors: set[type[BaseException]] = set()
    for item in items:
        if isinstance(item, EventType):
            continue
        if not isinstance(item, str):
            errors.add(TypeError)
        elif item not in EVENT_NAMES:
            errors.add(ValueError)
    return errors


def positive_or_none(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 1)


@FUZZ
@given(events=event_filters, connection=st.one_of(st.none(), known_ids),
       scope=st.one_of(st.none(), known_scopes),
       filter_=st.one_of(st.none(), st.just(lambda e: True), st.just(bool), anything),
       target=st.sampled_from(["inbox", "actor", "handler", "both", "bad-actor"]),
       handler=st.one_of(st.just(lambda e: None), st.just(len), anything),
       batch_size=st.one_of(st.none(), st.integers(1, 5), anything),
       batch_timeout=st.one_of(st.none(), st.integers(1, 1000), anything),
       max_pending=st.one_of(st.just(10_000), st.integers(1, 10), anything))
def test_subscribe(sink: pykka.ActorRef[Any], events: Any, connection: Any, scope: Any,
                   filter_: Any, target: str, handler: Any, batch_size: Any,
                   batch_timeout: Any, max_pending: Any) -> None:
    """subscribe() with any arguments subscribes as documented or refuses and subscribes nothing."""
    errors = predict_events(events)
    if connection is not None and not valid_identifier(connection):
        errors.add(InvalidIdentifier)
    if not valid_scope(scope):
        errors.add(InvalidIdentifier)
    if filter_ is not None and not callable(filter_):
        errors.add(TypeError)
    if not (type(max_pending) is int and max_pending >= 1):
        errors |= {ValueError, TypeError}
    for value in (batch_size, batch_timeout):
        if not positive_or_none(value):
            errors |= {ValueError, TypeError}
    kwargs: dict[str, Any] = {}
    if target in ("actor", "both"):
        kwargs["subscriber"] = sink
    if target == "bad-actor":
        kwargs["subscriber"] = handler if handler is not None else 3
        errors.add(TypeError)
    if target in ("handler", "both"):
        kwargs["handler"] = handler
        if handler is not None and not (callable(handler)
                                        or callable(getattr(handler, "handle_event", None))):
            errors.add(TypeError)
    if target == "both" and handler is not None:
        errors.add(ValueError)
    with fresh() as brama:
        ok, sub = expect(errors, lambda: brama.subscribe(
            events=events, connection=connection, scope=scope, filter=filter_,
            batch_size=batch_size, batch_timeout=batch_timeout, max_pending=max_pending,
            **kwargs))
        if ok:
            assert isinstance(sub, Subscription)
            # It works: a registration reaches it (or is filtered out) without harm.
            brama.register("probe")
            brama.drain(timeout=5)
            assert brama.unsubscribe(sub) is True
            assert brama.unsubscribe(sub) is False
        # Whatever happened, none of this thread's subscriptions is left over.
        assert brama.unsubscribe() == 0


@FUZZ
@given(subscription=st.one_of(st.none(), anything),
       connection=st.one_of(st.none(), anything), scope=st.one_of(st.none(), anything),
       events=st.one_of(st.none(), event_filters), subscriber=st.one_of(st.none(), anything))
def test_unsubscribe(subscription: Any, connection: Any, scope: Any, events: Any,
                     subscriber: Any) -> None:
    """unsubscribe() with any arguments never removes another owner's subscription."""
    with fresh() as brama:
        holder: list[Subscription] = []
        other = threading.Thread(target=lambda: holder.append(brama.subscribe(connection="a")))
        other.start()
        other.join(10)
        mine = brama.subscribe(connection="a", scope="eu")
        if subscription is not None:
            expect({TypeError}, lambda: brama.unsubscribe(subscription))
        else:
            errors = predict_events(events) if events is not None else set()
            ok, removed = expect(errors, lambda: brama.unsubscribe(
                connection=connection, scope=scope, events=events, subscriber=subscriber),
                may_succeed=not errors)
            if ok:
                assert isinstance(removed, int) and 0 <= removed <= 1
        assert brama.unsubscribe(holder[0]) is True  # another thread's: never removed here
        brama.unsubscribe(mine)
        assert brama.unsubscribe() == 0


# -- starting systems (docs/circuit-rules.md (configuration))
# --------------------------------------------------------


@FUZZ
@given(config=option_dicts(GLOBAL_KEYS),
       clock=st.one_of(st.just("manual"), st.just("manual"),
                       anything.filter(lambda value: value is not None)),
       parent=st.one_of(st.none(), st.none(), anything))
def test_start(config: dict[str, Any], clock: Any, parent: Any) -> None:
    """Brama.start(**config) starts a working system or raises InvalidConfiguration."""
    errors: set[type[BaseException]] = set()
    try:
        explicit = accepted(config, GLOBAL_KEYS)
        resolve({k: v for k, v in explicit.items() if k in CONNECTION_KEYS})
    except Invalid:
        errors.add(InvalidConfiguration)
    if isinstance(clock, str) and clock == "manual":
        clock = ManualClock()
    else:
        errors.add(InvalidConfiguration)  # not a Clock (None, the system clock, is not drawn)
    if parent is not None:
        errors.add(InvalidConfiguration)  # not an ActorRef
    ok, brama = expect(errors, lambda: Brama.start(clock=clock, parent=parent, **config))
    if not ok:
        return
    try:
        assert brama.connections() == []
        status = brama.register("probe")
        assert settings_of(status) == resolve(
            {k: v for k, v in explicit.items() if k in CONNECTION_KEYS})
        brama.failure("probe")
        assert brama.status("probe").failure_count == 1
    finally:
        brama.stop()
    prefix = brama._context.name + "-"
    assert not [t for t in threading.enumerate() if t.name.startswith(prefix)]


# -- guarding calls (docs/guarding.md) ---------------------------------------------------------

VERDICTS = ["success", "failure", ("failure", "why"), "ignore"]


def valid_exclude(value: Any) -> bool:
    """An exception type or an iterable of them (empty allowed)."""
    if isinstance(value, type):
        return issubclass(value, BaseException)
    try:
        items = tuple(value)
    except Exception:
        return False
    return all(isinstance(item, type) and issubclass(item, BaseException) for item in items)


def is_verdict(value: Any) -> bool:
    return any(type(value) is type(v) and value == v for v in VERDICTS)


@FUZZ
@given(key=some_keys,
       error_handler=st.one_of(st.none(), st.just("const"), st.just("const"), anything),
       verdict=st.one_of(st.sampled_from(VERDICTS), anything),
       register=st.one_of(st.booleans(), st.booleans(), st.sampled_from([0, 1, "yes", None])),
       exclude=st.one_of(st.just(()), st.just(KeyError), st.just((KeyError, OSError)),
                         anything.filter(lambda v: not (isinstance(v, str) and len(v) > 99))),
       options=option_dicts(CONNECTION_KEYS, bogus=False),
       extra=st.fixed_dictionaries({}, optional={"type": anything, "metadata": anything}),
       which=st.sampled_from(["decorator", "guard"]),
       raises=st.booleans(), opened=st.booleans())
def test_guarded_calls(key: tuple[Any, Any], error_handler: Any, verdict: Any,
                       register: Any, exclude: Any, options: dict[str, Any],
                       extra: dict[str, Any], which: str, raises: bool, opened: bool) -> None:
    """circuit_breaker(...)/guard(...) refuse bad arguments up front; calls behave as documented."""
    identifier, scope = key
    if isinstance(error_handler, str) and error_handler == "const":
        error_handler = lambda result: verdict  # noqa: E731
    setup: set[type[BaseException]] = set()
    if not (valid_identifier(identifier) and valid_scope(scope)):
        setup.add(InvalidIdentifier)
    if error_handler is not None and (which == "guard" or not callable(error_handler)):
        setup.add(TypeError)  # guard() has no result to judge: error_handler is refused
    if not isinstance(register, bool):
        setup.add(TypeError)
    if not valid_exclude(exclude):
        setup.add(TypeError)
    kind, metadata = extra.get("type", "general"), extra.get("metadata")
    if not (isinstance(kind, str) and kind):
        setup.add(InvalidConfiguration)
    if not (metadata is None or isinstance(metadata, Mapping)):
        setup.add(TypeError)
    try:
        accepted(options, CONNECTION_KEYS, none_means_default=True)
    except Invalid:
        setup.add(InvalidConfiguration)
    # A non-bool register= may be refused (TypeError) or read as a truth value.
    may_succeed = setup == {TypeError} and not isinstance(register, bool) and (
        error_handler is None or (which == "decorator" and callable(error_handler))) and \
        valid_exclude(exclude) and (metadata is None or isinstance(metadata, Mapping))
    error = KeyError("boom")

    def function() -> Any:
        if raises:
            raise error
        return verdict

    with fresh(populate=True) as brama:
        registered = keys_of(brama)
        known = contains(registered, key)
        if opened and known:
            brama.open_circuit(identifier, scope=scope)

        def build() -> Any:
            if which == "guard":
                return brama.guard(identifier, scope=scope, error_handler=error_handler,
                                   register=register, exclude=exclude, **options, **extra)
            return circuit_breaker(identifier, scope=scope, error_handler=error_handler,
                                   brama=brama, register=register, exclude=exclude,
                                   **options, **extra)(function)

        ok, guarded = expect(setup, build, may_succeed=may_succeed)
        if not ok:
            assert keys_of(brama) == registered
            return
        # What the call must do (docs/guarding.md), decided step by step.
        call_error: type[BaseException] | None = None
        records = 0
        if not known and not register:
            call_error = ConnectionNotFound
        elif known and not brama.available(identifier, scope=scope):
            call_error = CircuitOpenError
        elif raises:
            call_error = KeyError
            excluded = (exclude,) if isinstance(exclude, type) else tuple(exclude)
            records = 0 if excluded and isinstance(error, excluded) else 1
        elif error_handler is not None and not is_verdict(verdict):
            call_error = TypeError
        elif error_handler is not None and verdict not in ("success", "ignore"):
            records = 1
        before = brama.status(identifier, scope=scope).total_failures if known else 0

        def call() -> Any:
            if which == "guard":
                with guarded:
                    return function()
            return guarded()

        ok, outcome = expect({call_error} if call_error else set(), call)
        if call_error is KeyError:
            assert outcome is error  # propagated unchanged
        if call_error is ConnectionNotFound:
            assert keys_of(brama) == registered
            return
        assert keys_of(brama) == registered | {key}  # registered on first use
        after = brama.status(identifier, scope=scope)
        assert after.total_failures == before + records


# -- the manual clock ----------------------------------------------------------------------------


@FUZZ
@given(start=st.one_of(st.integers(0, 10**15), anything), steps=st.lists(
    st.one_of(st.integers(0, 10**6), st.floats(0, 1e6), anything), max_size=5))
def test_manual_clock(start: Any, steps: list[Any]) -> None:
    """ManualClock(start_ms)/advance(ms) take whole ms >= 0, else ValueError/TypeError."""
    valid_start = type(start) is int and start >= 0
    ok, clock = expect(set() if valid_start else {ValueError, TypeError},
                       lambda: ManualClock(start_ms=start))
    if not ok:
        return
    with Brama.start(clock=clock, cleanup_interval=1) as brama:
        brama.register("db", max_attempts=1, expiry=1)
        brama.failure("db")
        for ms in steps:
            now = clock.now()
            valid = (not isinstance(ms, bool) and isinstance(ms, int | float) and ms >= 0
                     and (isinstance(ms, int) or (math.isfinite(ms) and ms.is_integer())))
            ok, _ = expect(set() if valid else {ValueError, TypeError},
                           lambda ms=ms: clock.advance(ms))
            assert clock.now() == (now + int(ms) if ok else now)
        assert brama.clock.now() == clock.now()
        assert not brama.stopped


# -- single hostile inputs, each a defect when it fails ------------------------------------------


def test_hostile_metadata_mapping_cannot_crash_actors() -> None:
    """A metadata Mapping that raises on access never crashes an actor or stops the system."""
    with fresh() as brama:
        brama.register("db", max_attempts=100)
        brama.register("bystander")
        returned = {"failure": 0, "success": 0}
        for _ in range(12):  # more than max_restarts (10) if each one crashed something
            for kind, report in (
                    ("failure", lambda: brama.failure("db", metadata=HostileMapping())),
                    ("success", lambda: brama.success("db", metadata=HostileMapping()))):
                ok, _ = expect({TypeError, ValueError}, report, may_succeed=True)
                returned[kind] += ok
        status = brama.status("db")
        assert (status.total_failures, status.total_successes) == (
            returned["failure"], returned["success"])
        assert brama.status("bystander").state == "closed"


def test_identifier_shaped_like_an_internal_key_is_refused() -> None:
    """A tuple ("eu", "db") is no identifier: available()/success() raise, record nothing."""
    with fresh() as brama:
        brama.register("db", scope="eu")
        for call in (lambda: brama.available(("eu", "db")),  # type: ignore[arg-type]
                     lambda: brama.success(("eu", "db"))):  # type: ignore[arg-type]
            with pytest.raises(InvalidIdentifier):
                call()
        assert brama.status("db", scope="eu").total_successes == 0


def test_exception_with_hostile_repr_propagates_unchanged() -> None:
    """A guarded call's exception propagates unchanged even if its repr raises."""

    class Odd(Exception):
        def __repr__(self) -> str:
            raise HostileError("__repr__")

    error = Odd()
    with fresh() as brama:

        @circuit_breaker("svc", brama=brama)
        def call() -> None:
            raise error

        with pytest.raises(Odd) as caught:
            call()
        assert caught.value is error
        assert brama.status("svc").total_failures == 1


def test_circuit_breaker_refuses_a_non_system_up_front() -> None:
    """circuit_breaker(brama=3) raises TypeError when decorating, not AttributeError later."""
    with pytest.raises(TypeError):
        circuit_breaker("svc", brama=3)(lambda: None)


def test_huge_valid_cleanup_interval_keeps_expiries_running() -> None:
    """cleanup_interval beyond threading.TIMEOUT_MAX s (a valid int) does not stop expiries."""
    huge = 10**13  # ms: 317 years, more than threading.TIMEOUT_MAX (about 9.2e9 s)
    died: list[Any] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: died.append(args.exc_value)
    try:
        brama = Brama.start(cleanup_interval=huge)  # the system clock: a real timer thread
        try:
            sub = brama.subscribe(events=["circuit_half_opened"], connection="db")
            brama.register("db", max_attempts=1, expiry=20)
            brama.failure("db")
            try:
                event = sub.get(timeout=3)  # due after 20 ms; 3 s is generous
            except queue.Empty:
                event = None
            assert event is not None, f"no expiry within 3 s; timer thread died: {died!r}"
        finally:
            brama.stop()
    finally:
        threading.excepthook = previous
    assert died == []


def test_guard_validates_exclude_before_using_it() -> None:
    """guard(exclude=NotImplemented) is a TypeError, not a truth test of an unchecked argument."""
    with fresh() as brama:
        with pytest.raises(TypeError):
            brama.guard("svc", exclude=NotImplemented)
        assert keys_of(brama) == set()
