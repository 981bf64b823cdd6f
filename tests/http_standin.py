"""Local HTTP(S) stand-ins whose handler failures fail the test.

``http.server`` runs each handler in its own thread and, when the handler raises,
prints a traceback to stderr and carries on: an ``assert`` about a request made
inside a handler would never fail a test. A ``StandIn`` keeps each handler failure
and ``check()`` fails the test with it (the ``standins`` fixture calls it at
teardown; tests call it earlier to fail at the right line).
"""

from __future__ import annotations

import ssl
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.failures: list[str] = []

    def handle_error(self, request, client_address) -> None:  # called in the handler's thread, inside except
        self.failures.append(traceback.format_exc())


class StandIn:
    """A server on 127.0.0.1 (HTTPS when given a server-side TLS context) running ``handler``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> None:
        self._server = _RecordingServer(handler)
        if tls is not None:
            # The handshake runs in accept(): a client refusing the certificate never reaches the handler.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_port}"
        # A short poll: shutdown() waits up to one interval, at every test's teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def failures(self) -> list[str]:
        return self._server.failures

    def check(self) -> None:
        """Fail the test with the first exception a handler raised (an assert's message included)."""
        if self.failures:
            pytest.fail(f"the stand-in at {self.url} failed in its handler:\n{self.failures[0]}", pytrace=False)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
