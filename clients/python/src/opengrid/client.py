"""The synchronous OpenGrid client (httpx).

A :class:`Client` talks to a colony's routing coordinator (RC): it places sessions
(:meth:`Client.create`) and finds them (:meth:`Client.attach`, :meth:`Client.locate`). A
:class:`Session` talks to the node holding the session and follows it when it moves:

- inputs are numbered ``1, 2, 3, …`` (:attr:`Session.next_seq`); an input is retried with the
  *same* seq across cut connections, ``503`` answers, ``307`` moves (a live handover) and a dead
  holder (a failover: the client asks the RC where the session lives now) until ``retry_for``
  seconds pass without an answer. The session drops an input it has already processed by its
  seq and answers ``duplicate`` with the first answer, which the client returns (so a retry never
  applies an input twice);
- a streamed input (:meth:`Session.stream`) gives each chunk once, in order, across cuts and
  moves, resuming with ``"from": k``;
- every request carries the session's capability (or the client's operator token) as
  ``Authorization: Bearer …``.

All routes are under :data:`API_PREFIX` (``/v1``). A client and its sessions are not
thread-safe: use one per thread (or one session per thread, each from its own client).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from typing import Any, Iterator, Optional, Union
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, SSEError

from .errors import (
    AnswerNotRetained,
    DeadlineExceeded,
    HandlerError,
    OpenGridError,
    Unavailable,
    error_from,
)
from .models import Placement, Reply

#: The prefix of every API route (``POST {rc}/v1/sessions``, ``{node}/v1/sessions/{id}/inputs``…).
#: ``OPENGRID_API_PREFIX`` in the environment (or ``Client(api_prefix=…)``) overrides it, for a
#: server that predates ``/v1`` (set it to the empty string).
API_PREFIX = "/v1"

#: Default seconds one request may take.
DEFAULT_TIMEOUT = 10.0
#: Default seconds an operation is retried without progress before :class:`DeadlineExceeded`.
DEFAULT_RETRY_FOR = 30.0

JSON = Any
_RETRY = 0
_GIVE_UP = -1
Manifest = Union[dict, str]


def _prefix(explicit: Optional[str]) -> str:
    p = explicit if explicit is not None else os.environ.get("OPENGRID_API_PREFIX", API_PREFIX)
    p = p.strip().rstrip("/")
    if p and not p.startswith("/"):
        p = "/" + p
    return p


def _decode(r: httpx.Response) -> Any:
    text = r.text
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class _Retry:
    """A deadline that moves on with progress, and a capped, jittered exponential backoff."""

    def __init__(self, retry_for: float):
        self.retry_for = retry_for
        self.deadline = time.monotonic() + retry_for
        self.delay = 0.05
        self.hops = 0

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def progress(self) -> None:
        self.deadline = time.monotonic() + self.retry_for
        self.delay = 0.05
        self.hops = 0

    def sleep(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, self.delay * (0.5 + random.random())))
        self.delay = min(self.delay * 2, 1.0)

    def hop(self) -> None:
        """A redirect was followed: free for the first few, then back off (no ping-pong loop)."""
        self.hops += 1
        if self.hops > 3:
            self.sleep()


def build_manifest(
    handler: str,
    jurisdictions: Optional[list[str]] = None,
    *,
    continuity: str = "interactive",
    acceptable_loss: str = "0s",
    max_blackout: str = "200ms",
    cost: str = "cheap",
    egress_hosts: Optional[list[str]] = None,
) -> dict:
    """A JSON manifest for a built-in ``handler`` (``counter``, ``assistant``…): zero loss by
    default (``acceptable_loss = "0s"``: the session fails over with every acknowledged input)."""
    m: dict = {
        "version": 1,
        "session": {"handler": handler, "continuity": continuity},
        "migration": {"cost": cost, "acceptable_loss": acceptable_loss, "max_blackout": max_blackout},
    }
    if jurisdictions:
        m["placement"] = {"jurisdictions": list(jurisdictions)}
    if egress_hosts:
        m["egress"] = {"hosts": list(egress_hosts)}
    return m


class Client:
    """A client of one colony, at its RC's base URL (e.g. ``http://127.0.0.1:7600``).

    ``token`` is an operator token (``opengrid token operator``); it is sent on the client's own
    requests and on a session's when the session has no capability. ``timeout`` bounds one
    request; ``retry_for`` is how long an operation is retried without progress. ``http`` lets a
    caller bring its own ``httpx.Client`` (transport, event hooks, proxies); it must not follow
    redirects (the client follows moves itself).
    """

    def __init__(
        self,
        rc_url: str,
        token: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = DEFAULT_RETRY_FOR,
        api_prefix: Optional[str] = None,
        http: Optional[httpx.Client] = None,
    ):
        self.prefix = _prefix(api_prefix)
        self.rc_url = self._base(rc_url)
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for
        self._own_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=timeout, follow_redirects=False)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection pool (if the client made it)."""
        if self._own_http:
            self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------

    def _base(self, url: str) -> str:
        """A server's base URL: no trailing slash, no API prefix."""
        url = url.strip().rstrip("/")
        if self.prefix and url.endswith(self.prefix):
            url = url[: -len(self.prefix)]
        return url

    def url(self, base: str, path: str) -> str:
        """``{base}{prefix}{path}``."""
        return f"{base}{self.prefix}{path}"

    @staticmethod
    def _auth(token: Optional[str]) -> dict:
        return {"authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> JSON:
        """GET a JSON document from the RC with the client's token (e.g. ``/status``); the prefix
        is added. Raises the typed error of an error answer."""
        r = self.http.get(self.url(self.rc_url, path), headers=self._auth(self.token), timeout=self.timeout)
        body = _decode(r)
        if r.is_success:
            return body
        raise error_from(r.status_code, body)

    # -- sessions ----------------------------------------------------------------------------

    def create(
        self,
        manifest: Optional[Manifest] = None,
        *,
        handler: Optional[str] = None,
        jurisdictions: Optional[list[str]] = None,
        session_id: Optional[str] = None,
        capability: Optional[str] = None,
        acceptable_loss: Optional[str] = None,
        egress_hosts: Optional[list[str]] = None,
    ) -> "Session":
        """Places a session and returns a :class:`Session` bound to its node.

        ``manifest`` is a dict (sent as JSON) or manifest text (JSON or TOML). Without one,
        ``handler`` (and ``jurisdictions``, ``acceptable_loss``, ``egress_hosts``) build it with
        :func:`build_manifest`; with one, they override its fields. ``session_id`` re-creates (or
        finds) a known session, which needs its ``capability`` (or an operator token): a session
        already placed is returned where it lives (its next seq is read from the node).

        Raises :class:`~opengrid.BadRequest` (``bad_manifest``), :class:`~opengrid.Unsatisfiable`
        (422), :class:`~opengrid.QuotaExceeded` (429), :class:`~opengrid.Unauthorized` /
        :class:`~opengrid.Forbidden` (re-creating without the capability); a retryable ``503`` is
        retried until ``retry_for``.
        """
        if manifest is None:
            if handler is None:
                raise ValueError("create() needs a manifest or a handler")
            manifest = build_manifest(
                handler, jurisdictions, acceptable_loss=acceptable_loss or "0s", egress_hosts=egress_hosts
            )
        elif isinstance(manifest, dict):
            manifest = json.loads(json.dumps(manifest))  # a copy we may edit
            if handler is not None:
                manifest.setdefault("session", {})["handler"] = handler
            if jurisdictions is not None:
                manifest.setdefault("placement", {})["jurisdictions"] = list(jurisdictions)
            if acceptable_loss is not None:
                manifest.setdefault("migration", {})["acceptable_loss"] = acceptable_loss
            if egress_hosts is not None:
                manifest.setdefault("egress", {})["hosts"] = list(egress_hosts)
        elif handler or jurisdictions or acceptable_loss or egress_hosts:
            raise ValueError("handler/jurisdictions/acceptable_loss/egress_hosts override a dict manifest only")

        if isinstance(manifest, dict):
            content = json.dumps(manifest).encode()
            ctype = "application/json"
        else:
            content = manifest.encode()
            ctype = "application/json" if manifest.lstrip().startswith("{") else "application/toml"
        token = capability or self.token
        headers = {"content-type": ctype, **self._auth(token)}
        params = {"session_id": session_id} if session_id else None
        retry = _Retry(self.retry_for)
        last: Optional[BaseException] = None
        while not retry.expired():
            try:
                r = self.http.post(
                    self.url(self.rc_url, "/sessions"), content=content, headers=headers, params=params,
                    timeout=self.timeout,
                )
            except httpx.TransportError as e:
                # A new session is not idempotent: retry only what surely did not reach the RC
                # (or a known id, which is).
                if not (session_id or isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))):
                    raise Unavailable(0, "transport_error", f"POST /sessions: {e!r}") from e
                last = e
                retry.sleep()
                continue
            body = _decode(r)
            if r.status_code in (200, 201) and isinstance(body, dict):
                p = Placement.from_json(body)
                return Session(
                    self, p.session_id, p.capability or capability, p.address, next_seq=None if session_id else 1,
                    placement=p,
                )
            err = error_from(r.status_code, body)
            if r.status_code == 409 and err.code == "already_placed" and session_id and isinstance(body, dict):
                return Session(self, session_id, capability, body.get("location"), next_seq=None)
            if r.status_code >= 500 and (not isinstance(body, dict) or body.get("retryable", True)):
                last = err
                retry.sleep()
                continue
            raise err
        raise DeadlineExceeded(self.retry_for, last)

    def attach(self, session_id: str, capability: Optional[str] = None, next_seq: Optional[int] = None) -> "Session":
        """A handle on an existing session (e.g. in another process than the one that created it).

        ``capability`` is the session's (``None`` with an operator token). ``next_seq`` is the seq
        of the next input to send; by default it is read from the session (its last processed seq
        plus one) on first use. Sending an input again with an old seq answers the first answer
        (:attr:`Reply.duplicate`) as long as the session keeps it.
        """
        return Session(self, session_id, capability, None, next_seq=next_seq)

    def locate(self, session_id: str, capability: Optional[str] = None) -> dict:
        """The RC's directory entry of a session: ``{address, epoch, node, node_name, state, …}``."""
        token = capability or self.token
        r = self.http.get(
            self.url(self.rc_url, f"/sessions/{session_id}"), headers=self._auth(token), timeout=self.timeout
        )
        body = _decode(r)
        if r.is_success and isinstance(body, dict):
            return body
        raise error_from(r.status_code, body)


