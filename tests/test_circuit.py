"""The pure circuit rules (``brama_actors._rules``) against docs/circuit-rules.md and
docs/events.md.

Two layers:

* a hypothesis ``RuleBasedStateMachine`` drives ``apply`` with random sequences of every
  input while time moves forward, and compares each step with a deliberately simple
  reference model written from the contract (docs/circuit-rules.md, docs/events.md) (not from
  ``_rules.py``): the status fields and
  the exact event sequence, data keys and reasons of section 5;
* example tests, one per statement of sections 3 and 4 and per event shape of section 5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from brama_actors import _rules as rules
from brama_actors._config import (
    CONNECTION_OPTIONS,
    Settings,
    resolve_settings,
    validate_options,
)
from brama_actors._events import EventType
from brama_actors._rules import (
    Close,
    Configure,
    Expire,
    Failure,
    Open,
    Reset,
    Success,
    Transition,
    apply,
    initial_status,
    opening_expiry,
    registration_events,
    removal_events,
)
from brama_actors._status import CircuitState, ConnectionStatus, ExpiryStrategy

T0 = 1_700_000_000_000

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

#: The settings keys that registration events carry (docs/events.md).
SETTINGS_KEYS = (
    "max_attempts",
    "expiry",
    "expiry_strategy",
    "initial_expiry",
    "max_expiry",
    "backoff_factor",
    "half_open_max_calls",
)

def resolve(options: Mapping[str, Any]) -> Settings:
    """Settings as the system builds them: validate (normalise) the options, then resolve."""
    return resolve_settings(validate_options(options, CONNECTION_OPTIONS))


#: Marker for "the key must be present, any value" in expected event data.
ANY = object()
#: Marker for "the key must be present and hold a non-empty str".
ANY_STR = object()


# -- the reference model, from the contract (docs/circuit-rules.md, docs/events.md)
# --------------------------------------------------


def spec_opening_length(settings: Settings, failure_count: int) -> int:
    """docs/circuit-rules.md (expiry), computed exactly: fixed -> expiry; progressive -> the
    capped power.

    Exact rational arithmetic, one multiplication per failure and stopping at the cap, so
    it is obviously right rather than fast (the machine keeps failure counts small).
    """
    if settings.expiry_strategy == "fixed":
        return settings.expiry
    cap = Fraction(settings.max_expiry)
    factor = Fraction(settings.backoff_factor)
    length = Fraction(settings.initial_expiry)
    for _ in range(failure_count):
        if length >= cap or factor == 1:
            break
        length *= factor
    return int(min(cap, length))


def close_enough(settings: Settings, actual: int, expected: int) -> bool:
    """Whether an opening length matches the model's.

    The progressive formula is evaluated in floats by any sane implementation; one ms of
    rounding (truncation of 399.999...) is accepted there, nothing else.
    """
    if settings.expiry_strategy == "fixed":
        return actual == expected
    return abs(actual - expected) <= 1


@dataclasses.dataclass
class Model:
    """What the docs say a circuit's status is after a sequence of inputs."""

    settings: Settings
    state: str = CLOSED
    failure_count: int = 0
    opened_at: int | None = None
    #: Length of the current or last opening (None before the first opening).
    opening_length: int | None = None
    #: The values ``status.expiry`` may show (see ``configure``).
    shown_expiry: frozenset[int] = frozenset()
    state_changed_at: int = T0
    last_success_time: int | None = None
    last_failure_time: int | None = None
    total_successes: int = 0
    total_failures: int = 0
    #: opened_at of every opening so far: the pool stale Expire tokens are drawn from.
    openings: list[int] = dataclasses.field(default_factory=list)

    def open_now(self, now: int, expiry: int | None) -> int:
        """Start an opening at ``now``; return its length."""
        length = expiry if expiry is not None else spec_opening_length(
            self.settings, self.failure_count
        )
        self.opened_at = now
        self.opening_length = length
        self.shown_expiry = frozenset({length})
        self.openings.append(now)
        return length

    def change_state(self, state: str, now: int) -> None:
        self.state = state
        self.state_changed_at = now


def expect_events(
    transition: Transition,
    expected: Sequence[tuple[str, Mapping[str, Any]]],
    model: Model,
) -> None:
    """Assert the events are exactly ``expected`` (types, order) with the required data.

    Every event's data must hold ``state`` (the state after the whole operation) and
    ``failure_count``; each expected key must be present and equal (``ANY``: present;
    ``ANY_STR``: a non-empty str; an ``("expiry", n)`` is compared with the float
    tolerance of ``close_enough``).
    """
    types = [str(kind) for kind, _ in transition.events]
    assert types == [kind for kind, _ in expected], transition.events
    for (kind, data), (_, keys) in zip(transition.events, expected, strict=True):
        assert isinstance(kind, EventType)
        assert data["state"] == model.state, (kind, data)
        assert data["failure_count"] == model.failure_count, (kind, data)
        for key, value in keys.items():
            assert key in data, (kind, key, data)
            if value is ANY:
                continue
            if value is ANY_STR:
                assert isinstance(data[key], str), (kind, key, data)
                assert data[key], (kind, key, data)
            elif key == "expiry" and kind is not EventType.EXPIRY:
                assert close_enough(model.settings, data[key], value), (kind, data, value)
            else:
                assert data[key] == value, (kind, key, data[key], value)


