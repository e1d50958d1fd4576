"""The outputs page's view: an output's fields, its pulse choice, what it speaks, what its device refuses."""

from __future__ import annotations

from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from app import protocols
from app.core.settings import Settings
from app.engine import rules
from app.engine.config_snapshot import load_snapshot
from app.store.models import OutputConfig
from app.web import paging
from app.web.config_forms import (
    Errors,
    Values,
    display_value,
    form_number,
    load_page,
    paged_rows,
    render_rows,
    row_name,
)
from app.web.masking import mask_params

OUTPUT_TEXT = ("device_label", "device_params", "trigger_topic", "generation_override")
OUTPUT_NUMBERS = ("trigger_interval",)
OUTPUT_CHECKBOXES = ("device_enabled", "alert_offline")
# The pulse select: where a switch's trigger takes its duration from (output_config.pulse_seconds).
PULSE_CHOICES = ("input", "device", "fixed")


def _output_rows(session: Session, open_id: int | None) -> tuple[list[OutputConfig], paging.Page]:
    page = paged_rows(session, OutputConfig, open_id)
    return load_page(session, OutputConfig, page), page


def _output_values(row: OutputConfig) -> Values:
    values = {name: display_value(getattr(row, name)) for name in OUTPUT_TEXT + OUTPUT_NUMBERS}
    values["device_params"] = mask_params(row.device_params)
    values["device_enabled"] = row.device_enabled is not False  # outputs predate the flag: NULL means on
    values["alert_offline"] = row.alert_offline is True  # NULL: the default, off for outputs
    values["pulse"], values["pulse_seconds"] = _pulse_view(row.pulse_seconds)
    return values


def _pulse_view(stored: int | None) -> tuple[str, int | str]:
    if stored is None:
        return "device", ""
    if stored == rules.PULSE_INPUT_INTERVAL:
        return "input", ""
    return "fixed", stored


def pulse_field(form: MultiDict[str, str], errors: Errors) -> Values:
    """The pulse select and seconds as the pulse_seconds field; a bad choice is an error beside it."""
    if "pulse" not in form:
        return {}  # a form without the field (a script, an old page) leaves the stored pulse alone
    choice = form.get("pulse", "")
    if choice == "input":
        return {"pulse_seconds": rules.PULSE_INPUT_INTERVAL}
    if choice == "device":
        return {"pulse_seconds": None}
    if choice != "fixed":
        errors["pulse"] = "Choose where the pulse length comes from."
        return {}
    seconds = form_number(form.get("pulse_seconds", ""))
    if not isinstance(seconds, int) or not 0 <= seconds <= 86400:
        errors["pulse_seconds"] = "A fixed pulse needs whole seconds from 0 to 86400."
        return {}
    return {"pulse_seconds": seconds}


def _pulse_text(stored: int | None) -> str:
    if stored is None:
        return "pulse: device default"
    if stored == rules.PULSE_INPUT_INTERVAL:
        return "pulse: latch interval of the input"
    return f"pulse: {stored} s"


def render_outputs(
    session: Session,
    open_id: int | None,
    typed: Values | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> tuple[str, int]:
    rows, page = _output_rows(session, open_id)
    return render_rows(
        "config_outputs.html",
        rows,
        _output_values,
        open_id,
        typed,
        errors,
        status,
        page=page,
        generations=[("", "As detected")] + [(g, protocols.LABELS[g]) for g in protocols.GENERATIONS],
        speaks=_speaks,
    )


def _speaks(row: OutputConfig) -> str:
    """What the page says about the wire generation the output's device speaks, and why."""
    if row.generation_override:
        heard = f"; heard speaking {row.generation.upper()}" if row.generation else ""
        chosen = protocols.LABELS.get(row.generation_override, row.generation_override)
        return f"{chosen}, set by hand{heard}."
    if row.generation:
        device = f" from device {row.generation_device}" if row.generation_device else ""
        return f"{protocols.LABELS.get(row.generation, row.generation)}, detected{device}."
    return "Not heard yet: sent the G1/G2 control message until its device speaks, unless set here."


def output_problems(session: Session, output_id: int, settings: Settings) -> tuple[list[str], list[str]]:
    """(refusals, warnings) for an output as saved: what its device would reject, what holds its relays."""
    snap = load_snapshot(session)
    output = snap.outputs_by_id.get(output_id)
    if output is None:
        return [], []
    durations = [
        rules.pulse_duration(output, snap.inputs_by_id[input_id])
        for input_id, output_ids in snap.output_links.items()
        if output_id in output_ids and input_id in snap.inputs_by_id
    ]
    return protocols.setup_problems(
        output.generation,
        settings.handler_for(output.device_type),
        output.device_params,
        output.trigger_topic,
        durations,
    )


def output_summary(row: OutputConfig) -> str:
    parts = ["enabled" if row.device_enabled is not False else "disabled"]
    parts.append(
        f"minimum interval {row.trigger_interval} s" if row.trigger_interval else "no minimum interval"
    )
    parts.append(f"topic {row.trigger_topic}" if row.trigger_topic else "default topic")
    parts.append("parameters set" if row.device_params else "no parameters")
    parts.append(_pulse_text(row.pulse_seconds))
    return f"Saved {row_name(row)}: {', '.join(parts)}."
