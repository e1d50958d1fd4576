"""A local Telegram Bot API stand-in (HTTP/1.1 keep-alive) that records calls and fails on demand."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.serving import Serving
from tests.support import free_port, wait_for

BOT_ID = 4242
BOT_USERNAME = "standin_bot"
FAIL_KINDS = ("429", "500", "400", "hang")


@dataclass
class Call:
    """One Bot API request as the stand-in saw it.

    params: the form fields as strings (PTB sends objects as JSON text; `json_param` decodes them).
    files: multipart uploads by field name -> {"filename", "content_type", "content"}.
    media: for sendMediaGroup, the `media` items with the uploaded bytes under "content".
    """

    method: str
    params: dict[str, str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: list[dict[str, Any]] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)

    def json_param(self, name: str) -> Any:
        raw = self.params.get(name)
        return None if raw is None else json.loads(raw)

    @property
    def text(self) -> str | None:
        """sendMessage/editMessageText text, or a photo caption."""
        return self.params.get("text", self.params.get("caption"))


class TelegramStandIn:
    """Serves /bot<token>/<method> on 127.0.0.1:<port>; PTB's base_url is `self.base_url`.

    Tests inject updates with push_update() (or message_update()/callback_update() helpers), read
    what the bot did with calls(), and make the next N calls of a method fail with fail_next().
    """

    def __init__(self, token: str, port: int | None = None) -> None:
        self.token = token
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/bot"
        self.base_file_url = f"http://127.0.0.1:{self.port}/file/bot"
        self._lock = threading.Condition()
        self._calls: list[Call] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._failures: dict[str, list[tuple[str, int]]] = {}
        self._release = threading.Event()
        self._stopped = False
        self._serving: Serving | None = None
        # getChat of a group: its title and primary invite link (None: the bot is not allowed to see one);
        # createChatInviteLink answers with invite_link_to_create, or "not enough rights" when None.
        self.chat_title = "Group"
        self.chat_invite_link: str | None = None
        self.invite_link_to_create: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> TelegramStandIn:
        self._stopped = False
        self._release.clear()
        # HTTP/1.1: keep-alive, like the real Bot API
        self._serving = Serving(
            self.port, self._handle, "TelegramStandIn", methods=("GET", "POST"), protocol="HTTP/1.1"
        )
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()  # wake long polls
        self._release.set()  # and hung requests
        if self._serving is not None:
            self._serving.stop()
            self._serving = None

    def __enter__(self) -> TelegramStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test API --------------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update (without update_id: one is assigned) for the next getUpdates; returns its id."""
        with self._lock:
            update = dict(update)
            update.setdefault("update_id", next(self._update_ids))
            self._updates.append(update)
            self._lock.notify_all()
            return update["update_id"]

    def message_update(
        self,
        text: str,
        user_id: int,
        chat_id: int | None = None,
        chat_type: str = "private",
        first_name: str = "Tester",
    ) -> int:
        """Queue a text message from a user (commands get their bot_command entity, as Telegram does)."""
        chat_id = user_id if chat_id is None else chat_id
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {
                "id": chat_id,
                "type": chat_type,
                **({"first_name": first_name} if chat_type == "private" else {"title": "Group"}),
            },
            "from": {"id": user_id, "is_bot": False, "first_name": first_name},
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self.push_update({"message": message})

    def callback_update(
        self,
        data: str,
        user_id: int,
        chat_id: int | None = None,
        message_id: int = 1,
        message_text: str = "",
        chat_type: str = "private",
    ) -> int:
        """Queue an inline-button press on a bot message (message_id: the message the button was on)."""
        chat_id = user_id if chat_id is None else chat_id
        return self.push_update(
            {
                "callback_query": {
                    "id": str(next(self._message_ids)),
                    "from": {"id": user_id, "is_bot": False, "first_name": "Tester"},
                    "chat_instance": str(chat_id),
                    "data": data,
                    "message": {
                        "message_id": message_id,
                        "date": int(time.time()),
                        "chat": {"id": chat_id, "type": chat_type},
                        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Bot", "username": BOT_USERNAME},
                        "text": message_text,
                    },
                }
            }
        )

    def fail_next(self, method: str, count: int = 1, kind: str = "429", retry_after: int = 2) -> None:
        """Answer the next `count` calls of `method` with kind: 429 (retry_after), 500, 400 or hang.

        A hang holds the request until release_hangs(), stop() or 30 s, then answers normally.
        """
        if kind not in FAIL_KINDS:
            raise ValueError(f"kind must be one of {FAIL_KINDS}")
        with self._lock:
            self._failures.setdefault(method, []).extend([(kind, retry_after)] * count)

    def release_hangs(self) -> None:
        self._release.set()

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_calls(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """Wait until at least `count` calls of `method` arrived; returns them all."""
        wait_for(lambda: len(self.calls(method)) >= count, timeout=timeout, what=f"{count} x {method}")
        return self.calls(method)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # ---- HTTP ------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        body = self._read_body(req)
        path = urlsplit(req.path).path
        prefix = f"/bot{self.token}/"
        if not path.startswith("/bot"):
            return self._send(req, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
        if not path.startswith(prefix):
            return self._send(req, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        method = path[len(prefix) :]
        params, files = self._parse(req, body)
        call = Call(method=method, params=params, files=files)
        if method == "sendMediaGroup":
            call.media = self._resolve_media(params, files)
        with self._lock:
            self._calls.append(call)
            pending = self._failures.get(method)
            failure = pending.pop(0) if pending else None
        if failure is not None:
            kind, retry_after = failure
            if kind == "429":
                return self._send(
                    req,
                    429,
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {retry_after}",
                        "parameters": {"retry_after": retry_after},
                    },
                )
            if kind == "500":
                return self._send(
                    req, 500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}
                )
            if kind == "400":
                return self._send(
                    req,
                    400,
                    {"ok": False, "error_code": 400, "description": "Bad Request: IMAGE_PROCESS_FAILED"},
                )
            self._release.wait(30)  # hang: the client's read timeout should fire first
        try:
            result = self._answer(method, params, call)
        except KeyError as exc:
            return self._send(
                req, 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {exc} missing"}
            )
        except PermissionError as exc:
            return self._send(
                req, 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {exc}"}
            )
        if result is None:
            return self._send(
                req, 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
            )
        return self._send(req, 200, {"ok": True, "result": result})

    def _read_body(self, req: BaseHTTPRequestHandler) -> bytes:
        if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(req.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    req.rfile.readline()
                    return b"".join(chunks)
                chunks.append(req.rfile.read(size))
                req.rfile.readline()
        length = int(req.headers.get("Content-Length") or 0)
        return req.rfile.read(length) if length else b""

    def _parse(
        self, req: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        params: dict[str, str] = dict(parse_qsl(urlsplit(req.path).query))
        files: dict[str, dict[str, Any]] = {}
        ctype = req.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            message = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                filename = part.get_filename()
                payload = part.get_payload(decode=True) or b""
                if filename is not None:
                    files[str(name)] = {
                        "filename": filename,
                        "content_type": part.get_content_type(),
                        "content": payload,
                    }
                else:
                    params[str(name)] = payload.decode("utf-8")
        elif ctype.startswith("application/json") and body:
            for key, value in json.loads(body).items():
                params[key] = value if isinstance(value, str) else json.dumps(value)
        elif body:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return params, files

    @staticmethod
    def _resolve_media(params: dict[str, str], files: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(params.get("media", "[]"))
        for item in items:
            ref = str(item.get("media", ""))
            if ref.startswith("attach://") and ref[len("attach://") :] in files:
                item["content"] = files[ref[len("attach://") :]]["content"]
        return items

    def _message(self, chat_id: str, **extra: Any) -> dict[str, Any]:
        with self._lock:
            message_id = next(self._message_ids)
        try:
            chat: int | str = int(chat_id)
        except ValueError:
            chat = chat_id
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat, "type": "private" if isinstance(chat, int) and chat > 0 else "supergroup"},
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Bot", "username": BOT_USERNAME},
            **extra,
        }

    def _photo(self) -> list[dict[str, Any]]:
        with self._lock:
            n = next(self._message_ids)
        return [{"file_id": f"photo{n}", "file_unique_id": f"u{n}", "width": 640, "height": 480}]

    def _answer(self, method: str, params: dict[str, str], call: Call) -> Any:
        if method == "getMe":
            return {
                "id": BOT_ID,
                "is_bot": True,
                "first_name": "Bot",
                "username": BOT_USERNAME,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            }
        if method in ("deleteWebhook", "answerCallbackQuery", "setMyCommands", "deleteMyCommands"):
            return True
        if method == "getMyCommands":
            return []
        if method == "getUpdates":
            return self._long_poll(params)
        if method == "sendMessage":
            return self._message(params["chat_id"], text=params["text"])
        if method == "sendPhoto":
            caption = {"caption": params["caption"]} if "caption" in params else {}
            return self._message(params["chat_id"], photo=self._photo(), **caption)
        if method == "sendMediaGroup":
            group = f"album{time.monotonic_ns()}"
            return [
                self._message(
                    params["chat_id"],
                    media_group_id=group,
                    photo=self._photo(),
                    **({"caption": item["caption"]} if item.get("caption") else {}),
                )
                for item in call.media
            ]
        if method == "editMessageText":
            if "inline_message_id" in params:
                return True
            message = self._message(params["chat_id"], text=params["text"])
            message["message_id"] = int(params["message_id"])
            return message
        if method == "getChat":
            chat_id = params["chat_id"]
            try:
                ident: int | str = int(chat_id)
            except ValueError:
                ident = chat_id
            kind = "private" if isinstance(ident, int) and ident > 0 else "supergroup"
            group: dict[str, Any] = {"title": self.chat_title}
            if self.chat_invite_link:
                group["invite_link"] = self.chat_invite_link
            return {
                "id": ident,
                "type": kind,
                # Bot API 7.3+ always sends these in a ChatFullInfo
                "accent_color_id": 0,
                "max_reaction_count": 11,
                **({"first_name": "Tester"} if kind == "private" else group),
            }
        if method == "createChatInviteLink":
            params["chat_id"]  # noqa: B018  (a missing chat_id is a 400, as Telegram answers)
            if self.invite_link_to_create is None:
                raise PermissionError("not enough rights to manage chat invite links")
            return {
                "invite_link": self.invite_link_to_create,
                "creator": {"id": 1, "is_bot": True, "first_name": "Hub"},
                "creates_join_request": False,
                "is_primary": False,
                "is_revoked": False,
            }
        return None

    def _long_poll(self, params: dict[str, str]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        with self._lock:
            while True:
                # Telegram forgets updates below the offset: the bot confirmed them.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                if self._updates or self._stopped:
                    return self._updates[:limit]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._lock.wait(remaining)

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout or shutdown): nothing to answer