def check_status(status: ConnectionStatus, model: Model, settings: Settings) -> None:
    """Assert the status matches the model field by field."""
    assert isinstance(status.state, CircuitState)
    assert status.state == model.state
    assert status.failure_count == model.failure_count
    assert status.total_successes == model.total_successes
    assert status.total_failures == model.total_failures
    assert status.last_success_time == model.last_success_time
    assert status.last_failure_time == model.last_failure_time
    assert status.state_changed_at == model.state_changed_at
    if model.state == OPEN:
        assert status.opened_at == model.opened_at
        assert model.opening_length is not None
        assert close_enough(settings, status.expiry, model.opening_length), (
            status.expiry,
            model.opening_length,
        )
    else:
        assert any(close_enough(settings, status.expiry, v) for v in model.shown_expiry), (
            status.expiry,
            model.shown_expiry,
        )
    for key in SETTINGS_KEYS:
        if key != "expiry":
            assert getattr(status, key) == getattr(settings, key), key


# -- strategies ----------------------------------------------------------------------

reasons = st.sampled_from([None, "timeout", "HTTP 503", "ConnectionError('reset')", ""])
manual_reasons = st.sampled_from([None, "maintenance", "operator says so"])
time_steps = st.one_of(st.just(0), st.integers(1, 100), st.integers(100, 200_000))


@st.composite
def circuit_settings(draw: st.DrawFn) -> Settings:
    """Random explicit options resolved as a connection's settings."""
    explicit: dict[str, Any] = {
        "max_attempts": draw(st.integers(1, 6)),
        "expiry_strategy": draw(st.sampled_from(["fixed", "progressive"])),
        "half_open_max_calls": draw(st.integers(1, 3)),
    }
    if draw(st.booleans()):
        explicit["expiry"] = draw(st.integers(1, 120_000))
    if draw(st.booleans()):
        explicit["initial_expiry"] = draw(st.integers(1, 10_000))
    if draw(st.booleans()):
        base = explicit.get("initial_expiry") or explicit.get("expiry") or 60_000
        explicit["max_expiry"] = base + draw(st.integers(0, 1_000_000))
    if draw(st.booleans()):
        explicit["backoff_factor"] = draw(
            st.sampled_from([1, 1.0, 1.25, 1.5, 2, 2.0, 3.0, 10.0])
            | st.floats(1.0, 4.0, allow_nan=False, allow_infinity=False)
        )
    return resolve(explicit)


# -- the state machine ---------------------------------------------------------------


