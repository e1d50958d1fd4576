"""MdashDiscovery: polls mDash's device list for the ESP32 devices' MQTT topics and online state."""

from __future__ import annotations

import logging
import math
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, quote_plus

import requests

from app.core import health
from app.core.settings import Settings
from app.engine.presence import Presence
from app.engine.presence import presence as shared_presence
from pylib import threads
from pylib.decoding import json_object
from pylib.threads import AppThread, Backoff

log = logging.getLogger(__name__)
# Any here is the wire boundary: mDash's JSON answers, read with checks at every step.

COMPONENT = "mdash"
REQUEST_TIMEOUT = 10.0
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0  # never longer than the poll interval either
HINTS = {401: "check MDASH_API_KEY", 403: "check MDASH_API_KEY"}
# Loggers that may print a request URL, and with it the access_token query parameter:
# urllib3 logs every request line at DEBUG and retry details with the URL.
URL_LOGGER_PREFIXES = ("urllib3", "requests")


@dataclass(frozen=True)
class MdashDevice:
    """One device mDash lists with a wanted tag; topic and origin are None when its config names no topic."""

    id: str
    online: bool
    last_seen: float | None
    tags: frozenset[str]
    topic: str | None
    origin: str | None


class PollError(Exception):
    """One failed poll, with a reason that is safe to log (no key in it)."""


class _Redact(logging.Filter):
    """Rewrites any record that contains the secret, so it cannot reach a handler."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        forms = {secret, quote(secret, safe=""), quote_plus(secret)} if secret else set()
        self._forms = sorted(forms, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(form in message for form in self._forms):
            record.msg = self.redact(message)
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True


def tag_names(value: Any) -> set[str]:
    """Tag names from a dict (the keys set to something other than false), a list, or a CSV string.

    The original hub read a CSV string from shadow.tags.labels, so that form counts too.
    """
    names: set[str] = set()
    if isinstance(value, dict):
        for key, flag in value.items():
            if key == "labels" and isinstance(flag, str):
                names |= tag_names(flag)
            elif flag is not False and flag is not None:
                names.add(str(key))
    elif isinstance(value, str):
        names = {part for part in value.split(",")}
    elif isinstance(value, list | tuple):
        names = {str(item) for item in value if isinstance(item, str | int)}
    return {n.strip().lower() for n in names if n.strip()}


def lookup(config: Any, dotted: str) -> Any:
    """config['app']['mqtt_pub_topic'] for 'app.mqtt_pub_topic'; a flat 'app.mqtt_pub_topic' key works too."""
    if not isinstance(config, dict):
        return None
    if dotted in config:
        return config[dotted]
    head, sep, rest = dotted.partition(".")
    if not sep or head not in config:
        return None
    return lookup(config[head], rest)


def origin_of(topic: str) -> str:
    """The MQTT origin is a topic's first two levels: sensor/garage/esp32_7D8E9F -> sensor/garage."""
    return "/".join(topic.split("/")[:2])


def _topic(device: dict[str, Any], key: str) -> str | None:
    shadow = json_object(device.get("shadow"))
    reported = json_object(json_object(shadow.get("state")).get("reported"))
    for config in (reported.get("config"), device.get("config")):
        value = lookup(config, key)
        if isinstance(value, str):
            # the original got the value through an RPC as a JSON string and stripped its quotes
            topic = value.strip().strip('"').strip().strip("/")
            if topic and "+" not in topic and "#" not in topic:
                return topic
    return None


def _online(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "online")
    return value is True or (isinstance(value, int | float) and value == 1)


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from a number (seconds, or milliseconds when that large) or ISO-8601 text."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = datetime.fromisoformat(text).timestamp()
            except ValueError:
                return None
    else:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds / 1000 if seconds > 1e11 else seconds


def parse_devices(data: Any, wanted: Iterable[str], config_key: str) -> list[MdashDevice]:
    """The devices in an mDash device list that carry one of the wanted tags."""
    if not isinstance(data, list):
        raise PollError(f"expected a JSON list of devices, got {type(data).__name__}")
    wanted_tags = {t.strip().lower() for t in wanted}
    devices = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            continue
        shadow = json_object(item.get("shadow"))
        tags = tag_names(item.get("tags")) | tag_names(shadow.get("tags"))
        if not tags & wanted_tags:
            continue
        topic = _topic(item, config_key)
        devices.append(
            MdashDevice(
                id=item["id"],
                online=_online(item.get("online")),
                last_seen=_epoch(item.get("last_seen")),
                tags=frozenset(tags),
                topic=topic,
                origin=origin_of(topic) if topic else None,
            )
        )
    return devices


