"""A webhook receiver for the tests: a real threaded HTTP server on 127.0.0.1.

It records every request (headers and raw body) and answers each as the next entry of
`answers` says (then `default`): a status code, `Hold()` (keep the request open until the
test releases it), `Redirect(location)`, `Slow(seconds)` (answer after a while) or
`Drip(seconds)` (send the status line one byte at a time). `verify(request, secret)` checks
a request's signature with the Standard Webhooks reference library, as a receiver would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Hold:
    """Keep the request open: `arrived` is set when it comes, and the answer (200) goes
    once `release` is set."""

    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Redirect:
    location: str


@dataclass
class Slow:
    seconds: float


@dataclass
class Drip:
    seconds: float  # between bytes of the status line


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: list[Any] = []
        self.default: Any = 200
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._changed:
                    receiver.requests.append(Received(self.path, dict(self.headers), body))
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                    receiver._changed.notify_all()
                receiver._answer(self, answer)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, count: int, timeout: float = 30) -> list[Received]:
        """The first `count` requests, once they have come (AssertionError after `timeout`)."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"{len(self.requests)} requests came, not {count}")
            return self.requests[:count]

    def close(self) -> None:
        for answer in self.answers:
            if isinstance(answer, Hold):
                answer.release.set()
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, answer: Any) -> None:
        if isinstance(answer, Hold):
            answer.arrived.set()
            answer.release.wait(60)
            answer = 200
        if isinstance(answer, Slow):
            time.sleep(answer.seconds)
            answer = 200
        if isinstance(answer, Drip):
            try:
                for byte in b"HTTP/1.1 200 OK\r\n\r\n":
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(answer.seconds)
            except OSError:
                pass  # the sender gave up
            handler.close_connection = True
            return
        if isinstance(answer, Redirect):
            handler.send_response(302)
            handler.send_header("Location", answer.location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        text = b"ok" if 200 <= answer < 300 else b"receiver says no"
        handler.send_response(answer)
        handler.send_header("Content-Length", str(len(text)))
        handler.end_headers()
        handler.wfile.write(text)


def verify(request: Received, secret: str) -> Any:
    """The body, parsed, if `secret` signed the request (WebhookVerificationError if not)."""
    return standardwebhooks.Webhook(secret).verify(request.body, request.headers)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()