class CircuitMachine(RuleBasedStateMachine):
    """Random inputs through ``apply``; every step is compared with ``Model``."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.settings = resolve({})
        self.status = initial_status("svc", None, "general", self.settings, None, T0)
        self.model = Model(self.settings)

    @initialize(settings=circuit_settings(), start=st.integers(0, 10**12))
    def register(self, settings: Settings, start: int) -> None:
        self.now = T0 + start
        self.settings = settings
        self.status = initial_status("svc", "scope", "http", settings, {"k": 1}, self.now)
        self.model = Model(
            settings,
            state_changed_at=self.now,
            shown_expiry=frozenset({settings.expiry}),
        )
        check_status(self.status, self.model, settings)
        assert self.status.registered_at == self.now
        assert self.status.opened_at is None

    def step(self, op: rules.Input) -> Transition:
        transition = apply(self.status, self.settings, op, self.now)
        self.status = transition.status
        return transition

    # -- reports ---------------------------------------------------------------------
    @rule(dt=time_steps)
    def success(self, dt: int) -> None:
        self.now += dt
        m = self.model
        before = m.state
        transition = self.step(Success())
        m.total_successes += 1
        m.last_success_time = self.now
        m.failure_count = 0
        if before == HALF_OPEN:
            m.change_state(CLOSED, self.now)
            expected = [
                ("success", {}),
                ("circuit_closed", {}),
                ("state_change", {"previous_state": HALF_OPEN, "new_state": CLOSED,
                                  "reason": ANY}),
            ]
        else:
            expected = [("success", {})]
        expect_events(transition, expected, m)

    @rule(dt=time_steps, reason=reasons)
    def failure(self, dt: int, reason: str | None) -> None:
        self.now += dt
        m = self.model
        before = m.state
        transition = self.step(Failure(reason))
        m.total_failures += 1
        m.last_failure_time = self.now
        m.failure_count += 1
        if before == CLOSED and m.failure_count >= m.settings.max_attempts:
            why: Any = "Threshold exceeded"
        elif before == HALF_OPEN:
            # "the failure's own reason in half_open"; with no reason given, the contract is
            # silent: any non-empty str is accepted.
            why = reason if reason is not None else ANY_STR
        else:
            expect_events(transition, [("failure", {"reason": reason})], m)
            return
        length = m.open_now(self.now, None)
        m.change_state(OPEN, self.now)
        expect_events(
            transition,
            [
                ("failure", {"reason": reason}),
                ("circuit_opened", {"reason": why, "opened_at": self.now, "expiry": length}),
                ("state_change", {"previous_state": before, "new_state": OPEN, "reason": why}),
            ],
            m,
        )

    # -- manual transitions ----------------------------------------------------------
    @rule(dt=time_steps, reason=manual_reasons, expiry=st.none() | st.integers(1, 500_000))
    def open_circuit(self, dt: int, reason: str | None, expiry: int | None) -> None:
        self.now += dt
        m = self.model
        before = m.state
        transition = self.step(Open(reason, expiry))
        why = reason if reason is not None else "Manually opened"
        length = m.open_now(self.now, expiry)
        opened = ("circuit_opened", {"reason": why, "opened_at": self.now, "expiry": length})
        if before == OPEN:
            expect_events(transition, [opened], m)
        else:
            m.change_state(OPEN, self.now)
            expect_events(
                transition,
                [opened, ("state_change", {"previous_state": before, "new_state": OPEN,
                                           "reason": why})],
                m,
            )
        if expiry is not None:
            assert self.status.expiry == expiry

    @rule(dt=time_steps, reason=manual_reasons)
    def close_circuit(self, dt: int, reason: str | None) -> None:
        self.now += dt
        m = self.model
        before = m.state
        transition = self.step(Close(reason))
        if before == CLOSED:
            expect_events(transition, [], m)
            return
        why = reason if reason is not None else "Manually closed"
        m.change_state(CLOSED, self.now)
        expect_events(
            transition,
            [
                ("circuit_closed", {"reason": why}),
                ("state_change", {"previous_state": before, "new_state": CLOSED,
                                  "reason": why}),
            ],
            m,
        )

    @rule(dt=time_steps, reason=manual_reasons)
    def reset_circuit(self, dt: int, reason: str | None) -> None:
        self.now += dt
        m = self.model
        before = m.state
        transition = self.step(Reset(reason))
        why = reason if reason is not None else "Manually reset"
        m.failure_count = 0
        expected: list[tuple[str, Mapping[str, Any]]] = [("circuit_reset", {"reason": why})]
        if before != CLOSED:
            m.change_state(CLOSED, self.now)
            expected.append(
                ("state_change", {"previous_state": before, "new_state": CLOSED,
                                  "reason": why})
            )
        expect_events(transition, expected, m)

    # -- expiry timers ---------------------------------------------------------------
    @precondition(lambda self: self.model.state == OPEN)
    @rule(late=st.integers(0, 50))
    def expire_due(self, late: int) -> None:
        m = self.model
        assert m.opened_at is not None and m.opening_length is not None
        deadline = transition_deadline(self.status)
        assert deadline == m.opened_at + self.status.expiry
        self.now = max(self.now, deadline) + late
        transition = self.step(Expire(m.opened_at))
        m.change_state(HALF_OPEN, self.now)
        expect_events(
            transition,
            [
                ("expiry", {"opened_at": m.opened_at, "expiry": ANY}),
                ("circuit_half_opened", {}),
                ("state_change", {"previous_state": OPEN, "new_state": HALF_OPEN,
                                  "reason": "Expiry reached"}),
            ],
            m,
        )
        expiry_data = transition.events[0][1]
        assert close_enough(m.settings, expiry_data["expiry"], m.opening_length)

    @rule(dt=time_steps, data=st.data())
    def expire_stale(self, dt: int, data: st.DataObject) -> None:
        self.now += dt
        m = self.model
        current = m.opened_at if m.state == OPEN else None
        pool = st.integers(T0 - 10**6, T0 + 10**13).filter(lambda t: t != current)
        earlier = [t for t in m.openings if t != current]
        if earlier:
            pool = st.sampled_from(earlier) | pool
        token = data.draw(pool, label="token")
        before = self.status
        transition = self.step(Expire(token))
        assert transition.events == ()
        assert transition.status == before

    # -- reconfiguration -------------------------------------------------------------
    @rule(dt=time_steps, settings=circuit_settings())
    def configure(self, dt: int, settings: Settings) -> None:
        self.now += dt
        m = self.model
        transition = self.step(Configure(settings))
        self.settings = settings
        m.settings = settings
        if m.state != OPEN:
            # docs/circuit-rules.md: status.expiry "shows the expiry of the current or last
            # opening";
            # the code shows the new setting when not open. Both are accepted here; the
            # strict reading is pinned by test_configure_when_not_open_keeps_last_opening.
            m.shown_expiry = m.shown_expiry | {settings.expiry}
        expect_events(transition, [], m)

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def matches_model(self) -> None:
        check_status(self.status, self.model, self.settings)

    @invariant()
    def basic_invariants(self) -> None:
        status = self.status
        assert status.available == (status.state != OPEN)
        assert status.failure_count >= 0
        if status.state == OPEN:
            assert status.opened_at is not None
            assert transition_deadline(status) == status.opened_at + status.expiry
        else:
            assert transition_deadline(status) is None
        reports = status.total_successes + status.total_failures
        if reports == 0:
            assert status.success_rate is None
        else:
            assert status.success_rate == pytest.approx(status.total_successes / reports)


def transition_deadline(status: ConnectionStatus) -> int | None:
    """``Transition.deadline`` of a status (the actor arms its timer with it)."""
    return Transition(status, ()).deadline


TestCircuitMachine = CircuitMachine.TestCase
TestCircuitMachine.settings = hsettings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- example tests: helpers ----------------------------------------------------------


def make(**options: Any) -> tuple[ConnectionStatus, Settings]:
    """A freshly registered circuit with the given explicit options."""
    settings = resolve(options)
    return initial_status("svc", None, "general", settings, None, T0), settings


def run(
    status: ConnectionStatus, settings: Settings, *ops: rules.Input, now: int = T0
) -> Transition:
    """Apply ``ops`` in order at ``now``; return the last transition."""
    transition = Transition(status, ())
    for op in ops:
        transition = apply(transition.status, settings, op, now)
    return transition


def kinds(transition: Transition) -> list[str]:
    return [str(kind) for kind, _ in transition.events]


def data_of(transition: Transition, kind: str) -> Mapping[str, Any]:
    (data,) = [d for k, d in transition.events if k == kind]
    return data


def opened(
    max_attempts: int = 3, **options: Any
) -> tuple[ConnectionStatus, Settings]:
    """A circuit opened by reaching the threshold at T0."""
    status, settings = make(max_attempts=max_attempts, **options)
    status = run(status, settings, *[Failure("boom")] * max_attempts).status
    assert status.state == OPEN
    return status, settings


def half_opened(**options: Any) -> tuple[ConnectionStatus, Settings]:
    """A circuit opened at T0 and expired."""
    status, settings = opened(**options)
    assert status.opened_at is not None
    status = apply(status, settings, Expire(status.opened_at), T0 + status.expiry).status
    assert status.state == HALF_OPEN
    return status, settings


PROGRESSIVE = {
    "expiry_strategy": "progressive",
    "initial_expiry": 100,
    "backoff_factor": 2.0,
    "max_expiry": 1000,
}


# -- section 4: expiry strategies ----------------------------------------------------


def test_progressive_example_from_the_contract() -> None:
    """Initial 100, factor 2.0, max 1000; two failures then open_circuit gives expiry 400."""
    status, settings = make(max_attempts=5, **PROGRESSIVE)
    transition = run(status, settings, Failure("a"), Failure("b"), Open())
    assert transition.status.state == OPEN
    assert transition.status.expiry == 400
    assert data_of(transition, "circuit_opened")["expiry"] == 400
    assert transition.deadline == T0 + 400


def test_progressive_is_capped_at_max_expiry() -> None:
    """An opening never lasts longer than max_expiry (100 * 2**4 = 1600 -> 1000)."""
    status, settings = make(max_attempts=10, **PROGRESSIVE)
    transition = run(status, settings, *[Failure("x")] * 4, Open())
    assert transition.status.expiry == 1000


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_progressive_length_per_failure_count(count: int) -> None:
    """opening_expiry is initial_expiry * backoff_factor ** failure_count below the cap."""
    _, settings = make(**PROGRESSIVE)
    assert opening_expiry(settings, count) == 100 * 2**count


@pytest.mark.parametrize("count", [10**4, 10**9, 10**400])
@pytest.mark.parametrize("factor", [2.0, 3, 1.5])
def test_huge_failure_count_is_capped_without_overflow(count: int, factor: float) -> None:
    """A huge failure_count yields max_expiry at once: no OverflowError, no hang."""
    _, settings = make(**{**PROGRESSIVE, "backoff_factor": factor})
    assert opening_expiry(settings, count) == 1000
    status = dataclasses.replace(make(**PROGRESSIVE)[0], failure_count=count)
    transition = apply(status, settings, Open(), T0)
    assert transition.status.expiry == 1000


@pytest.mark.parametrize("count", [0, 1, 10**9, 10**400], ids=["0", "1", "1e9", "1e400"])
def test_factor_one_never_grows(count: int) -> None:
    """With backoff_factor 1.0 every progressive opening lasts initial_expiry (100 * 1**n)."""
    _, settings = make(**{**PROGRESSIVE, "backoff_factor": 1.0})
    assert opening_expiry(settings, count) == 100


def test_fixed_strategy_ignores_failure_count() -> None:
    """fixed: every opening lasts expiry ms whatever the failure count."""
    status, settings = make(max_attempts=2, expiry=5_000)
    transition = run(status, settings, *[Failure("x")] * 7, Open())
    assert transition.status.expiry == 5_000
    assert opening_expiry(settings, 10**400) == 5_000


def test_repeated_half_open_failures_lengthen_the_opening() -> None:
    """progressive: each failure in half_open reopens with a longer expiry, up to the cap."""
    status, settings = make(max_attempts=2, **PROGRESSIVE)
    status = run(status, settings, Failure("a"), Failure("b")).status
    lengths = [status.expiry]
    now = T0
    for _ in range(3):
        assert status.opened_at is not None
        now = status.opened_at + status.expiry
        status = apply(status, settings, Expire(status.opened_at), now).status
        status = apply(status, settings, Failure("again"), now).status
        lengths.append(status.expiry)
    assert lengths == [400, 800, 1000, 1000]


def test_success_resets_the_progression() -> None:
    """progressive: a success sets failure_count to 0, so the next manual opening is short."""
    status, settings = make(max_attempts=10, **PROGRESSIVE)
    transition = run(status, settings, Failure("a"), Failure("b"), Success(), Open())
    assert transition.status.expiry == 100


def test_open_circuit_with_explicit_expiry_sets_status_expiry() -> None:
    """open_circuit(expiry=n) opens for n ms and status.expiry is n, whatever the strategy."""
    status, settings = make(**PROGRESSIVE)
    transition = run(status, settings, Open("ops", 12_345))
    assert transition.status.expiry == 12_345
    assert transition.deadline == T0 + 12_345
    assert data_of(transition, "circuit_opened")["expiry"] == 12_345


# -- section 3: circuit rules --------------------------------------------------------


def test_initial_status_is_closed_without_reports() -> None:
    """A new connection is closed, has no failures, no opening and no success rate."""
    settings = resolve({"max_attempts": 3})
    status = initial_status("svc", "eu", "http", settings, {"owner": "me"}, T0)
    assert status.state == CLOSED
    assert status.state is CircuitState.CLOSED
    assert (status.identifier, status.scope, status.type) == ("svc", "eu", "http")
    assert status.failure_count == 0
    assert status.opened_at is None
    assert status.registered_at == T0
    assert status.available
    assert status.success_rate is None
    assert dict(status.metadata) == {"owner": "me"}
    assert status.max_attempts == 3


def test_failures_below_threshold_only_count() -> None:
    """closed: a failure below max_attempts adds 1 and emits only failure."""
    status, settings = make(max_attempts=3)
    transition = run(status, settings, Failure("a"), Failure("b"))
    assert transition.status.state == CLOSED
    assert transition.status.failure_count == 2
    assert kinds(transition) == ["failure"]
    assert data_of(transition, "failure") == {
        "state": CLOSED, "failure_count": 2, "reason": "b",
    }


def test_failure_reaching_threshold_opens() -> None:
    """The failure that reaches max_attempts opens: failure, circuit_opened, state_change."""
    status, settings = make(max_attempts=3, expiry=1_000)
    status = run(status, settings, Failure("a"), Failure("b")).status
    transition = apply(status, settings, Failure("c"), T0 + 7)
    assert kinds(transition) == ["failure", "circuit_opened", "state_change"]
    assert transition.status.state == OPEN
    assert transition.status.opened_at == T0 + 7
    assert transition.deadline == T0 + 1_007
    failure = data_of(transition, "failure")
    assert failure["state"] == OPEN
    assert failure["reason"] == "c"
    assert data_of(transition, "circuit_opened") == {
        "state": OPEN, "failure_count": 3, "reason": "Threshold exceeded",
        "opened_at": T0 + 7, "expiry": 1_000,
    }
    change = data_of(transition, "state_change")
    assert change["previous_state"] == CLOSED
    assert change["new_state"] == OPEN
    assert change["reason"] == "Threshold exceeded"
    assert change["state"] == OPEN
    assert change["failure_count"] == 3


def test_max_attempts_one_opens_on_first_failure() -> None:
    """max_attempts=1: the first failure opens the circuit."""
    status, settings = make(max_attempts=1)
    assert run(status, settings, Failure("x")).status.state == OPEN


def test_success_resets_failure_count_when_closed() -> None:
    """closed: a success sets failure_count to 0 and emits only success."""
    status, settings = make(max_attempts=3)
    transition = run(status, settings, Failure("a"), Failure("b"), Success())
    assert transition.status.failure_count == 0
    assert transition.status.state == CLOSED
    assert kinds(transition) == ["success"]
    assert transition.status.last_success_time == T0


def test_failure_while_open_does_not_move_the_deadline() -> None:
    """open: a failure adds 1, emits failure, stays open, same opened_at and deadline."""
    status, settings = opened(max_attempts=2, **PROGRESSIVE)
    transition = apply(status, settings, Failure("still down"), T0 + 50)
    assert kinds(transition) == ["failure"]
    assert data_of(transition, "failure") == {
        "state": OPEN, "failure_count": 3, "reason": "still down",
    }
    new = transition.status
    assert new.state == OPEN
    assert new.failure_count == 3
    assert (new.opened_at, new.expiry) == (status.opened_at, status.expiry)
    assert transition.deadline == T0 + 400
    assert new.last_failure_time == T0 + 50


def test_success_while_open_stays_open() -> None:
    """open: a success emits success, stays open (same deadline) and resets failure_count."""
    status, settings = opened()
    transition = apply(status, settings, Success(), T0 + 5)
    assert kinds(transition) == ["success"]
    assert data_of(transition, "success") == {"state": OPEN, "failure_count": 0}
    assert transition.status.state == OPEN
    assert transition.status.failure_count == 0
    assert transition.deadline == status.opened_at + status.expiry  # type: ignore[operator]
    assert not transition.status.available


def test_expiry_moves_open_to_half_open() -> None:
    """Expire with the opening's token: expiry, circuit_half_opened, state_change."""
    status, settings = opened(expiry=2_000)
    transition = apply(status, settings, Expire(T0), T0 + 2_000)
    assert kinds(transition) == ["expiry", "circuit_half_opened", "state_change"]
    assert transition.status.state == HALF_OPEN
    assert transition.status.available
    assert transition.deadline is None
    assert data_of(transition, "expiry") == {
        "state": HALF_OPEN, "failure_count": 3, "opened_at": T0, "expiry": 2_000,
    }
    assert data_of(transition, "circuit_half_opened")["state"] == HALF_OPEN
    change = data_of(transition, "state_change")
    assert (change["previous_state"], change["new_state"], change["reason"]) == (
        OPEN, HALF_OPEN, "Expiry reached",
    )


