"""Fixtures: real colonies (``opengrid.testing.Colony`` over ``$OPENGRID_BIN``), a stub
OpenAI-compatible model server for the streaming ``assistant`` handler, and an httpx transport
that records every response the client receives (checked against the OpenAPI document at the
end of the run) and can cut a connection on purpose."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import httpx
import pytest

import opengrid
from opengrid.testing import Colony, EchoModel

if not os.environ.get("OPENGRID_BIN"):
    pytest.exit("set OPENGRID_BIN to an opengrid binary", returncode=2)


# -- recording and fault injection ------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    url: str
    status: int
    content_type: str
    #: The decoded JSON body, or for an event stream the list of ``(event, data)``.
    body: Any
    #: The request's JSON body, if it had one.
    request_body: Any = None


@dataclass
class Faults:
    """Cuts to inject: each rule is ``(predicate(request), what)``; ``what`` is ``"drop_reply"``
    (forward the request, then fail reading the answer: the server did the work, the client did
    not hear it) or ``("cut_stream", n)`` (an event stream cut after ``n`` events). A rule fires
    once."""

    rules: list = field(default_factory=list)
    fired: list = field(default_factory=list)

    def take(self, request: httpx.Request) -> Optional[Any]:
        for i, (pred, what) in enumerate(self.rules):
            if pred(request):
                del self.rules[i]
                self.fired.append((request.method, str(request.url), what))
                return what
        return None


class _CutStream(httpx.SyncByteStream):
    """Passes an event stream through, recording its events; cut after ``cut`` events if set."""

    def __init__(self, inner: httpx.SyncByteStream, on_close: Callable[[bytes], None], cut: Optional[int]):
        self.inner = inner
        self.on_close = on_close
        self.cut = cut
        self.seen = b""

    def __iter__(self):
        for part in self.inner:
            already = len(self.seen)
            self.seen += part
            if self.cut is not None and self.seen.count(b"\n\n") >= self.cut:
                # Deliver exactly `cut` whole events, then the connection "breaks".
                kept = b"\n\n".join(self.seen.split(b"\n\n")[: self.cut]) + b"\n\n"
                self.seen = kept
                yield kept[already:]
                raise httpx.ReadError("injected: stream cut")
            yield part

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.on_close(self.seen)


def parse_sse(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in raw.decode("utf-8", "replace").split("\n\n"):
        event, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            text = "\n".join(data)
            try:
                out.append((event, json.loads(text)))
            except ValueError:
                out.append((event, text))
    return out


class RecordingTransport(httpx.BaseTransport):
    """Records every response; injects the faults of :class:`Faults`."""

    def __init__(self, log: list[Recorded], faults: Faults):
        self.inner = httpx.HTTPTransport()
        self.log = log
        self.faults = faults

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.faults.take(request)
        sent: Any = None
        if "json" in request.headers.get("content-type", ""):
            try:
                sent = json.loads(request.read())
            except ValueError:
                sent = None
        resp = self.inner.handle_request(request)
        ctype = resp.headers.get("content-type", "")
        if "text/event-stream" in ctype:
            rec = Recorded(request.method, str(request.url), resp.status_code, ctype, [], sent)
            self.log.append(rec)

            def done(raw: bytes, rec: Recorded = rec) -> None:
                rec.body = parse_sse(raw)

            cut = fault[1] if isinstance(fault, tuple) and fault[0] == "cut_stream" else None
            return httpx.Response(
                resp.status_code, headers=resp.headers, stream=_CutStream(resp.stream, done, cut),
                request=request, extensions=resp.extensions,
            )
        content = resp.read()
        resp.close()
        try:
            body: Any = json.loads(content) if content else None
        except ValueError:
            body = content.decode("utf-8", "replace")
        self.log.append(Recorded(request.method, str(request.url), resp.status_code, ctype, body, sent))
        if fault == "drop_reply":
            raise httpx.ReadError("injected: the answer was lost on the way back")
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        return httpx.Response(resp.status_code, headers=headers, content=content, request=request)

    def close(self) -> None:
        self.inner.close()


RECORDED: list[Recorded] = []
#: What clients of an RC group received (checked against the document by its own test: a
#: follower's answers are not all listed there yet).
GROUP_RECORDED: list[Recorded] = []


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def make_client(faults: Faults):
    """``make_client(colony, **kw)``: an :class:`opengrid.Client` of the colony whose responses
    are recorded (and ``faults`` injected)."""
    made: list[opengrid.Client] = []

    def make(c: Colony, token: Optional[str] = None, *, rc: Any = None, **kw: Any) -> opengrid.Client:
        """``rc``: the RC URL(s) the client is given (``c.rc_url`` by default)."""
        log = GROUP_RECORDED if len(c.rc_names) > 1 else RECORDED
        http = httpx.Client(transport=RecordingTransport(log, faults), follow_redirects=False,
                            timeout=kw.get("timeout", 10.0))
        cl = opengrid.Client(c.rc_url if rc is None else rc, token, http=http, **kw)
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.http.close()


# -- a model endpoint for the streaming `assistant` -------------------------------------------

ModelServer = EchoModel


@pytest.fixture(scope="session")
def model() -> EchoModel:
    m = EchoModel()
    yield m
    m.close()


@pytest.fixture(scope="session")
def colony(model: ModelServer) -> Colony:
    """A shared colony of two nodes (their ``assistant`` asks ``model``) for tests that neither
    kill nor restart nodes."""
    with Colony(nodes=2, env={"ASSISTANT_MODEL_URL": f"http://{model.host}/v1"}) as c:
        yield c


@pytest.fixture
def colony3(model: ModelServer) -> Colony:
    """A colony of its own with three nodes, for tests that kill one (a zero-loss session keeps a
    copy on another node, so two must remain)."""
    with Colony(nodes=3, env={"ASSISTANT_MODEL_URL": f"http://{model.host}/v1"}) as c:
        yield c


def counter_manifest(loss: str = "0s") -> dict:
    return {
        "version": 1,
        "session": {"handler": "counter", "continuity": "interactive"},
        "placement": {"jurisdictions": ["DE"]},
        "migration": {"cost": "cheap", "acceptable_loss": loss, "max_blackout": "200ms"},
    }


def assistant_manifest(model: ModelServer) -> dict:
    return {
        "version": 1,
        "session": {"handler": "assistant", "continuity": "interactive"},
        "placement": {"jurisdictions": ["EU"]},
        "migration": {"cost": "cheap", "acceptable_loss": "0s", "max_blackout": "2s"},
        "egress": {"hosts": [model.host]},
    }


def pytest_collection_modifyitems(session: Any, config: Any, items: list) -> None:
    # The OpenAPI check reads what every other test recorded: it runs last.
    items.sort(key=lambda it: 1 if "test_openapi" in it.nodeid else 0)
