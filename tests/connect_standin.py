"""A local stand-in for the 1Password Connect REST API: the vault and item reads the Python SDK makes."""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.serving import Serving
from tests.support import free_port

STAMP = "2023-11-26T10:00:00Z"
# Connect's filter syntax as the SDK sends it: title eq "X" (items), name eq "X" (vaults).
FILTER = re.compile(r'^(title|name) eq "(.*)"$')
MODES = ("ok", "503", "hang")


def new_id() -> str:
    """A Connect id: 26 lower-case letters and digits (the SDK's is_valid_uuid)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(26))


class ConnectStandIn:
    """Serves vaults and items to a caller with the right Bearer token; records every request.

    Fields are (section, label, value); section None is no section, "" an unlabelled one.
    mode: ok | 503 (every request) | hang (answers after release or 30 s). start() may come late and
    stop() then start() keep the port, so a client sees connection refused in between.
    """

    def __init__(self, token: str, port: int | None = None) -> None:
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.vaults: list[dict[str, Any]] = []
        self.items: dict[str, list[dict[str, Any]]] = {}
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._serving: Serving | None = None

    # ---- content -------------------------------------------------------------------------

    def add_vault(self, name: str) -> str:
        vault_id = new_id()
        self.vaults.append(
            {
                "id": vault_id,
                "name": name,
                "description": "",
                "attributeVersion": 1,
                "contentVersion": 1,
                "items": 0,
                "type": "USER_CREATED",
                "createdAt": STAMP,
                "updatedAt": STAMP,
            }
        )
        self.items[vault_id] = []
        return vault_id

    def add_item(
        self, vault_id: str, title: str, fields: list[tuple[str | None, str, str]], category: str = "LOGIN"
    ) -> dict[str, Any]:
        sections: dict[str, str] = {}
        out_fields: list[dict[str, Any]] = []
        for section, label, value in fields:
            entry: dict[str, Any] = {"id": new_id(), "type": "CONCEALED", "label": label, "value": value}
            if section is None and label in ("username", "password"):
                # A login's built-in fields: fixed ids and a purpose, no section (as Connect sends them).
                entry.update(id=label, type="STRING" if label == "username" else "CONCEALED")
                entry["purpose"] = label.upper()
            if section is not None:
                # "": the unlabelled section the 1Password app puts a new custom field in.
                sections.setdefault(section, new_id() if section else "add more")
                entry["section"] = {"id": sections[section]}
            out_fields.append(entry)
        item = {
            "id": new_id(),
            "title": title,
            "vault": {"id": vault_id},
            "category": category,
            "version": 1,
            "tags": [],
            "favorite": False,
            "trashed": False,
            "createdAt": STAMP,
            "updatedAt": STAMP,
            "lastEditedBy": "STANDIN",
            "sections": [
                {"id": sid, "label": label} if label else {"id": sid} for label, sid in sections.items()
            ],
            "fields": out_fields,
        }
        self.items[vault_id].append(item)
        for vault in self.vaults:
            if vault["id"] == vault_id:
                vault["items"] = len(self.items[vault_id])
        return item

    def paths(self) -> list[str]:
        return [r["path"] for r in list(self.requests)]

    # ---- server --------------------------------------------------------------------------

    def start(self) -> ConnectStandIn:
        self.release.clear()
        self._serving = Serving(self.port, self._handle, "ConnectStandIn")
        return self

    def stop(self) -> None:
        self.release.set()
        if self._serving is not None:
            self._serving.stop()
            self._serving = None

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        auth = req.headers.get("Authorization", "")
        authorized = auth == f"Bearer {self.token}"
        # The token itself is not recorded; whether it matched is.
        self.requests.append({"path": parts.path, "query": query, "authorized": authorized})
        if self.mode == "503":
            return self._send(req, 503, b"<html>Service Unavailable</html>", "text/html")
        if self.mode == "hang":
            self.release.wait(30)
        if not auth.startswith("Bearer "):
            return self._error(req, 401, "Invalid bearer token")
        if not authorized:
            return self._error(req, 401, "Invalid token signature")
        segments = [s for s in parts.path.split("/") if s]
        if segments[:2] != ["v1", "vaults"]:
            return self._error(req, 404, "Not found")
        wanted = None
        if "filter" in query:
            match = FILTER.match(query["filter"])
            if not match:
                return self._error(req, 400, "Invalid filter")
            wanted = match.groups()
        if len(segments) == 2:
            vaults = [v for v in self.vaults if wanted is None or wanted == ("name", v["name"])]
            return self._json(req, 200, vaults)
        vault = next((v for v in self.vaults if v["id"] == segments[2]), None)
        if vault is None:
            return self._error(req, 404, "Invalid Vault UUID or vault does not exist")
        if len(segments) == 3:
            return self._json(req, 200, vault)
        if segments[3] != "items":
            return self._error(req, 404, "Not found")
        items = self.items[vault["id"]]
        if len(segments) == 4:
            summaries = [
                {k: v for k, v in item.items() if k not in ("sections", "fields")}
                for item in items
                if wanted is None or wanted == ("title", item["title"])
            ]
            return self._json(req, 200, summaries)
        item = next((i for i in items if i["id"] == segments[4]), None)
        if item is None or len(segments) > 5:
            return self._error(req, 404, "item not found")
        return self._json(req, 200, item)

    def _error(self, req: BaseHTTPRequestHandler, status: int, message: str) -> None:
        self._json(req, status, {"status": status, "message": message})

    def _json(self, req: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        self._send(req, status, json.dumps(body).encode(), "application/json")

    def _send(self, req: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
