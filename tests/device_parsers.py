"""The control-message parsers of the real devices, rule for rule, to judge what the hub sends them.

Each mirrors the device code the generations spec pins (wire-format-generations.md §3.3, §4.3, §5.1;
wire-format.md §4): it returns what the device would do with one message (a relay pulse of N
seconds, a snapshot, or nothing) and raises DeviceDied where the device process would exit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

DEFAULT_PULSE = 1.0  # RELAY_DEFAULT_ACTIVE_TIME_SECONDS


class DeviceDied(Exception):
    """The device's process would exit (or its control thread end) on this message."""


@dataclass(frozen=True)
class Pulse:
    device_key: str
    seconds: float


@dataclass(frozen=True)
class Snap:
    device_key: str
    device_label: str
    address: str


def _unpack(body: bytes) -> Any:
    # pylib ZMQListener.callback: msgpack.unpackb(body) with its defaults; only FormatError and
    # StackError are caught (logged, message skipped); ValueError (trailing or truncated bytes,
    # non-string keys) escapes and stops the listener thread.
    try:
        return msgpack.unpackb(body)
    except (msgpack.FormatError, msgpack.StackError):
        return None
    except ValueError as exc:
        raise DeviceDied(f"listener: {exc!r}") from exc


def _sleep(seconds: Any) -> float:
    # time.sleep(float(duration)): ValueError for negative or NaN, OverflowError for infinity
    value = float(seconds)
    if math.isnan(value) or value < 0:
        raise DeviceDied(f"sleep({value!r}) raises ValueError")
    if math.isinf(value):
        raise DeviceDied(f"sleep({value!r}) raises OverflowError")
    return value


def remote_monitor_g1(routing_key: str, body: bytes, relays: set[str]) -> Pulse | None:
    """remote-monitor G1/G2 RelayControl.run (rm-G2 app/__main__.py L109-137)."""
    assert routing_key == "event.control.ioboard", routing_key
    payload = _unpack(body)
    if payload is None:
        return None
    try:
        device_key, duration = payload["data"]
        known = device_key in relays
    except (KeyError, TypeError, ValueError) as exc:
        raise DeviceDied(f"RelayControl.run: {exc!r}") from exc
    if not known:
        return None  # logged at debug, skipped
    try:
        seconds = _sleep(duration) if duration else DEFAULT_PULSE
    except (TypeError, ValueError) as exc:
        raise DeviceDied(f"relay thread: {exc!r}") from exc
    return Pulse(device_key, seconds)


def remote_monitor_g3(routing_key: str, body: bytes, relays: set[str]) -> Pulse | None:
    """remote-monitor G3 RelayControl.run (rm-G3 app/__main__.py L98-123) on {'ioboard': body}."""
    assert routing_key == "event.trigger.ioboard", routing_key
    payload = _unpack(body)
    if payload is None:
        return None
    if not isinstance(payload, dict) or "output_triggered" not in payload:
        raise DeviceDied("Malformed event payload: the control thread returns, the nanny stops the board")
    try:
        trigger = payload["output_triggered"]
        device_key = trigger["device_key"]
        params = trigger["device_params"]
    except (KeyError, TypeError) as exc:
        raise DeviceDied(f"RelayControl.run: {exc!r}") from exc
    try:
        duration: Any = float(params)
    except TypeError:
        duration = None  # a warning, then the default
    except ValueError as exc:
        raise DeviceDied(f"float({params!r}): {exc!r}") from exc
    try:
        known = device_key in relays
    except TypeError as exc:
        raise DeviceDied(f"unhashable key: {exc!r}") from exc
    if not known:
        return None  # log.error, Errors metric, next message
    return Pulse(device_key, _sleep(duration) if duration else DEFAULT_PULSE)


def camera_config(params: Any) -> str:
    """snapshot-processor CameraConfig.__init__ (sp-now app/__main__.py L113-136): the camera's address.

    AssertionError is raised (and the trigger dropped) where the device raises it; any other
    exception stops the process.
    """
    try:
        camera_auth, camera_url = params.split("@")
        if ":" not in camera_auth or ":" not in camera_url:
            raise AssertionError("Camera parameters missing")
        camera_url_parts = camera_url.split(",")
        if len(camera_url_parts) == 1:
            camera_url = camera_url_parts[0]
            rtsp_port = camera_url.split(":")[1]
        elif len(camera_url_parts) == 2:
            camera_url, rtsp_port = camera_url_parts
        _username, _password = camera_auth.split(":")
        _ip, _port = camera_url.split(":")
        del rtsp_port  # unbound for three or more parts: UnboundLocalError, as on the device
    except AssertionError:
        raise
    except Exception as exc:
        raise DeviceDied(f"CameraConfig: {exc!r}") from exc
    return camera_url


def snapshot_g1(routing_key: str, body: bytes, cameras: set[str]) -> Snap | None:
    """snapshot-processor before bde840c: `device_key, device_label, camera_config = payload['data']`."""
    assert routing_key == "event.control.snapshot", routing_key
    payload = _unpack(body)
    if payload is None:
        return None
    try:
        device_key, device_label, params = payload["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DeviceDied(f"Snapshot.process_message: {exc!r}") from exc
    if device_key not in cameras:
        return None
    try:
        return Snap(device_key, device_label, camera_config(params))
    except AssertionError:
        return None


def snapshot_now(routing_key: str, body: bytes, cameras: set[str]) -> Snap | None:
    """snapshot-processor HEAD Snapshot.process_message (sp-now app/__main__.py L232-259)."""
    assert routing_key == "event.trigger.snapshot", routing_key
    payload = _unpack(body)
    if payload is None:
        return None
    if not isinstance(payload, dict) or "output_triggered" not in payload:
        return None  # log.error, dropped; the relay loop goes on
    try:
        timestamp = payload["timestamp"]
        trigger = payload["output_triggered"]
        device_key = trigger["device_key"]
        device_label = trigger["device_label"]
        params = trigger["device_params"]
    except (KeyError, TypeError) as exc:
        raise DeviceDied(f"Snapshot.process_message: {exc!r}") from exc
    if not isinstance(timestamp, int | float | str) and timestamp is not None:
        raise DeviceDied(f"make_timestamp({timestamp!r})")
    if device_key not in cameras:
        return None
    try:
        return Snap(device_key, device_label, camera_config(params))
    except AssertionError:
        return None
