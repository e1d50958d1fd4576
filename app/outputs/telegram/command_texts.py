"""The bot's read-only answers: /help, /report's outcome, /status, /why and the schedules."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.core import health, zones
from app.core.channels import Reply
from app.core.settings import Settings
from app.engine import config_changes
from app.engine.config_changes import outputs_enabled, shown_value
from app.engine.presence import Presence, seen_online
from app.engine.scheduler import next_transition, zone_of
from app.ops import backup_status
from app.outputs.telegram.command_args import Target, matches, plural, terms_text
from app.store import history, roles
from app.store.models import Decision, InputConfig, OutputConfig

SessionFactory = Callable[[], Session]
BROKERS = ("rabbitmq_source", "control_publisher", "mqtt")
WHY_LIMIT = 5
HELP = (
    "<b>Commands</b>\n"
    "/inputon [names] – enable inputs (no names: the auto-scheduled ones)\n"
    "/inputoff [names] [30m] – disable inputs, optionally for a while\n"
    "/outputon &lt;names&gt; – enable outputs\n"
    "/outputoff &lt;names&gt; [2h] – disable outputs, optionally for a while\n"
    "/outputson, /outputsoff – the global outputs switch\n"
    "/report – fire the Dash Button\n"
    "/status – brokers, devices, switches\n"
    "/why &lt;input&gt; – its last decisions and configuration changes\n"
    "/schedule &lt;names&gt; [HH:MM HH:MM | off] – show, set (enable, disable time) or stop daily schedules\n"
    "/unlock – in a private chat: a one-time code that lets you log in to the dashboard past the delays"
)


def report_text(reply: Reply) -> str:
    if not reply.ok:
        return f"Dash Button not fired: {html.escape(reply.error or 'failed')}"
    result = reply.result or {}
    if not result.get("fired"):
        why = result.get("detail") or result.get("reason") or "blocked"
        return f"Dash Button did not fire: {html.escape(str(why))}"
    lines = ["Dash Button fired."]
    for out in result.get("outputs", []):
        label = html.escape(str(out.get("output_label") or out.get("output_key")))
        if out.get("fired"):
            lines.append(f"✅ {label}")
        else:
            why = out.get("detail") or out.get("reason") or "not fired"
            lines.append(f"❌ {label}: {html.escape(str(why))}")
    if len(lines) == 1:
        lines.append("No outputs are linked to it.")
    return "\n".join(lines)


def status_text(settings: Settings, sessions: SessionFactory, presence: Presence) -> str:
    """/status: the brokers, the devices online and enabled, the outputs switch, backups and the hubs."""
    lines = ["<b>Status</b>", "<b>Brokers</b>"]
    components = health.components()
    for name in BROKERS:
        comp = components.get(name)
        state = comp["state"] if comp else "not running"
        if name == "mqtt" and not settings.mqtt_enabled:
            state = "off (no MQTT_SERVER_ADDRESS)"
        detail = f" ({comp['detail']})" if comp and comp.get("detail") else ""
        lines.append(f"{html.escape(name)}: {html.escape(state + detail)}")
    now = time.time()
    with sessions() as session:
        inputs = list(session.scalars(select(InputConfig)))
        outputs = list(session.scalars(select(OutputConfig)))
        switch = outputs_enabled(session)
        devices: list[InputConfig | OutputConfig] = [*inputs, *outputs]
        offline = [
            row.device_label or row.device_key
            for row in devices
            if not seen_online(presence, settings, row, now)[1]
        ]
        inputs_on = sum(1 for row in inputs if row.device_enabled)
        outputs_on = sum(1 for row in outputs if row.device_enabled is not False)
    total = len(inputs) + len(outputs)
    lines.append(f"<b>Devices</b>: {total - len(offline)} online, {len(offline)} offline")
    if offline:
        lines.append("Offline: " + ", ".join(html.escape(label) for label in sorted(set(offline))))
    lines.append(f"Inputs enabled: {inputs_on} of {len(inputs)}")
    lines.append(f"Outputs enabled: {outputs_on} of {len(outputs)}")
    lines.append(f"Outputs switch: {'on' if switch else 'off (log only)'}")
    saved = backup_status.read_status(settings)
    line = f"Last backup: {backup_status.summary_text(saved)}"
    if saved.error:
        line += f" ({html.escape(saved.error[:200])})"  # an integrity report can run long
    lines.append(line)
    if saved.state != "not configured":
        lines.append(f"Restore drill: {backup_status.drill_text(saved)}")
    if settings.ha_enabled:  # a standby pair: both hubs, which is active and since when
        tz = zones.zone(settings.user_tz)
        fmt = lambda ts: datetime.fromtimestamp(ts, tz).strftime("%d %b %H:%M")  # noqa: E731
        lines.append("<b>Hubs</b>")
        lines += [html.escape(line) for line in roles.status_lines(sessions, settings, fmt)]
    return "\n".join(lines)


def why_text(settings: Settings, sessions: SessionFactory, terms: list[str]) -> str:
    """/why: the input's last decisions and configuration changes."""
    with sessions() as session:
        rows = list(session.scalars(select(InputConfig)))
        exact = [
            r
            for r in rows
            if " ".join(terms).casefold() in (r.device_key.casefold(), (r.device_label or "").casefold())
        ]
        found = exact or [
            r for r in rows if all(matches(t, r.device_key, r.device_label, r.group_name) for t in terms)
        ]
        if not found:
            return f"No input matches <i>{terms_text(terms)}</i>."
        if len(found) > 1:
            names = ", ".join(html.escape(r.device_label or r.device_key) for r in found[:10])
            return f"Which one? {names}"
        row = found[0]
        decisions = list(
            session.scalars(
                select(Decision)
                .where(Decision.input_device_id == row.id)
                .order_by(Decision.timestamp.desc(), Decision.id.desc())
                .limit(WHY_LIMIT)
                .options(selectinload(Decision.outputs))
            )
        )
        label = html.escape(row.device_label or row.device_key)
        tz = zones.zone(settings.user_tz)
        changes = changes_text(session, row.id, tz)
        if not decisions:
            return f"<b>{label}</b>: no decisions recorded.{changes}"
        lines = [f"<b>{label}</b>: last {plural(len(decisions), 'decision')}"]
        for d in decisions:
            when = d.timestamp.replace(tzinfo=UTC).astimezone(tz).strftime("%d %b %H:%M:%S")
            event = f" {html.escape(d.event_detail)}" if d.event_detail else ""
            if d.fired:
                verdict = "fired"
            else:
                verdict = "blocked: " + html.escape(", ".join(x for x in (d.reason, d.detail) if x) or "?")
            lines.append(f"\n<b>{when}</b>{event} – {verdict}")
            if d.fired and d.detail:
                lines.append(html.escape(d.detail))
            for out in d.outputs:
                name = html.escape(out.output_label or out.output_key)
                if out.fired:
                    lines.append(f"  ✅ {name}")
                else:
                    why = ", ".join(x for x in (out.reason, out.detail) if x) or "not fired"
                    lines.append(f"  ❌ {name}: {html.escape(why)}")
        return "\n".join(lines) + changes


