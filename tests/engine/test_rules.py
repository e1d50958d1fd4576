"""Unit tests of the pure rule functions with plain values and a fake clock."""

from __future__ import annotations

from app.engine import rules
from app.engine.rules import Defaults, InputRule, InputState, OutputRule, OutputState

D = Defaults(activation_interval=60, multi_trigger_rate=2, trigger_window=10, message_validity=120)
T0 = 1_700_000_000.0


def rule(**kw) -> InputRule:
    base = dict(id=1, device_key="Front Door Motion (Hallway)", label="Front Door Motion", enabled=True)
    base.update(kw)
    return InputRule(**base)


def activate(
    r: InputRule, state: InputState, now: float, detail: str | None = None, linked=None
) -> rules.Decision:
    """What the processor does per activation: count it, decide, start the latch if it fired."""
    rules.record_trigger(state, now)
    decision = rules.evaluate_input(r, state, detail, now, D, linked)
    if decision.fire:
        rules.record_fired(state, detail, now)
    return decision


def test_stale_message_dropped_and_fresh_or_untimed_passes() -> None:
    assert rules.check_stale(T0 - 121, T0, D).reason == rules.STALE
    assert "121 s old" in rules.check_stale(T0 - 121, T0, D).detail
    assert rules.check_stale(T0 - 120, T0, D).fire
    assert rules.check_stale(None, T0, D).fire
    assert rules.check_stale(T0 + 30, T0, D).fire  # a sender clock ahead of ours is not stale


def test_disabled_input_does_not_fire() -> None:
    d = activate(rule(enabled=False), InputState(), T0)
    assert (d.fire, d.reason) == (False, rules.DISABLED)


def test_latch_holds_for_default_interval_when_null() -> None:
    r, s = rule(activation_interval=None), InputState()
    assert activate(r, s, T0).fire
    held = activate(r, s, T0 + 59)
    assert held.reason == rules.LATCHED
    assert "latched until" in held.detail and "22:14:20" in held.detail  # T0 + 60 s
    assert activate(r, s, T0 + 60).fire


def test_latch_uses_activation_interval_and_zero_means_no_latch() -> None:
    r, s = rule(activation_interval=5), InputState()
    assert activate(r, s, T0).fire
    assert activate(r, s, T0 + 4).reason == rules.LATCHED
    assert activate(r, s, T0 + 5).fire
    r0, s0 = rule(activation_interval=0), InputState()
    assert all(activate(r0, s0, T0 + i * 0.01).fire for i in range(5))


def test_different_event_detail_bypasses_latch() -> None:
    r, s = rule(), InputState()
    assert activate(r, s, T0).fire
    assert activate(r, s, T0 + 1, "Tamper").fire
    assert activate(r, s, T0 + 2, "Tamper").reason == rules.LATCHED
    assert activate(r, s, T0 + 3).fire  # back to no detail: differs from the latched 'Tamper'


def test_multi_trigger_default_two_in_ten_seconds() -> None:
    r, s = rule(multi_trigger=True, activation_interval=0), InputState()
    first = activate(r, s, T0)
    assert (first.fire, first.reason, first.detail) == (
        False,
        rules.MULTI_TRIGGER,
        "1 of 2 in the 10 s window",
    )
    assert activate(r, s, T0 + 9).fire


def test_multi_trigger_window_expires() -> None:
    r, s = rule(multi_trigger=True, activation_interval=0), InputState()
    assert not activate(r, s, T0).fire
    assert not activate(r, s, T0 + 10).fire  # T0 is no longer within (now - 10, now]
    assert activate(r, s, T0 + 15).fire


def test_multi_trigger_custom_rate_fires_on_the_nth() -> None:
    r, s = (
        rule(multi_trigger=True, multi_trigger_rate=3, multi_trigger_interval=30, activation_interval=0),
        InputState(),
    )
    results = [activate(r, s, T0 + i * 10) for i in range(3)]
    assert [d.fire for d in results] == [False, False, True]
    assert results[1].detail == "2 of 3 in the 30 s window"


def test_multi_trigger_disabled_by_default() -> None:
    assert activate(rule(), InputState(), T0).fire


def test_input_link_needs_linked_input_triggered_within_interval() -> None:
    a = rule(id=1, linked_input_ids=(2,), activation_interval=30)
    sa, sb = InputState(), InputState()
    blocked = activate(a, sa, T0, linked={2: ("Back Door", sb)})
    assert (blocked.reason, blocked.detail) == (rules.INPUT_LINK, "waiting for Back Door within 30 s")
    rules.record_trigger(sb, T0 + 5)
    assert activate(a, sa, T0 + 10, linked={2: ("Back Door", sb)}).fire
    # the link partner's trigger is too old now
    a2, sa2 = rule(id=1, linked_input_ids=(2,), activation_interval=30), InputState()
    assert activate(a2, sa2, T0 + 40, linked={2: ("Back Door", sb)}).reason == rules.INPUT_LINK


def test_input_link_unknown_partner_blocks() -> None:
    d = activate(rule(linked_input_ids=(9,)), InputState(), T0, linked={})
    assert d.reason == rules.INPUT_LINK and "input 9" in d.detail


def test_blocked_input_does_not_start_latch() -> None:
    r, s = rule(linked_input_ids=(2,)), InputState()
    partner = InputState()
    assert not activate(r, s, T0, linked={2: ("B", partner)}).fire
    rules.record_trigger(partner, T0 + 1)
    assert activate(r, s, T0 + 2, linked={2: ("B", partner)}).fire


def output(**kw) -> OutputRule:
    base = dict(id=7, device_key="Hallway Buzzer", label="Hallway Buzzer", device_type="Buzzer")
    base.update(kw)
    return OutputRule(**base)


def test_output_rules_in_order() -> None:
    assert (
        rules.evaluate_output(output(enabled=False), OutputState(), T0, False).reason == rules.OUTPUT_DISABLED
    )
    st = OutputState(last_fired=T0 - 5)
    limited = rules.evaluate_output(output(trigger_interval=10), st, T0, True)
    assert limited.reason == rules.OUTPUT_INTERVAL and "fired 5 s ago" in limited.detail
    assert rules.evaluate_output(output(trigger_interval=10), OutputState(last_fired=T0 - 10), T0, True).fire
    assert rules.evaluate_output(output(), OutputState(), T0, False).reason == rules.OUTPUTS_OFF
    assert rules.evaluate_output(output(), OutputState(last_fired=T0), T0, True).fire  # no interval set


def test_pulse_duration_is_the_inputs_activation_interval_or_nil() -> None:
    # the control bodies built from it are checked per generation in test_protocols.py
    assert rules.pulse_duration(output(), rule(activation_interval=None)) is None
    assert rules.pulse_duration(output(), rule(activation_interval=3)) == 3