class MdashDiscovery(AppThread):
    """Thread that polls mDash, keeps the topic -> device map and reports each origin's online state."""

    def __init__(
        self,
        settings: Settings,
        presence: Presence = shared_presence,
        session: requests.Session | None = None,
        *,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        super().__init__("MdashDiscovery")
        self.settings = settings
        self.presence = presence
        self.timeout = timeout
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._redact = _Redact(settings.mdash_api_key)
        # installed before anything can make a request, removed when the thread ends
        self._filtered = self._install_redaction()
        self._lock = threading.Lock()
        self._devices: dict[str, MdashDevice] = {}
        self._topics: dict[str, str] = {}
        self._unreachable: str | None = None
        self._warned_no_topic: set[str] = set()
        self.polled = threading.Event()  # set after the first successful poll

    def topics(self) -> dict[str, str]:
        """MQTT publish topic -> mDash device id, from the last successful poll."""
        with self._lock:
            return dict(self._topics)

    def devices(self) -> dict[str, MdashDevice]:
        """Device id -> MdashDevice for the tagged devices of the last successful poll."""
        with self._lock:
            return dict(self._devices)

    def work(self) -> None:
        log.info(
            "MdashDiscovery polling %s every %d s for devices tagged %s",
            self.settings.mdash_api_base_url,
            self.settings.mdash_poll_seconds,
            ",".join(self.settings.mdash_device_tags),
        )
        backoff = Backoff(initial=RETRY_INITIAL, maximum=min(RETRY_MAX, self.settings.mdash_poll_seconds))
        try:
            while not threads.shutting_down.is_set():
                if self.poll():
                    backoff.reset()
                    stopping = threads.sleep(float(self.settings.mdash_poll_seconds))
                else:
                    stopping = backoff.pause()
                if stopping:
                    break
        finally:
            if self._own_session:
                self._session.close()
            for logger in self._filtered:
                logger.removeFilter(self._redact)
            health.set_state(COMPONENT, "down", "stopped")

    def _install_redaction(self) -> list[logging.Logger]:
        loggers = [log]
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and name.startswith(URL_LOGGER_PREFIXES):
                loggers.append(logger)
        for logger in loggers:
            logger.addFilter(self._redact)
        return loggers

    def poll(self) -> bool:
        """Fetch the device list once; True when it worked. Never raises."""
        health.count("mdash.polls")
        try:
            found = parse_devices(
                self._fetch(),
                self.settings.mdash_device_tags,
                self.settings.mdash_app_config_mqtt_pub_topic,
            )
        except PollError as exc:
            self._failed(self._redact.redact(str(exc)))
            return False
        except Exception as exc:  # a bug or a shape nobody expected: report it, keep polling
            log.error(
                "mDash poll failed unexpectedly:\n%s",
                self._redact.redact("".join(traceback.format_exception(exc))),
            )
            self._failed(self._redact.redact(f"{type(exc).__name__}: {exc}"))
            return False
        self._apply(found)
        return True

    def _fetch(self) -> Any:
        key = self.settings.mdash_api_key
        try:
            resp = self._session.get(
                self.settings.mdash_api_base_url,
                params={"access_token": key},
                headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,  # a redirect would carry the key in its query to wherever it points
            )
        except requests.Timeout:
            raise PollError(f"no answer within {self.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise PollError(f"cannot connect: {_cause(exc)}") from None
        except requests.RequestException as exc:
            raise PollError(f"request failed: {type(exc).__name__}") from None
        with resp:
            if resp.status_code != 200:
                hint = HINTS.get(resp.status_code)
                reason = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
                raise PollError(f"{reason} ({hint})" if hint else reason)
            try:
                return resp.json()
            except ValueError as exc:
                raise PollError(f"bad JSON: {exc}") from None

    def _apply(self, found: list[MdashDevice]) -> None:
        devices = {d.id: d for d in found}
        topics: dict[str, str] = {}
        by_origin: dict[str, list[MdashDevice]] = {}
        for device in found:
            if device.topic is None or device.origin is None:
                if device.id not in self._warned_no_topic:
                    log.warning(
                        "mDash device %s is tagged %s but its config has no %s",
                        device.id,
                        ",".join(sorted(device.tags)),
                        self.settings.mdash_app_config_mqtt_pub_topic,
                    )
                    self._warned_no_topic.add(device.id)
                continue
            topics.setdefault(device.topic, device.id)
            by_origin.setdefault(device.origin, []).append(device)
        with self._lock:
            changed = topics != self._topics
            self._devices = devices
            self._topics = topics
        # several devices may publish under one origin (sensor/garage/<id>): online if any is
        for origin, members in by_origin.items():
            seen = [d.last_seen for d in members if d.last_seen is not None]
            self.presence.report(origin, any(d.online for d in members), max(seen) if seen else None)
        if self._unreachable is not None:
            log.info("mDash reachable again")
            self._unreachable = None
        if changed or not self.polled.is_set():
            log.info("mDash: %d tagged devices; topics %s", len(devices), topics)
        health.set_state(COMPONENT, "ok", f"{len(devices)} devices, {len(topics)} topics")
        self.polled.set()

    def _failed(self, reason: str) -> None:
        health.count("mdash.errors")
        if self._unreachable != reason:
            log.warning("mDash poll failed: %s; retrying", reason)
        else:
            log.debug("mDash poll failed again: %s", reason)
        self._unreachable = reason
        health.set_state(COMPONENT, "unreachable", reason)


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests ConnectionError, without the URL requests wraps it in."""
    inner: BaseException = exc
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None and inner.args and isinstance(inner.args[0], BaseException):
            nxt = inner.args[0]
        if nxt is None or nxt is inner:
            break
        inner = nxt
    for reason in (getattr(inner, "reason", None), inner):
        text = str(reason) if reason is not None else ""
        if text:
            return text.split(">: ", 1)[-1][:200]
    return type(inner).__name__