class Session:
    """One session seen from the client (from :meth:`Client.create` or :meth:`Client.attach`).

    :attr:`id`, :attr:`capability` (its bearer token), :attr:`address` (the base URL of the node
    that holds it as far as the client knows), :attr:`next_seq` (the seq of the next input),
    :attr:`moves` (moves followed), :attr:`lost` (acknowledged inputs a bounded-loss session lost
    in a failover, within its manifest's ``acceptable_loss``).
    """

    def __init__(
        self,
        client: Client,
        session_id: str,
        capability: Optional[str],
        address: Optional[str],
        next_seq: Optional[int] = 1,
        placement: Optional[Placement] = None,
    ):
        self.client = client
        self.id = session_id
        self.capability = capability
        self.placement = placement
        self._address: Optional[str] = client._base(address) if address else None
        self._next_seq: Optional[int] = max(1, next_seq) if next_seq is not None else None
        # An input whose fate is unknown (the client gave up on it, or a stream not read to its
        # end): delivered again, same seq, before the next input.
        self._pending: Optional[Union[tuple[int, JSON], StreamedReply]] = None
        self.moves = 0
        self.lost = 0
        #: The answer of an input given up on earlier and delivered before a later one.
        self.recovered: Optional[Reply] = None

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, address={self._address!r}, next_seq={self._next_seq!r})"

    # -- where, who, which seq -----------------------------------------------------------------

    @property
    def address(self) -> str:
        """Base URL of the node holding the session (asked of the RC if not known yet)."""
        if self._address is None:
            # Raises the RC's answer when it is final (404: no such session; 401/403).
            e = self.client.locate(self.id, self._token())
            if not e.get("address"):
                raise Unavailable(503, "no_address", f"the RC has no address for session {self.id}: {e}", e)
            self._address = self.client._base(e["address"])
        return self._address

    @property
    def next_seq(self) -> int:
        """The seq the next input gets (read from the session for an attached one)."""
        if self._next_seq is None:
            info = self.info()
            self._next_seq = int(info.get("last_seq") or 0) + 1
        return self._next_seq

    @property
    def pending_seq(self) -> Optional[int]:
        """The seq of an input whose answer the client has not got (it gave up, or a stream was
        not read to its end); it is delivered again before the next input."""
        if isinstance(self._pending, StreamedReply):
            return self._pending.seq
        return self._pending[0] if self._pending else None

    def _token(self) -> Optional[str]:
        return self.capability or self.client.token

    def _headers(self, **extra: str) -> dict:
        return {**Client._auth(self._token()), **extra}

    def _move(self, location: Optional[str]) -> bool:
        if not location:
            return False
        base = self.client._base(location)
        if base == self._address:
            return False
        self._address = base
        self.moves += 1
        return True

    def _follow(self, r: httpx.Response, body: Any) -> bool:
        loc = body.get("location") if isinstance(body, dict) else None
        if not loc and r.headers.get("location"):
            u = urlsplit(r.headers["location"])
            loc = f"{u.scheme}://{u.netloc}"
        return self._move(loc)

    def _relocate(self) -> bool:
        """Asks the RC where the session lives; whether the address changed. Errors are ignored
        (the RC may be briefly unreachable too; the caller retries)."""
        try:
            e = self.client.locate(self.id, self._token())
        except (OpenGridError, httpx.TransportError):
            return False
        addr = e.get("address")
        if not addr:
            return False
        if self._address is None:
            self._address = self.client._base(addr)
            return True
        return self._move(addr)

    def _url(self, path: str = "") -> str:
        return self.client.url(self.address, f"/sessions/{self.id}{path}")

    # -- inputs --------------------------------------------------------------------------------

    def send(self, input: JSON, *, check: bool = True) -> Reply:
        """Sends one input (any JSON value) and returns its :class:`~opengrid.Reply`.

        The input gets :attr:`next_seq` and is retried with that seq until answered or
        ``retry_for`` passes without progress (:class:`~opengrid.DeadlineExceeded`; the input is
        then delivered again before the next one). If the session had processed it already, the
        first answer is returned (``reply.duplicate``), or :class:`~opengrid.AnswerNotRetained`
        raised when the server no longer has it. A handler error raises
        :class:`~opengrid.HandlerError` (``check=False``: returned in ``reply.error``). An input
        the server refuses (4xx) does not use its seq.
        """
        self._settle()
        reply = self._deliver(self.next_seq, input)
        if check and reply.error is not None:
            raise HandlerError(reply)
        return reply

    def stream(self, input: JSON, *, check: bool = True) -> "StreamedReply":
        """Sends one input asking for its streamed reply; returns a :class:`StreamedReply`:
        iterate it for the chunks (each once, in order, across cuts and moves), then read
        ``.reply``. The request starts on the first read. Read it to its end before the next
        input (a later :meth:`send` or :meth:`stream` finishes it first, keeping its chunks)."""
        self._settle()
        sr = StreamedReply(self, self.next_seq, input, check)
        self._next_seq = sr.seq + 1
        self._pending = sr
        return sr

    def _settle(self) -> None:
        """Delivers the input in doubt, if any, before the next one."""
        p = self._pending
        if p is None:
            return
        if isinstance(p, StreamedReply):
            p._finish_unchecked()  # its handler error, if any, is its reader's business
            return
        seq, input = p
        try:
            self.recovered = self._deliver(seq, input)
        except DeadlineExceeded:
            raise
        except OpenGridError:
            # Refused for good: it was not processed, its seq is free again.
            self._pending = None
            self._next_seq = seq
            raise

    def _deliver(self, seq: int, input: JSON) -> Reply:
        retry = _Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        while True:
            if retry.expired():
                self._pending = (seq, input)
                self._next_seq = seq + 1
                raise DeadlineExceeded(self.client.retry_for, last, seq)
            try:
                url = self._url("/inputs")
                r = self.client.http.post(
                    url, json={"seq": seq, "input": input}, headers=self._headers(), timeout=self.client.timeout
                )
            except Unavailable as e:  # the RC could not say where the session is (yet)
                last = e
                retry.sleep()
                continue
            except httpx.TransportError as e:
                last = e
                self._relocate()
                retry.sleep()
                continue
            body = _decode(r)
            if r.is_success and isinstance(body, dict):
                self._pending = None
                return self._reply_of(seq, body)
            err = error_from(r.status_code, body)
            last = err
            action = self._on_error(r, body, err, seq, retry)
            if action > 0:
                seq = action
                continue
            if action == _RETRY:
                continue
            if self._pending is not None and not isinstance(self._pending, StreamedReply):
                self._pending = None
            self._next_seq = seq
            raise err

    def _on_error(
        self, r: Optional[httpx.Response], body: Any, err: OpenGridError, seq: int, retry: _Retry
    ) -> int:
        """What to do about an error answer to input ``seq``: ``_RETRY``, ``_GIVE_UP`` (raise it)
        or a new seq (> 0: the session resumed from an older checkpoint)."""
        st = err.status
        if st in (301, 302, 307, 308):
            moved = self._follow(r, body) if r is not None else self._move(body.get("location"))
            if not moved:
                self._relocate()
                retry.sleep()
            else:
                retry.hop()
            return _RETRY
        if st == 429 or st >= 500:
            self._relocate()
            retry.sleep()
            return _RETRY
        if (st == 409 and err.code == "fenced") or st == 410:
            # A holder whose epoch a failover superseded: ask the RC, deliver there.
            self._relocate()
            retry.sleep()
            return _RETRY
        if st == 409 and err.code == "seq_gap" and isinstance(body, dict):
            expected = body.get("expected")
            if isinstance(expected, int) and 1 <= expected < seq:
                # A bounded-loss session failed over from a checkpoint older than inputs it had
                # acknowledged (within its manifest's acceptable_loss): renumber from there.
                self.lost += seq - expected
                self._next_seq = expected + 1
                return expected
        return _GIVE_UP

    def _reply_of(self, seq: int, body: dict) -> Reply:
        self._move(body.get("moved_to"))
        self._next_seq = max(self._next_seq or 0, seq + 1)
        if body.get("kind") == "duplicate":
            if "output" in body or "error" in body:
                return Reply.from_json(body, duplicate=True)
            raise AnswerNotRetained(seq, body.get("last"), body)
        return Reply.from_json(body)

    # -- streamed replies ------------------------------------------------------------------------

    def _pump(self, sr: "StreamedReply") -> Iterator[str]:
        """The chunks of ``sr`` from ``sr._from`` on; sets ``sr._final`` (its reply) at the end."""
        retry = _Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        read_timeout = max(self.client.timeout, 30.0)  # the server sends keep-alives every 15 s
        while True:
            if retry.expired():
                raise DeadlineExceeded(self.client.retry_for, last, sr.seq)
            follow: Optional[str] = None
            try:
                url = self._url("/inputs")
                with self.client.http.stream(
                    "POST",
                    url,
                    json={"seq": sr.seq, "input": sr.input, "from": sr._from},
                    headers=self._headers(accept="text/event-stream"),
                    timeout=httpx.Timeout(self.client.timeout, read=read_timeout),
                ) as r:
                    if r.status_code != 200:
                        r.read()
                        body = _decode(r)
                        err = error_from(r.status_code, body)
                        last = err
                        action = self._on_error(r, body, err, sr.seq, retry)
                        if action > 0:
                            sr.seq = action
                        elif action == _GIVE_UP:
                            raise err
                        continue
                    for ev in EventSource(r).iter_sse():
                        try:
                            data = json.loads(ev.data) if ev.data else {}
                        except ValueError:
                            data = {}
                        if ev.event == "chunk":
                            offset, chunk = data.get("offset"), data.get("chunk")
                            if offset == sr._from:
                                sr._from += 1
                                retry.progress()
                                yield chunk
                            elif isinstance(offset, int) and offset < sr._from:
                                continue  # given already (a resume re-sends from where asked)
                            else:
                                last = OpenGridError(0, "stream_gap", f"expected chunk {sr._from}: {data}")
                                break
                        elif ev.event == "reply":
                            kind = data.get("kind")
                            moved = data.get("moved_to")
                            chunks = data.get("chunks")
                            whole = chunks is None or chunks <= sr._from
                            if (kind == "duplicate" and not moved) or (
                                kind == "processed" and data.get("complete", True) and whole
                            ):
                                sr._final = self._reply_of(sr.seq, data)
                                return
                            # Answered by another node (relayed after a handover): resume there.
                            follow = moved
                            last = OpenGridError(0, "incomplete_stream", f"resume at chunk {sr._from}: {data}")
                            break
                        elif ev.event == "error":
                            st = int(data.get("status") or 0)
                            err = error_from(st, data)
                            last = err
                            if st in (301, 302, 307, 308):
                                follow = data.get("location")
                                break
                            if st == 429 or st >= 500 or st == 410 or err.code == "fenced":
                                break
                            raise err
                    else:
                        last = OpenGridError(0, "stream_cut", f"the stream ended at chunk {sr._from} without a reply")
            except Unavailable as e:  # the RC could not say where the session is (yet)
                last = e
            except (httpx.TransportError, SSEError) as e:
                last = e
            if not self._move(follow):
                self._relocate()
                retry.sleep()

    # -- the rest ------------------------------------------------------------------------------

    def _call(self, method: str, path: str = "") -> JSON:
        retry = _Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        tried = False
        while not retry.expired():
            try:
                r = self.client.http.request(method, self._url(path), headers=self._headers(), timeout=self.client.timeout)
            except httpx.TransportError as e:
                last, tried = e, True
                self._relocate()
                retry.sleep()
                continue
            body = _decode(r)
            if r.is_success:
                return body
            err = error_from(r.status_code, body)
            last = err
            if method == "DELETE" and tried and r.status_code == 404:
                return {"closed": True, "session_id": self.id}  # an earlier try closed it
            if r.status_code in (301, 302, 307, 308):
                if self._follow(r, body):
                    retry.hop()
                else:
                    self._relocate()
                    retry.sleep()
                continue
            if r.status_code == 429 or r.status_code >= 500 or r.status_code == 410:
                self._relocate()
                retry.sleep()
                continue
            raise err
        raise DeadlineExceeded(self.client.retry_for, last)

    def info(self) -> dict:
        """The session as its holder sees it: ``{session_id, handler, epoch, status, last_seq,
        usage, policy, replicas}``."""
        return self._call("GET")

    def close(self) -> dict:
        """Closes the session (``{"closed": true, "session_id"}``); later inputs answer 404."""
        return self._call("DELETE")


