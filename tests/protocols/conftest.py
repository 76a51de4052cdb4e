"""Fixtures of the MCP and A2A gateway tests (ADR 0036): a colony of real ``opengrid`` processes
(``$OPENGRID_BIN``) whose nodes' ``assistant`` handler talks to a stub OpenAI-compatible model,
so that a turn streams chunks.

    OPENGRID_BIN=$CARGO_TARGET_DIR/release/opengrid PYTHONPATH=clients/python/src \
        /root/.cache/opengrid-venv/bin/python -m pytest -q tests/protocols
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from opengrid.testing import Colony


class _Model(BaseHTTPRequestHandler):
    """``POST /v1/chat/completions``: answers ``echo: <last user message> and a few more words``."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        n = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        last = (body.get("messages") or [{}])[-1].get("content", "")
        out = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": f"echo: {last} and a few more words"}}]}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    """``host:port`` of a stub chat-completions endpoint."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def colony(model: str) -> Iterator[Colony]:
    """An RC with the gateway on and three nodes (zero-loss sessions replicate to two others,
    so a kill -9 of a holder fails its sessions over with their state)."""
    with Colony(
        nodes=3,
        rc_extra=f'[gateway]\negress_hosts = ["{model}"]\n',
        env={"ASSISTANT_MODEL_URL": f"http://{model}/v1"},
    ) as c:
        yield c
