"""ConfigApplier: stores the configuration changes people ask for, beside the event path.

The EventProcessor hands it every Command but fire_input. A change may wait on the database (a
lock another process holds) without holding up any alarm; once stored, Applied goes back to the
processor, which reloads its configuration and only then answers the caller, so "saved" means
stored and in force. This is the only thread that applies changes, one at a time.
"""

from __future__ import annotations

import json
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core import health
from app.core.channels import CONFIG, MQTT_PUBLISH, PROCESSOR, Applied, Command, MqttPublish, Reply
from app.core.settings import Settings
from app.engine import config_changes, meters
from app.engine.config_snapshot import meters_rule
from app.store import registry
from app.store.models import InputConfig, MeterConfig
from pylib import inproc, threads

log = logging.getLogger(__name__)


class ConfigApplier(threads.AppThread):
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        super().__init__("ConfigApplier")
        self._settings = settings
        self._sessions = session_factory
        self._pull = inproc.bind_pull(CONFIG)
        self._processor: inproc.Socket | None = None  # made by work(), in this thread
        self._mqtt: inproc.Socket | None = None

    def work(self) -> None:
        self._processor = inproc.connect_push(PROCESSOR)
        self._mqtt = inproc.connect_push(MQTT_PUBLISH)
        health.set_state("config_applier", "running")
        try:
            while not threads.shutting_down.is_set():
                try:
                    msg = inproc.recv(self._pull, timeout_ms=200)
                except inproc.MessageError as exc:
                    log.warning("dropping undecodable frame: %s", exc)
                    continue
                if isinstance(msg, Command):
                    self._apply(msg)
        finally:
            for sock in (self._pull, self._processor, self._mqtt):
                if sock is not None:
                    sock.close()

    def _apply(self, cmd: Command) -> None:
        try:
            with self._sessions() as session:
                if cmd.action == "meter_reset":
                    reply = self.meter_reset(session, cmd)
                else:
                    reply = config_changes.apply(session, cmd)
        except Exception:
            # One bad change must never stop the hub; it is logged, counted and answered.
            health.count("processor.errors")
            log.exception("failed to apply %r", cmd.action)
            reply = Reply(ok=False, error="the change could not be applied", status=500)
        fields = {
            "ok": reply.ok,
            "result": reply.result,
            "error": reply.error,
            "field": reply.field,
            "status": reply.status,
        }
        inproc.send(
            inproc.made(self._processor), Applied(reply_to=cmd.reply_to, reply=fields, reload=reply.ok)
        )

    def meter_reset(self, session: Session, cmd: Command) -> Reply:
        """Reset a meter's register: tell the device over MQTT and keep the local reading in step."""
        input_id = cmd.args.get("input_id")
        row = None
        if isinstance(input_id, int) and 0 <= input_id <= config_changes.MAX_ID:
            row = session.get(InputConfig, input_id)
        if row is None or not registry.is_meter(row.device_type):
            return Reply(ok=False, error=f"no meter with input id {input_id!r}", field="input_id", status=404)
        value, mode = cmd.args.get("value"), cmd.args.get("mode")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return Reply(ok=False, error="value must be a whole number", field="value", status=400)
        if mode not in (None, "set", "adjust"):
            return Reply(ok=False, error="mode must be 'set' or 'adjust'", field="mode", status=400)
        if not self._settings.mqtt_enabled:
            # The meter hears its reset only over MQTT: changing the stored register alone would lie.
            return Reply(ok=False, error="MQTT is off (MQTT_SERVER_ADDRESS is empty)", status=409)
        stored = session.scalars(select(MeterConfig).where(MeterConfig.input_device_id == row.id)).first()
        if stored is None:
            # a meter input without a meter_config row (e.g. from an original database) gets one
            stored = registry.new_meter_config()
            stored.input_device_id = row.id
            session.add(stored)
            log.info("created meter settings for %r", row.device_key)
        meter = meters_rule(stored)
        mode, amount, register = meters.reset(meter, stored.register_value, value, mode)
        stored.register_value = register
        stored.meter_reading = meters.reading_text(meters.normalise(register, meter), meter)
        reading = stored.meter_reading
        session.commit()
        topic = meter.iot_topic or self._settings.mqtt_meter_reset_topic
        key = "adjust_register" if mode == "adjust" else "set_register"
        inproc.send(
            inproc.made(self._mqtt), MqttPublish(topic=topic, payload=json.dumps({key: amount}).encode())
        )
        log.info("meter %r reset by %s: %s %d on %s", row.device_key, cmd.actor, key, amount, topic)
        result = {"input_id": row.id, "mode": mode, "value": amount, "topic": topic}
        result.update(register_value=register, meter_reading=reading)
        return Reply(ok=True, result=result)
