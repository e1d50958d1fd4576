"""Pure rule functions: (configuration, rule state, event, now) -> decision, with no I/O.

Input rules run in this order: stale message, input enabled, latch, multi-trigger, input links.
Output rules then run for each linked output: output enabled, minimum trigger interval, global
outputs switch. Quiet hours for informational inputs (info_notify) sit between the input rules
and the outputs: quiet_until() says whether an alert now falls inside them and when they end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dtime

from app.core import zones

# Reasons recorded in the audit trail, stable strings the API and dashboard show.
STALE = "stale"
DISABLED = "disabled"
LATCHED = "latched"
MULTI_TRIGGER = "multi_trigger"
INPUT_LINK = "input_link"
OUTPUT_DISABLED = "output_disabled"
OUTPUT_INTERVAL = "output_interval"
OUTPUTS_OFF = "outputs_off"
NO_ROUTE = "no_route"
QUIET_HOURS = "quiet_hours"
REFUSED = "refused"  # the receiving device would choke on the trigger (app/protocols/checks.py)

# Trigger times kept per input: enough for any multi-trigger rate (max 120) and link checks.
HISTORY_LENGTH = 120


@dataclass(frozen=True)
class Defaults:
    activation_interval: int = 60
    multi_trigger_rate: int = 2
    trigger_window: int = 10
    message_validity: int = 120


@dataclass(frozen=True)
class InputRule:
    """The configuration of one input that the rules need (a snapshot of its input_config row)."""

    id: int
    device_key: str
    label: str
    enabled: bool
    activation_interval: int | None = None
    multi_trigger: bool = False
    multi_trigger_rate: int | None = None
    multi_trigger_interval: int | None = None
    linked_input_ids: tuple[int, ...] = ()
    info_notify: bool = False
    device_type: str = ""


# output_config.pulse_seconds: -1 sends the input's activation_interval; NULL a null duration
# (remote-monitor's default 1 s, all the original ever sent); N >= 0 sends N seconds.
PULSE_INPUT_INTERVAL = -1


@dataclass(frozen=True)
class OutputRule:
    id: int
    device_key: str
    label: str
    device_type: str
    enabled: bool = True
    device_params: str | None = None
    trigger_topic: str | None = None
    trigger_interval: int | None = None
    generation: str | None = None  # what its device speaks (app/protocols); None: never heard
    pulse_seconds: int | None = PULSE_INPUT_INTERVAL


def pulse_duration(output: OutputRule, input_rule: InputRule) -> int | None:
    """The duration sent to a switch: the output's own pulse, the input's interval, or nil."""
    if output.pulse_seconds == PULSE_INPUT_INTERVAL:
        return input_rule.activation_interval
    return output.pulse_seconds


@dataclass
class InputState:
    """What the rules remember about one input between events."""

    triggers: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))
    last_fired: float | None = None
    last_fired_detail: str | None = None


@dataclass
class OutputState:
    last_fired: float | None = None


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: str | None = None
    detail: str | None = None


FIRE = Decision(True)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


def message_age(event_time: float | None, now: float) -> float:
    """Seconds since the sender stamped the message; a message without a timestamp is fresh."""
    return 0.0 if event_time is None else now - event_time


def check_stale(
    event_time: float | None, now: float, defaults: Defaults, clock_offset: float | None = None
) -> Decision:
    """Stale when older than the validity limit; clock_offset (seconds the sender's clock is behind
    the hub's, negative when ahead) corrects the sender's timestamp first."""
    corrected = event_time if event_time is None or clock_offset is None else event_time + clock_offset
    age = message_age(corrected, now)
    if age > defaults.message_validity:
        detail = f"message is {age:.0f} s old (limit {defaults.message_validity} s)"
        if clock_offset is not None and abs(clock_offset) >= 1:
            side = "behind" if clock_offset > 0 else "ahead"
            detail += f" after correcting the device clock, {abs(clock_offset):.0f} s {side}"
        return Decision(False, STALE, detail)
    return FIRE


def latch_interval(rule: InputRule, defaults: Defaults) -> int:
    return defaults.activation_interval if rule.activation_interval is None else rule.activation_interval


def evaluate_input(
    rule: InputRule,
    state: InputState,
    event_detail: str | None,
    now: float,
    defaults: Defaults,
    linked: dict[int, tuple[str, InputState | None]] | None = None,
) -> Decision:
    """Decide whether an input activation fires, after record_trigger() has counted it.

    linked maps each linked input id to (its label, its state) for the input-link rule.
    """
    if not rule.enabled:
        return Decision(False, DISABLED, "input is disabled")
    interval = latch_interval(rule, defaults)
    if (
        state.last_fired is not None
        and state.last_fired_detail == event_detail
        and now - state.last_fired < interval
    ):
        # A different event_detail (e.g. tamper during motion) is news, so it bypasses the latch.
        return Decision(False, LATCHED, f"latched until {_clock(state.last_fired + interval)}")
    if rule.multi_trigger:
        rate = rule.multi_trigger_rate or defaults.multi_trigger_rate
        window = rule.multi_trigger_interval or defaults.trigger_window
        seen = sum(1 for t in state.triggers if now - window < t <= now)
        if seen < rate:
            return Decision(False, MULTI_TRIGGER, f"{seen} of {rate} in the {window} s window")
    if rule.linked_input_ids:
        missing = []
        for input_id in rule.linked_input_ids:
            label, other = (linked or {}).get(input_id, (f"input {input_id}", None))
            recent = other is not None and any(now - interval <= t <= now for t in other.triggers)
            if not recent:
                missing.append(label)
        if missing:
            return Decision(False, INPUT_LINK, f"waiting for {', '.join(missing)} within {interval} s")
    return FIRE


def record_trigger(state: InputState, now: float) -> None:
    """Count an activation (fired or not): multi-trigger and input links look at these."""
    state.triggers.append(now)


def record_fired(state: InputState, event_detail: str | None, now: float) -> None:
    """Start the latch: only an input that fired is latched."""
    state.last_fired = now
    state.last_fired_detail = event_detail


def evaluate_output(rule: OutputRule, state: OutputState, now: float, outputs_enabled: bool) -> Decision:
    if not rule.enabled:
        return Decision(False, OUTPUT_DISABLED, "output is disabled")
    if rule.trigger_interval and state.last_fired is not None:
        next_at = state.last_fired + rule.trigger_interval
        if now < next_at:
            return Decision(
                False, OUTPUT_INTERVAL, f"fired {now - state.last_fired:.0f} s ago; next at {_clock(next_at)}"
            )
    if not outputs_enabled:
        return Decision(False, OUTPUTS_OFF, "all outputs are switched off")
    return FIRE


# ---- quiet hours ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    """Informational notifications are allowed from not_before to not_after (wall clock, USER_TZ).

    When not_after is earlier than not_before the allowed window crosses midnight; when both are
    equal there are no quiet hours. all_outputs holds back every output, not only notifications.
    """

    not_before: dtime = dtime(7, 0)
    not_after: dtime = dtime(21, 0)
    all_outputs: bool = False


def _local_instant(tz: tzinfo, day: date, at: dtime) -> datetime:
    """The instant the wall clock in tz shows `at` on `day`, resolving the daylight-saving edge cases."""
    # A time the clock shows twice opens at its daylight-saving reading (in most zones the first);
    # one the spring-forward jump skips opens at the first real instant after the jump.
    return zones.localize(datetime.combine(day, at), tz, dst=True)


def quiet_until(now: float, window: QuietHours, tz: tzinfo) -> float | None:
    """None when an informational notification may go out at `now`; else when quiet hours end (unix time)."""
    start, end = window.not_before, window.not_after
    if start == end:
        return None
    local = datetime.fromtimestamp(now, tz)
    wall = local.time().replace(tzinfo=None)
    if start < end:
        if start <= wall < end:
            return None
        day = local.date() if wall < start else local.date() + timedelta(days=1)
    else:  # allowed across midnight, e.g. 22:00 to 06:00: quiet from not_after to not_before
        if wall >= start or wall < end:
            return None
        day = local.date()
    return _local_instant(tz, day, start).timestamp()
