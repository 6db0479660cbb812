"""Two ASGI layers in front of the routes: the token gate, and the fast path that answers a
repeated cached /detect from memory.

Both are plain ASGI rather than FastAPI dependencies because they act before FastAPI reads
the request: the gate so that a request without the token is refused before its body is read
or judged, the fast path so that a repeat costs no routing, validation or hashing of the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import token_problem
from app.errors import error_response
from app.rendered import RenderedRecords

BODY_DIGEST = "leaf_body_digest"  # scope["state"] key: the fast path's digest of the body
OPEN_PATHS = frozenset({"/health"})


class TokenGate:
    """With LEAF_API_TOKEN set, a request for an API path without the token gets 401 before
    anything else happens. Paths no API route has (the static page and its files) and
    /health stay open."""

    def __init__(self, app: ASGIApp, *, token: str, protected: Iterable[str]):
        self.app = app
        self.token = token
        self.prefixes = tuple(sorted(set(protected) - OPEN_PATHS))

    def guards(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.guards(scope["path"]):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            problem = token_problem(self.token, None if header is None
                                    else header.decode("latin-1"))
            if problem is not None:
                response = error_response(401, problem, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_json(value: bytes | None) -> bool:
    return value is not None and value.split(b";")[0].strip().lower() == b"application/json"


class CachedDetect:
    """POST /detect with a body this process has answered from the analysis cache before:
    the same bytes again, straight from memory.

    The answer to a cached prompt is a pure function of the request body (given the
    process' settings and the models' files, which `RenderedRecords.by_body` re-checks), so
    the digest of the body is enough to find it. Anything else, including a body sent
    without Content-Length, goes on to the route, which remembers the digest it is given.
    """

    def __init__(self, app: ASGIApp, *, rendered: RenderedRecords, path: str = "/detect"):
        self.app = app
        self.rendered = rendered
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # The body limit in front has refused a declared length over it; a body without
        # one is counted as it streams, which only the route's own reading can answer.
        if b"content-length" not in headers or not _is_json(headers.get(b"content-type")):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        digest = hashlib.blake2b(body, digest_size=16).digest()
        known = self.rendered.by_body(digest)
        if known is not None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(known)).encode())]})
            await send({"type": "http.response.body", "body": known})
            return
        scope.setdefault("state", {})[BODY_DIGEST] = digest
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever comes next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