@pytest.mark.parametrize("where", ["closed", "half_open", "open_other_token", "reopened"])
def test_stale_expire_is_ignored(where: str) -> None:
    """An Expire whose token is not the current opening's changes nothing, emits nothing."""
    if where == "closed":
        status, settings = opened()
        status = apply(status, settings, Close(), T0 + 1).status
        token = T0
    elif where == "half_open":
        status, settings = half_opened()
        token = T0
    elif where == "open_other_token":
        status, settings = opened()
        token = T0 - 1
    else:
        status, settings = opened()
        status = apply(status, settings, Open(), T0 + 10).status
        token = T0
    transition = apply(status, settings, Expire(token), T0 + 10**9)
    assert transition.events == ()
    assert transition.status == status


def test_half_open_success_closes() -> None:
    """half_open: the first success closes: success, circuit_closed, state_change."""
    status, settings = half_opened()
    transition = apply(status, settings, Success(), T0 + 10**6)
    assert kinds(transition) == ["success", "circuit_closed", "state_change"]
    assert transition.status.state == CLOSED
    assert transition.status.failure_count == 0
    for _, data in transition.events:
        assert data["state"] == CLOSED
        assert data["failure_count"] == 0
    change = data_of(transition, "state_change")
    assert (change["previous_state"], change["new_state"]) == (HALF_OPEN, CLOSED)
    assert "reason" in change


