"""Write-only secrets in device_params: camera passwords and phone numbers masked wherever they are shown."""

from __future__ import annotations

import re

from app.engine.config_changes import ChangeError

MASK = "••••••"
MASK_CHAR = "•"
_CAMERA = re.compile(r"(?P<user>[^:@,;\s]*):(?P<password>[^@]*)@(?P<rest>.+)", re.DOTALL)
_PHONE_ENTRY = re.compile(r"(?P<name>[^;,]*);(?P<number>\+?[0-9][0-9 ()\-]{3,})")


def _mask_digits(number: str) -> str:
    """Every digit but the last three becomes a bullet; '+', spaces and dashes stay for readability."""
    digits = sum(ch.isdigit() for ch in number)
    out = []
    for ch in number:
        if ch.isdigit():
            out.append(MASK_CHAR if digits > 3 else ch)
            digits -= 1
        else:
            out.append(ch)
    return "".join(out)


def _phone_entries(value: str) -> list[re.Match[str]] | None:
    entries = [_PHONE_ENTRY.fullmatch(part.strip()) for part in value.split(",")]
    if not entries or any(match is None for match in entries):
        return None
    return [match for match in entries if match is not None]


def mask_params(value: str | None) -> str:
    """device_params as shown on the page: camera password and phone numbers hidden, anything else fully."""
    if not value:
        return ""
    camera = _CAMERA.fullmatch(value)
    if camera:
        return f"{camera['user']}:{MASK}@{camera['rest']}"
    phones = _phone_entries(value)
    if phones:
        return ",".join(f"{m['name']};{_mask_digits(m['number'])}" for m in phones)
    return MASK


def unmask_params(submitted: str, stored: str | None) -> str | None:
    """The value to save for a submitted device_params, putting back what the mask hid.

    Returns None when nothing changed. Raises ChangeError when bullets would otherwise be saved.
    """
    submitted = submitted.strip()
    if submitted == mask_params(stored):
        return None
    if MASK_CHAR not in submitted:
        return submitted
    # Edited around the mask: keep the stored password (camera) or the stored entries (phone list).
    new_camera, old_camera = _CAMERA.fullmatch(submitted), _CAMERA.fullmatch(stored or "")
    if new_camera and old_camera and new_camera["password"] == MASK:
        # the password goes back; a bullet anywhere else would be saved as a bullet, so it is refused
        joined = f"{new_camera['user']}:{MASK}@{new_camera['rest']}"
        restored = f"{new_camera['user']}:{old_camera['password']}@{new_camera['rest']}"
        if MASK_CHAR not in joined.replace(MASK, "", 1):
            return restored
    else:
        old_phones = _phone_entries(stored or "") or []
        by_mask = {f"{m['name']};{_mask_digits(m['number'])}": m.group(0) for m in old_phones}
        parts = [by_mask.get(part.strip(), part.strip()) for part in submitted.split(",")]
        joined = ",".join(parts)
    if MASK_CHAR in joined:
        raise ChangeError("device_params", "Still holds hidden (•) characters; type the whole value again")
    return joined
