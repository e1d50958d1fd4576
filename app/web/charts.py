"""The charts page: events per input per hour (24 h) and per day (7 days), and meter readings over time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.core import zones
from app.store import registry
from app.store.models import Decision, InputConfig, MeterHistory
from app.web import svg
from app.web.context import ctx

bp = Blueprint("charts", __name__)

HOURS = 24
DAYS = 7
METER_DAYS = 30
MAX_METER_ROWS = 5000
MAX_METER_POINTS = 300  # more points than a phone has pixels to spare only cost bytes
# Charts drawn on one page (each is a few KB of SVG): the busiest inputs of the week, or those a
# filter (?q=) picks; a house of 2,000 inputs must not make a page of 2,000 charts.
MAX_INPUT_CHARTS = 20
MAX_METER_CHARTS = 20


@dataclass
class Counts:
    label: str
    hourly: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(HOURS)])
    daily: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(DAYS)])


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # the database holds naive UTC


def event_counts(now: datetime, tz: tzinfo) -> tuple[dict[str, Counts], list[datetime], list[datetime]]:
    """Per input key: [fired, blocked] per hour of the last 24 hours and per local day of the last 7."""
    hour_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    hour_start = hour_end - timedelta(hours=HOURS)
    today = now.astimezone(tz).date()
    first_day = today - timedelta(days=DAYS - 1)
    day_start = zones.localize(datetime.combine(first_day, datetime.min.time()), tz).astimezone(UTC)
    since = min(hour_start, day_start).replace(tzinfo=None)
    counts: dict[str, Counts] = {}
    stmt = (
        select(Decision.input_key, Decision.input_label, Decision.timestamp, Decision.fired)
        .where(Decision.timestamp >= since)
        .order_by(Decision.timestamp)
    )
    with ctx().session_factory() as session:
        for key, label, stamp, fired in session.execute(stmt):
            when = _utc(stamp)
            if when > now:
                continue
            entry = counts.setdefault(key, Counts(label or key))
            entry.label = label or key  # rows come oldest first, so the newest label wins
            column = 0 if fired else 1
            hour = int((when - hour_start).total_seconds() // 3600)
            if 0 <= hour < HOURS:
                entry.hourly[hour][column] += 1
            day = (when.astimezone(tz).date() - first_day).days
            if 0 <= day < DAYS:
                entry.daily[day][column] += 1
    hours = [hour_start + timedelta(hours=i) for i in range(HOURS)]
    days = [datetime.combine(first_day + timedelta(days=i), datetime.min.time()) for i in range(DAYS)]
    return counts, hours, days


def _meter_charts(tz: tzinfo, now: datetime) -> list[Markup]:
    since = (now - timedelta(days=METER_DAYS)).replace(tzinfo=None)
    charts = []
    with ctx().session_factory() as session:
        meters = [
            row
            for row in session.scalars(
                select(InputConfig).join(InputConfig.meter).options(selectinload(InputConfig.meter))
            )
            if registry.is_meter(row.device_type)
        ]
        meters.sort(key=lambda r: (r.device_label or r.device_key).lower())
        for row in meters[:MAX_METER_CHARTS]:
            stmt = (
                select(MeterHistory.timestamp, MeterHistory.reading)
                .where(MeterHistory.input_device_id == row.id, MeterHistory.timestamp >= since)
                .where(MeterHistory.reading.is_not(None))
                .order_by(MeterHistory.timestamp.desc())
                .limit(MAX_METER_ROWS)
            )
            points = [(_utc(t).timestamp(), float(r)) for t, r in session.execute(stmt) if r is not None][
                ::-1
            ]
            if len(points) > MAX_METER_POINTS:
                step = -(-len(points) // MAX_METER_POINTS)
                points = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
            unit = row.meter.meter_reading_unit if row.meter else None
            label = row.device_label or row.device_key
            ticks = []
            if points:
                first, last = points[0][0], points[-1][0]
                fmt = "%H:%M" if last - first < 86400 else "%d %b"
                for i in range(5):
                    x = first + (last - first) * i / 4
                    ticks.append((x, datetime.fromtimestamp(x, UTC).astimezone(tz).strftime(fmt)))
                    if last == first:
                        break
            charts.append(svg.line_chart(f"{label}: readings", points, ticks, unit or "reading"))
    return charts


@bp.get("/charts")
def index() -> ResponseReturnValue:
    tz = zones.zone(ctx().settings.user_tz)
    now = datetime.now(UTC)
    counts, hours, days = event_counts(now, tz)
    hour_labels = [h.astimezone(tz).strftime("%H") for h in hours]
    day_labels = [d.strftime("%a %d") for d in days]
    query = request.args.get("q", "").strip()[:100]
    matching = [c for c in counts.values() if query.lower() in c.label.lower()]
    busiest = sorted(matching, key=lambda c: -sum(f + b for f, b in c.daily))[:MAX_INPUT_CHARTS]
    inputs = []
    for entry in sorted(busiest, key=lambda c: c.label.lower()):
        hourly = svg.bar_chart(
            f"{entry.label}: events per hour, last 24 hours",
            hour_labels,
            [f for f, _ in entry.hourly],
            [b for _, b in entry.hourly],
            f"hour ({ctx().settings.user_tz})",
            label_every=3,
        )
        daily = svg.bar_chart(
            f"{entry.label}: events per day, last 7 days",
            day_labels,
            [f for f, _ in entry.daily],
            [b for _, b in entry.daily],
            f"day ({ctx().settings.user_tz})",
        )
        inputs.append((entry.label, hourly, daily))
    return render_template(
        "charts.html",
        inputs=inputs,
        meters=_meter_charts(tz, now),
        query=query,
        hidden=len(matching) - len(busiest),
        max_charts=MAX_INPUT_CHARTS,
    )