def test_half_open_failure_reopens_with_its_own_reason() -> None:
    """half_open: the first failure reopens with a fresh expiry and the failure's reason."""
    status, settings = half_opened(expiry=3_000)
    now = T0 + 3_000 + 17
    transition = apply(status, settings, Failure("HTTP 503"), now)
    assert kinds(transition) == ["failure", "circuit_opened", "state_change"]
    assert transition.status.state == OPEN
    assert transition.status.opened_at == now
    assert transition.deadline == now + 3_000
    assert data_of(transition, "failure")["state"] == OPEN
    assert data_of(transition, "circuit_opened")["reason"] == "HTTP 503"
    change = data_of(transition, "state_change")
    assert (change["previous_state"], change["new_state"], change["reason"]) == (
        HALF_OPEN, OPEN, "HTTP 503",
    )


def test_open_circuit_from_closed() -> None:
    """open_circuit on a closed circuit: circuit_opened, state_change, default reason."""
    status, settings = make(expiry=9_000)
    transition = apply(status, settings, Open(), T0 + 3)
    assert kinds(transition) == ["circuit_opened", "state_change"]
    assert data_of(transition, "circuit_opened") == {
        "state": OPEN, "failure_count": 0, "reason": "Manually opened",
        "opened_at": T0 + 3, "expiry": 9_000,
    }
    assert data_of(transition, "state_change")["reason"] == "Manually opened"
    assert transition.status.state_changed_at == T0 + 3


