"""What stands in front of every request: the token, the size of the body, and (without a token) the Host.

- With a token, every request but the page's own files (`/`, `/page/...`: code, no data) needs
  `Authorization: Bearer TOKEN`, else 401. The page keeps the token in a same-site cookie, which is taken for
  reads only (GET and HEAD: a `<video>` cannot send a header); anything that changes the queue needs the header,
  which another site's page cannot send. A live stream's playlist and segments also take `?token=TOKEN` (GET
  only): players (ffplay, VLC, hls.js) fetch them by URL alone.
- A body larger than the limit is refused with 413, by its Content-Length before it is read, or as soon as a body
  sent without one outgrows it.
- Without a token the service is for this machine: a request whose Host is not a loopback name is refused (400),
  so that another site cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import hmac
import json
import re
from urllib.parse import parse_qs

PUBLIC = ("/", "/favicon.ico")
LIVENESS = "/health"  # answered without the token, but then only "ok" (api.py)
PUBLIC_PREFIX = "/page/"
COOKIE = "skyreels_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
LIVE_PATH = re.compile(r"/v1/videos/video_[0-9a-f]{24}/live(\.m3u8|/w\d{6}\.ts)|/v1/realtime/video")


class BodyTooLarge(Exception):
    pass


class Guard:
    def __init__(self, app, *, token: str | None, max_body: int, loopback_only: bool) -> None:
        self.app, self.token, self.max_body, self.loopback_only = app, token, max_body, loopback_only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["type"] == "websocket":  # a browser's WebSocket sends no header of ours: the cookie or ?token=
            refused = self._refused({**scope, "method": "GET"}, headers)
            if refused is not None:
                return await send({"type": "websocket.close", "code": 1008, "reason": refused[1][:120]})
            return await self.app(scope, receive, send)
        refused = self._refused(scope, headers)
        if refused is not None:
            return await _answer(send, *refused)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _answer(send, 413, self._too_large(), None)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, self._too_large(), None)

    def _too_large(self) -> str:
        return f"the request is larger than this service takes ({self.max_body / 1e6:g} MB; --max-upload-mb)"

    def _refused(self, scope, headers: dict) -> tuple[int, str, str | None] | None:
        if self.loopback_only:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in LOOPBACK_HOSTS:
                return 400, f"Host {host!r} is not this machine: the service without a token answers only " \
                            "127.0.0.1 and localhost", "Host"
        if self.token is None:
            return None
        path = scope["path"]
        if path in PUBLIC or path.startswith(PUBLIC_PREFIX):
            return None
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer ") and hmac.compare_digest(given[7:].strip().encode(), self.token.encode()):
            scope["skyreels_authorized"] = True
            return None
        if scope["method"] in ("GET", "HEAD") and hmac.compare_digest(_cookie(headers).encode(), self.token.encode()):
            scope["skyreels_authorized"] = True
            return None
        if path == LIVENESS and scope["method"] in ("GET", "HEAD"):
            return None
        if scope["method"] in ("GET", "HEAD") and LIVE_PATH.fullmatch(path) and \
                hmac.compare_digest(_query_token(scope).encode(), self.token.encode()):
            return None  # a player fetching a live stream cannot send a header (service/live.py)
        return 401, "this service needs its token: send 'Authorization: Bearer TOKEN'", "Authorization"


def _query_token(scope) -> str:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
    return values[0] if len(values) == 1 else ""


def _cookie(headers: dict) -> str:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


async def _answer(send, status: int, message: str, param: str | None) -> None:
    kind = {401: "authentication_error", 413: "request_too_large"}.get(status, "invalid_request_error")
    body = json.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeadAsGet:
    """HEAD answered as GET would be, without the body: the same status and headers (a load balancer's or a
    downloader's probe). The response ends with its headers, so even a stream of events returns at once."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        ended = False

        async def headers_only(message) -> None:
            nonlocal ended
            if ended or message["type"] != "http.response.start":
                return
            ended = True
            await send(message)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, headers_only)
