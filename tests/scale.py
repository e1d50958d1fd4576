"""A large house in a database, for the page tests at scale and the benchmark: 2,000 inputs, 200 outputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.models import Decision, DecisionOutput, InputConfig, InputLink, MeterConfig, OutputConfig, OutputLink

INPUTS = 2000
OUTPUTS = 200
DECISIONS = 3000


def input_key(i: int) -> str:
    return f"Sensor {i:04d} Motion (Room {i % 100:02d})"


def output_key(o: int) -> str:
    return f"Room {o:03d} Buzzer"


def build_house(
    session: Session, inputs: int = INPUTS, outputs: int = OUTPUTS, decisions: int = DECISIONS
) -> None:
    """Inputs (every 10th in a group, every 100th a meter), outputs, two output links and one input link
    per input, and a day of decisions; written in bulk, as a house that grew over years would hold."""
    now = datetime.now(UTC).replace(tzinfo=None)
    session.execute(
        insert(InputConfig),
        [
            {
                "device_key": input_key(i),
                "device_label": f"Sensor {i:04d}",
                "device_type": "meter" if i % 100 == 0 else "Motion",
                "device_enabled": i % 3 == 0,
                "group_name": f"Floor {i // 10 % 20}" if i % 10 == 0 else None,
                "origin": f"ioboard{i // 50}",
                "location": f"Room {i % 100:02d}",
                "created_at": now,
                "last_seen": now,
            }
            for i in range(inputs)
        ],
    )
    session.execute(
        insert(OutputConfig),
        [
            {
                "device_key": output_key(o),
                "device_label": f"Buzzer {o:03d}",
                "device_type": "Buzzer",
                "device_enabled": True,
                "origin": f"ioboard{o // 5}",
                "created_at": now,
                "last_seen": now,
            }
            for o in range(outputs)
        ],
    )
    input_ids = dict(session.execute(select(InputConfig.device_key, InputConfig.id)).all())
    output_ids = dict(session.execute(select(OutputConfig.device_key, OutputConfig.id)).all())
    ids = [input_ids[input_key(i)] for i in range(inputs)]
    outs = [output_ids[output_key(o)] for o in range(outputs)]
    session.execute(
        insert(OutputLink),
        [
            {"input_device_id": ids[i], "output_device_id": outs[(i + k) % outputs]}
            for i in range(inputs)
            for k in (0, 7)
        ],
    )
    session.execute(
        insert(InputLink),
        [{"input_device_id": ids[i], "linked_device_id": ids[(i + 1) % inputs]} for i in range(0, inputs, 4)],
    )
    session.execute(
        insert(MeterConfig),
        [{"input_device_id": ids[i], "meter_reading": "12.5 kWh"} for i in range(0, inputs, 100)],
    )
    session.execute(
        insert(Decision),
        [
            {
                "timestamp": now - timedelta(seconds=30 * d),
                "input_device_id": ids[d % inputs],
                "input_key": input_key(d % inputs),
                "input_label": f"Sensor {d % inputs:04d}",
                "origin": "ioboard",
                "fired": d % 2 == 0,
                "reason": None if d % 2 == 0 else "disabled",
            }
            for d in range(decisions)
        ],
    )
    decision_ids = list(session.scalars(select(Decision.id).where(Decision.fired.is_(True))))
    session.execute(
        insert(DecisionOutput),
        [
            {
                "decision_id": did,
                "output_device_id": outs[n % outputs],
                "output_key": output_key(n % outputs),
                "fired": True,
            }
            for n, did in enumerate(decision_ids)
        ],
    )
    session.commit()