def test_open_circuit_uses_the_given_reason() -> None:
    """open_circuit(reason=...) puts that reason in circuit_opened and state_change."""
    status, settings = make()
    transition = apply(status, settings, Open("deploy"), T0)
    assert {d["reason"] for _, d in transition.events} == {"deploy"}


def test_open_circuit_on_open_restarts_the_opening() -> None:
    """open_circuit when open: only circuit_opened, new opened_at and deadline, no state_change."""
    status, settings = opened(expiry=1_000)
    transition = apply(status, settings, Open(None, 5_000), T0 + 600)
    assert kinds(transition) == ["circuit_opened"]
    assert transition.status.state == OPEN
    assert transition.status.opened_at == T0 + 600
    assert transition.status.expiry == 5_000
    assert transition.deadline == T0 + 5_600
    assert data_of(transition, "circuit_opened") == {
        "state": OPEN, "failure_count": 3, "reason": "Manually opened",
        "opened_at": T0 + 600, "expiry": 5_000,
    }
    # Not a state change: the time the circuit entered open is unchanged.
    assert transition.status.state_changed_at == status.state_changed_at


def test_open_circuit_from_half_open_changes_state() -> None:
    """open_circuit in half_open: circuit_opened then state_change half_open -> open."""
    status, settings = half_opened()
    transition = apply(status, settings, Open("again"), T0 + 10**7)
    assert kinds(transition) == ["circuit_opened", "state_change"]
    change = data_of(transition, "state_change")
    assert (change["previous_state"], change["new_state"], change["reason"]) == (
        HALF_OPEN, OPEN, "again",
    )