def changes_text(session: Session, input_id: int, tz: tzinfo) -> str:
    """The input's last configuration changes: when, who, and each field before and after."""
    rows = history.recent_changes(session, history.INPUT_CHANGE_KINDS, input_id, WHY_LIMIT)
    if not rows:
        return ""
    lines = [f"\n\n<b>Last {plural(len(rows), 'change')}</b>"]
    for change in rows:
        when = change.timestamp.replace(tzinfo=UTC).astimezone(tz).strftime("%d %b %H:%M:%S")
        before, after = history.values(change.before), history.values(change.after)
        fields = "; ".join(
            f"{name} {shown_value(before.get(name))} → {shown_value(value)}"
            for name, value in sorted(after.items())
        )
        lines.append(f"<b>{when}</b> by {html.escape(change.actor)}: {html.escape(fields)}")
    return "\n".join(lines)


def schedule_text(settings: Settings, sessions: SessionFactory, targets: list[Target], heading: str) -> str:
    """Each target's stored schedule and next transition, read fresh after any change."""
    tz = zones.zone(settings.user_tz)
    now = datetime.now(tz)
    lines = [heading]
    with sessions() as session:
        for target in targets:
            row = (
                session.get(InputConfig, target.id)
                if target.kind == "input"
                else session.get(OutputConfig, target.id)
            )
            if row is None:
                continue
            name = f"• <b>{html.escape(target.label)}</b> ({target.kind})"
            enable, disable = row.auto_schedule_enable, row.auto_schedule_disable
            times = f"{html.escape(enable or '–')}–{html.escape(disable or '–')}"
            if row.auto_schedule_tz and row.auto_schedule_tz != settings.user_tz:
                # The original's rows keep UTC until converted on the schedule page.
                times += f" {html.escape(row.auto_schedule_tz)}"
            if not row.auto_schedule:
                stored = f" (stored {times})" if enable or disable else ""
                lines.append(f"{name}: no daily schedule{stored}")
                continue
            zone = zone_of(row.auto_schedule_tz, tz)
            upcoming = next_transition(enable, disable, zone, now) if zone is not None else None
            if upcoming is None:
                # An original database's "7:00" or "": the scheduler skips it until it is re-saved.
                lines.append(f"{name}: daily {times}, stored times invalid, not scheduled")
                continue
            when, enabled = upcoming
            edge = "enable" if enabled else "disable"
            lines.append(f"{name}: daily {times}, next: {edge} at {when.strftime('%a %d %b %H:%M %Z')}")
        if not config_changes.scheduler_enabled(session):
            lines.append("\nThe auto-scheduler is <b>off</b>: scheduled changes are skipped.")
    return "\n".join(lines)