class StreamedReply:
    """The streamed reply of one input (from :meth:`Session.stream`).

    Iterate it for the chunks (strings), each once and in order even when the connection is cut
    or the session moves mid-stream; then :attr:`reply` is the :class:`~opengrid.Reply` (with
    ``chunks``, the stream's length). :attr:`chunks` lists every chunk received so far and
    :attr:`text` joins them. The iterator's ``StopIteration.value`` is the reply too. With
    ``check`` (the default) a handler error raises :class:`~opengrid.HandlerError` after the last
    chunk.
    """

    def __init__(self, session: Session, seq: int, input: JSON, check: bool = True):
        self.session = session
        self.seq = seq
        self.input = input
        self.check = check
        #: Every chunk received so far.
        self.chunks: list[str] = []
        self._from = 0
        self._buffer: deque[str] = deque()
        self._gen: Optional[Iterator[str]] = None
        self._final: Optional[Reply] = None
        self._failed: Optional[OpenGridError] = None
        self._done = False

    def __iter__(self) -> "StreamedReply":
        return self

    def __next__(self) -> str:
        if self._buffer:
            return self._buffer.popleft()
        if not self._done:
            chunk = self._pull()
            if chunk is not None:
                return chunk
        raise StopIteration(self.reply)

    def _pull(self) -> Optional[str]:
        """The next chunk from the server, or None at the end (then ``_final`` is set)."""
        if self._gen is None:
            self._gen = self.session._pump(self)
        try:
            chunk = next(self._gen)
        except StopIteration:
            self._gen = None
            self._done = True
            if self.session._pending is self:
                self.session._pending = None
            return None
        except DeadlineExceeded:
            self._gen = None  # a later read starts again from the chunk reached
            raise
        except OpenGridError as e:
            # Refused for good (4xx): not processed, so its seq is free again.
            self._gen = None
            self._done = True
            self._failed = e
            if self.session._pending is self:
                self.session._pending = None
                self.session._next_seq = self.seq
            raise
        except BaseException:
            self._gen = None
            raise
        self.chunks.append(chunk)
        return chunk

    def finish(self) -> Reply:
        """Reads the stream to its end (chunks not iterated yet stay available) and returns the
        reply."""
        while not self._done:
            chunk = self._pull()
            if chunk is not None:
                self._buffer.append(chunk)
        return self.reply

    def _finish_unchecked(self) -> None:
        while not self._done:
            chunk = self._pull()
            if chunk is not None:
                self._buffer.append(chunk)

    @property
    def done(self) -> bool:
        """Whether the reply has arrived."""
        return self._done

    @property
    def reply(self) -> Reply:
        """The final reply (reads the rest of the stream first if needed)."""
        if not self._done:
            self._finish_unchecked()
        if self._failed is not None:
            raise self._failed
        assert self._final is not None
        if self.check and self._final.error is not None:
            raise HandlerError(self._final)
        return self._final

    @property
    def text(self) -> str:
        """The chunks received so far, joined."""
        return "".join(self.chunks)

    def close(self) -> None:
        """Drops the open connection; the input stays pending on the session (its answer is
        fetched, from the chunk reached, before the next input)."""
        if self._gen is not None:
            close = getattr(self._gen, "close", None)
            if close:
                close()
            self._gen = None