def test_close_circuit_on_closed_emits_nothing() -> None:
    """close_circuit on a closed circuit changes nothing and emits nothing."""
    status, settings = make(max_attempts=5)
    status = run(status, settings, Failure("a"), Failure("b")).status
    transition = apply(status, settings, Close("whatever"), T0 + 1)
    assert transition.events == ()
    assert transition.status == status


@pytest.mark.parametrize("start", ["open", "half_open"])
def test_close_circuit_keeps_failure_count(start: str) -> None:
    """close_circuit closes, keeps failure_count, emits circuit_closed and state_change."""
    status, settings = opened() if start == "open" else half_opened()
    transition = apply(status, settings, Close(), T0 + 10**7)
    assert transition.status.state == CLOSED
    assert transition.status.failure_count == 3
    assert kinds(transition) == ["circuit_closed", "state_change"]
    assert data_of(transition, "circuit_closed")["reason"] == "Manually closed"
    change = data_of(transition, "state_change")
    assert (change["previous_state"], change["new_state"], change["reason"]) == (
        start, CLOSED, "Manually closed",
    )
    for _, data in transition.events:
        assert (data["state"], data["failure_count"]) == (CLOSED, 3)
    assert transition.deadline is None


def test_failure_after_close_at_threshold_reopens() -> None:
    """closed with failure_count already >= max_attempts: the next failure opens at once."""
    status, settings = opened(max_attempts=3)
    status = apply(status, settings, Close("try"), T0 + 1).status
    transition = apply(status, settings, Failure("x"), T0 + 2)
    assert transition.status.state == OPEN
    assert transition.status.failure_count == 4
    assert data_of(transition, "circuit_opened")["reason"] == "Threshold exceeded"


def test_reset_on_closed_emits_circuit_reset_only() -> None:
    """reset_circuit on closed: failure_count 0 and exactly one circuit_reset event."""
    status, settings = make(max_attempts=5)
    status = run(status, settings, Failure("a"), Failure("b")).status
    transition = apply(status, settings, Reset(), T0 + 1)
    assert kinds(transition) == ["circuit_reset"]
    assert data_of(transition, "circuit_reset") == {
        "state": CLOSED, "failure_count": 0, "reason": "Manually reset",
    }
    assert transition.status.failure_count == 0


def test_reset_on_fresh_circuit_still_emits() -> None:
    """reset_circuit always emits circuit_reset, even when nothing changes."""
    status, settings = make()
    assert kinds(apply(status, settings, Reset("why not"), T0)) == ["circuit_reset"]


@pytest.mark.parametrize("start", ["open", "half_open"])
def test_reset_when_not_closed_changes_state(start: str) -> None:
    """reset_circuit when open/half_open: circuit_reset then state_change, closed, count 0."""
    status, settings = opened() if start == "open" else half_opened()
    transition = apply(status, settings, Reset("ops"), T0 + 10**7)
    assert kinds(transition) == ["circuit_reset", "state_change"]
    assert transition.status.state == CLOSED
    assert transition.status.failure_count == 0
    change = data_of(transition, "state_change")
    assert (change["previous_state"], change["new_state"], change["reason"]) == (
        start, CLOSED, "ops",
    )
    assert data_of(transition, "circuit_reset")["reason"] == "ops"


def test_totals_and_success_rate() -> None:
    """Totals count every report in every state; success_rate is successes / reports."""
    status, settings = make(max_attempts=2)
    ops: list[rules.Input] = [Success(), Failure("a"), Failure("b"), Failure("c"), Success()]
    status = run(status, settings, *ops).status
    assert (status.total_successes, status.total_failures) == (2, 3)
    assert status.success_rate == pytest.approx(0.4)


def test_success_and_failure_metadata_do_not_break_required_keys() -> None:
    """Report metadata never replaces the required state/failure_count/reason keys."""
    status, settings = make(max_attempts=3)
    failed = apply(status, settings, Failure("r", {"state": "x"}), T0)
    assert data_of(failed, "failure")["state"] == CLOSED
    assert data_of(failed, "failure")["reason"] == "r"
    succeeded = apply(failed.status, settings, Success({"failure_count": 9}), T0)
    assert data_of(succeeded, "success")["failure_count"] == 0


# -- Configure ------------------------------------------------------------------------


def test_configure_emits_nothing_and_updates_settings() -> None:
    """Configure changes the status's settings fields and emits no event."""
    status, settings = make(max_attempts=5)
    new = resolve({"max_attempts": 2, **PROGRESSIVE})
    transition = apply(status, settings, Configure(new), T0 + 1)
    assert transition.events == ()
    for key in SETTINGS_KEYS:
        if key != "expiry":
            assert getattr(transition.status, key) == getattr(new, key)


def test_configure_while_open_keeps_the_current_opening() -> None:
    """Configure while open keeps the current opening's expiry and deadline."""
    status, settings = opened(expiry=1_000)
    new = resolve({"max_attempts": 3, "expiry": 50_000})
    transition = apply(status, settings, Configure(new), T0 + 10)
    assert transition.status.state == OPEN
    assert transition.status.expiry == 1_000
    assert transition.deadline == T0 + 1_000
    # The new settings apply from the next opening on.
    reopened = apply(transition.status, new, Open(), T0 + 20)
    assert reopened.status.expiry == 50_000


def test_configure_lower_max_attempts_applies_to_next_failure() -> None:
    """After lowering max_attempts below failure_count, the next failure opens."""
    status, settings = make(max_attempts=10)
    status = run(status, settings, *[Failure("x")] * 4).status
    new = resolve({"max_attempts": 2})
    status = apply(status, settings, Configure(new), T0).status
    assert status.state == CLOSED
    assert apply(status, new, Failure("y"), T0).status.state == OPEN


@pytest.mark.parametrize("where", ["half_open", "closed_after_opening"])
def test_configure_when_not_open_keeps_last_opening(where: str) -> None:
    """status.expiry shows the expiry of the last opening, even after a Configure."""
    # docs/circuit-rules.md (expiry): "`status.expiry` shows the expiry of the current or last
    # opening."
    status, settings = half_opened(expiry=1_000)
    if where == "closed_after_opening":
        status = apply(status, settings, Close(), T0 + 2_000).status
    new = resolve({"expiry": 50_000})
    transition = apply(status, settings, Configure(new), T0 + 3_000)
    assert transition.status.expiry == 1_000


# -- section 5: registration and removal events --------------------------------------


def test_registration_events_carry_settings_and_metadata() -> None:
    """registration then connection_registered, each with state, count, settings, metadata."""
    settings = resolve({"max_attempts": 4, **PROGRESSIVE, "half_open_max_calls": 2})
    status = initial_status("svc", "eu", "database", settings, {"team": "pay"}, T0)
    events = registration_events(status, settings)
    assert [str(kind) for kind, _ in events] == ["registration", "connection_registered"]
    for _, data in events:
        assert data["state"] == CLOSED
        assert data["failure_count"] == 0
        assert data["type"] == "database"
        assert data["max_attempts"] == 4
        assert data["expiry"] == settings.expiry
        assert data["expiry_strategy"] == "progressive"
        assert data["expiry_strategy"] is ExpiryStrategy.PROGRESSIVE
        assert data["initial_expiry"] == 100
        assert data["max_expiry"] == 1000
        assert data["backoff_factor"] == 2.0
        assert data["half_open_max_calls"] == 2
        assert dict(data["metadata"]) == {"team": "pay"}


def test_registration_events_without_metadata() -> None:
    """Without metadata, registration events still carry a (empty) metadata key."""
    status, settings = make()
    for _, data in registration_events(status, settings):
        assert "metadata" in data
        assert not data["metadata"]
        assert set(SETTINGS_KEYS) <= set(data)


def test_unregister_events() -> None:
    """unregister: connection_unregistered, connection_removed(reason "unregistered")."""
    status, _ = opened()
    events = removal_events(status, inactive=False)
    assert [str(kind) for kind, _ in events] == ["connection_unregistered",
                                                "connection_removed"]
    for _, data in events:
        assert (data["state"], data["failure_count"]) == (OPEN, 3)
    assert events[1][1]["reason"] == "unregistered"


def test_cleanup_events() -> None:
    """cleanup sweep: cleanup and connection_removed, both with reason "inactive"."""
    status, _ = make()
    events = removal_events(status, inactive=True)
    assert [str(kind) for kind, _ in events] == ["cleanup", "connection_removed"]
    for _, data in events:
        assert (data["state"], data["failure_count"]) == (CLOSED, 0)
        assert data["reason"] == "inactive"


def test_event_types_compare_equal_to_their_names() -> None:
    """Emitted event types are EventType members equal to the documented strings."""
    status, settings = make(max_attempts=1)
    transition = apply(status, settings, Failure("x"), T0)
    assert [kind for kind, _ in transition.events] == [
        "failure", "circuit_opened", "state_change",
    ]
    assert all(isinstance(kind, EventType) for kind, _ in transition.events)


def test_apply_does_not_touch_its_input() -> None:
    """apply is pure: the input status is unchanged and equal inputs give equal outputs."""
    status, settings = opened()
    snapshot = dataclasses.replace(status)
    first = apply(status, settings, Failure("x"), T0 + 1)
    second = apply(status, settings, Failure("x"), T0 + 1)
    assert status == snapshot
    assert first == second
