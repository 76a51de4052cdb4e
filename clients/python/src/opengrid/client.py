"""The synchronous OpenGrid client (httpx).

A :class:`Client` talks to a colony's routing coordinator (RC): it places sessions
(:meth:`Client.create`) and finds them (:meth:`Client.attach`, :meth:`Client.locate`). A
:class:`Session` talks to the node holding the session and follows it when it moves:

- inputs are numbered ``1, 2, 3, …`` (:attr:`Session.next_seq`); an input is retried with the
  *same* seq across cut connections, ``503`` answers, ``307`` moves (a live handover) and a dead
  holder (a failover: the client asks the RC where the session lives now) until ``retry_for``
  seconds pass without progress. The session drops an input it has already processed by its
  seq and answers ``duplicate`` with the first answer, which the client returns (so a retry never
  applies an input twice);
- a streamed input (:meth:`Session.stream`) gives each chunk once, in order, across cuts and
  moves, resuming with ``"from": k``;
- every request carries the session's capability (or the client's operator token) as
  ``Authorization: Bearer …``.

All routes are under :data:`API_PREFIX` (``/v1``). A client and its sessions are not
thread-safe: use one per thread. :mod:`opengrid.aio` is the same API for asyncio.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence, Union

import httpx
from httpx_sse import EventSource, SSEError

from ._core import (
    API_PREFIX,
    DEFAULT_RETRY_FOR,
    DEFAULT_TIMEOUT,
    FOLLOWED,
    HEALTH_TIMEOUT,
    GIVE_UP,
    JSON,
    REDIRECTS,
    RENUMBER,
    STREAM_READ_TIMEOUT,
    ClientCore,
    Manifest,
    Retry,
    SessionCore,
    StreamCore,
    UNREACHABLE_PAUSE,
    build_manifest,
    decode,
    encode,
)
from .errors import DeadlineExceeded, HandlerError, OpenGridError, Unavailable, error_from
from .models import Reply

JSON_CT = {"content-type": "application/json"}

__all__ = ["API_PREFIX", "Client", "Session", "StreamedReply", "build_manifest"]


class Client(ClientCore):
    """A client of one colony, at its RC's base URL (e.g. ``http://127.0.0.1:7600``).

    For an RC group (ADR 0037) give every replica's, comma separated or as a list
    (``"http://a:7600,http://b:7600,http://c:7600"``): the first is asked first, then the one
    that answered last. A follower's ``307 not_leader`` is followed to the leader (also one not
    given); a replica that has no leader (an election) or cannot be connected to is left for the
    next, until ``retry_for`` passes. Sessions talk to their nodes, not to the RC.

    ``token`` is an operator token (``opengrid token operator``); it is sent on the client's own
    requests and on a session's when the session has no capability. ``timeout`` bounds one
    request; ``retry_for`` is how long an operation is retried without progress. ``http`` lets a
    caller bring its own ``httpx.Client`` (transport, event hooks, proxies); it must not follow
    redirects (the client follows moves itself). ``api_prefix`` overrides :data:`API_PREFIX`.
    """

    def __init__(
        self,
        rc_url: Union[str, Sequence[str]],
        token: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = DEFAULT_RETRY_FOR,
        api_prefix: Optional[str] = None,
        http: Optional[httpx.Client] = None,
    ):
        super().__init__(rc_url, token, timeout, retry_for, api_prefix)
        self._own_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        """Closes the connection pool (if the client made it)."""
        if self._own_http:
            self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _reachable(self, base: str) -> bool:
        """Whether the RC at ``base`` accepts connections (``GET /health`` answers in time)."""
        try:
            self.http.get(f"{base}/health", timeout=HEALTH_TIMEOUT)
            return True
        except httpx.TransportError:
            return False

    def _to_rc(self, method: str, path: str, retry: Optional[Retry] = None, **kw: Any) -> httpx.Response:
        """Sends a request for the RC (``path`` under the prefix) and returns the answer, asking
        the replicas of an RC group as :meth:`ClientCore._rc_answered` and
        :meth:`ClientCore._rc_unreached` decide, until ``retry`` (or ``retry_for``) expires.
        Raises the last transport error."""
        retry = retry if retry is not None else Retry(self.retry_for)
        kw.setdefault("timeout", self.timeout)
        base = self.rc_url
        hops = 0
        while True:
            try:
                r = self.http.request(method, self.url(base, path), **kw)
            except httpx.TransportError as e:
                move = self._rc_unreached(e, retry)
                if move is None or (move is False and self._reachable(base)):
                    raise
                base = self._rc_next(base)
                time.sleep(UNREACHABLE_PAUSE if move else 0.0)
                continue
            step = self._rc_answered(base, r.status_code, decode(r.text), retry, hops)
            if step is None:
                return r
            hops += 1
            base, pause = step
            time.sleep(pause)

    def get(self, path: str) -> JSON:
        """GET a JSON document from the RC with the client's token (e.g. ``/status``); the prefix
        is added. Raises the typed error of an error answer."""
        r = self._to_rc("GET", path, headers=self._auth(self.token))
        body = decode(r.text)
        if r.is_success:
            return body
        raise error_from(r.status_code, body)

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
        :func:`build_manifest`; with a dict, they override its fields. ``session_id`` re-creates
        (or finds) a known session, which needs its ``capability`` (or an operator token): a
        session already placed is returned where it lives (its next seq is read from the node).

        Raises :class:`~opengrid.BadRequest` (``bad_manifest``), :class:`~opengrid.Unsatisfiable`
        (422), :class:`~opengrid.QuotaExceeded` (429), :class:`~opengrid.Unauthorized` /
        :class:`~opengrid.Forbidden` (re-creating without the capability); a retryable ``503`` is
        retried until ``retry_for``.
        """
        content, headers, params = self._create_request(
            manifest, handler, jurisdictions, session_id, capability, acceptable_loss, egress_hosts
        )
        retry = Retry(self.retry_for)
        last: Optional[BaseException] = None
        while not retry.expired():
            try:
                r = self._to_rc("POST", "/sessions", retry, content=content, headers=headers, params=params)
            except httpx.TransportError as e:
                if not self._create_retryable(e, session_id):
                    raise Unavailable(0, "transport_error", f"POST /sessions: {e!r}") from e
                last = e
                time.sleep(retry.pause())
                continue
            what, x = self._create_answer(r.status_code, decode(r.text), session_id)
            if what == "placed":
                return Session(
                    self, x.session_id, x.capability or capability, x.address,
                    next_seq=None if session_id else 1, placement=x,
                )
            if what == "located":
                return Session(self, str(session_id), capability, x, next_seq=None)
            if what == "retry":
                last = x
                time.sleep(retry.pause())
                continue
            raise x
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
        return self._locate(session_id, capability)

    def _locate(self, session_id: str, capability: Optional[str], retry: Optional[Retry] = None) -> dict:
        r = self._to_rc("GET", f"/sessions/{session_id}", retry, headers=self._auth(capability or self.token))
        body = decode(r.text)
        if r.is_success and isinstance(body, dict):
            return body
        raise error_from(r.status_code, body)


class Session(SessionCore):
    """One session seen from the client (from :meth:`Client.create` or :meth:`Client.attach`).

    :attr:`id`, :attr:`capability` (its bearer token), :attr:`address` (the base URL of the node
    that holds it as far as the client knows), :attr:`next_seq` (the seq of the next input),
    :attr:`moves` (moves followed), :attr:`lost` (acknowledged inputs a bounded-loss session lost
    in a failover, within its manifest's ``acceptable_loss``), :attr:`recovered`.
    """

    client: Client

    @property
    def address(self) -> str:
        """Base URL of the node holding the session (asked of the RC if not known yet; raises
        the RC's answer when it is final: :class:`~opengrid.NotFound`, 401, 403)."""
        if self._address is None:
            e = self.client.locate(self.id, self._token())
            if not self._located(e):
                raise Unavailable(503, "no_address", f"the RC has no address for session {self.id}", e)
        assert self._address is not None
        return self._address

    @property
    def next_seq(self) -> int:
        """The seq the next input gets (read from the session for an attached one)."""
        if self._next_seq is None:
            self._next_seq = int(self.info().get("last_seq") or 0) + 1
        return self._next_seq

    def _relocate(self, retry: Optional[Retry] = None) -> bool:
        """Asks the RC where the session lives (an RC group's replicas until ``retry`` expires);
        whether the address changed. Errors are ignored (the RC may be briefly unreachable too;
        the caller retries)."""
        try:
            return self._located(self.client._locate(self.id, self._token(), retry))
        except (OpenGridError, httpx.TransportError):
            return False

    def _url(self, path: str = "") -> str:
        return self.client.url(self.address, f"/sessions/{self.id}{path}")

    def _after(self, what: str, retry: Retry) -> None:
        """Waits as a decision says."""
        if what == FOLLOWED:
            time.sleep(retry.hop_pause())
        else:
            self._relocate(retry)
            time.sleep(retry.pause())

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
        encode(input)  # what JSON cannot carry fails here, before a seq is taken
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
            p._drain()  # its handler error, if any, is its reader's business
            return
        seq, input = p
        self.recovered = self._deliver(seq, input)

    def _deliver(self, seq: int, input: JSON) -> Reply:
        retry = Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        breaks: list = []
        while True:
            body_bytes = encode({"seq": seq, "input": input})
            if retry.expired():
                self._gave_up(seq, input)
                raise DeadlineExceeded(self.client.retry_for, last, seq)
            try:
                r = self.client.http.post(
                    self._url("/inputs"), content=body_bytes, headers=self._headers(**JSON_CT),
                    timeout=self.client.timeout,
                )
            except Unavailable as e:  # the RC could not say where the session is (yet)
                last = e
                time.sleep(retry.pause())
                continue
            except httpx.TransportError as e:
                last = e
                refused = self._broken(e, len(body_bytes), breaks)
                if refused is not None:
                    self._refused(seq)
                    raise refused from e
                self._relocate(retry)
                time.sleep(retry.pause())
                continue
            breaks.clear()
            body = decode(r.text)
            if r.is_success and isinstance(body, dict):
                if isinstance(self._pending, tuple):
                    self._pending = None
                return self._reply_of(seq, body)
            err = error_from(r.status_code, body)
            last = err
            what, n = self._decide(r.status_code, r.headers.get("location"), body, err, seq)
            if what == RENUMBER:
                seq = n
            elif what == GIVE_UP:
                self._refused(seq)
                raise err
            else:
                self._after(what, retry)

    def _pump(self, sr: "StreamedReply") -> Iterator[str]:
        """The chunks of ``sr`` from the one reached on; sets ``sr._final`` at the end."""
        retry = Retry(self.client.retry_for)
        timeout = httpx.Timeout(self.client.timeout, read=max(self.client.timeout, STREAM_READ_TIMEOUT))
        breaks: list = []
        while True:
            if retry.expired():
                raise DeadlineExceeded(self.client.retry_for, sr._last, sr.seq)
            follow: Optional[str] = None
            body_bytes = encode(self._stream_body(sr))
            try:
                with self.client.http.stream(
                    "POST", self._url("/inputs"), content=body_bytes,
                    headers=self._headers(accept="text/event-stream", **JSON_CT), timeout=timeout,
                ) as r:
                    if r.status_code != 200:
                        r.read()
                        body = decode(r.text)
                        err = error_from(r.status_code, body)
                        sr._last = err
                        what, n = self._decide(r.status_code, r.headers.get("location"), body, err, sr.seq)
                        if what == RENUMBER:
                            sr.seq = n
                        elif what == GIVE_UP:
                            raise err
                        else:
                            self._after(what, retry)
                        continue
                    if "text/event-stream" not in r.headers.get("content-type", ""):
                        # Answered whole (a server that does not stream this input).
                        r.read()
                        body = decode(r.text)
                        if isinstance(body, dict):
                            sr._final = self._reply_of(sr.seq, body)
                            return
                    for ev in EventSource(r).iter_sse():
                        what, x = self._stream_event(sr, ev.event, ev.data)
                        if what == "chunk":
                            retry.progress()
                            breaks.clear()
                            yield x
                        elif what == "done":
                            sr._final = x
                            return
                        elif what == "resume":
                            follow = x
                            break
                    else:
                        sr._last = OpenGridError(0, "stream_cut", f"the stream ended at chunk {sr._from} without a reply")
            except Unavailable as e:  # the RC could not say where the session is (yet)
                sr._last = e
            except httpx.TransportError as e:
                sr._last = e
                refused = self._broken(e, len(body_bytes), breaks)
                if refused is not None:
                    raise refused from e
            except SSEError as e:
                sr._last = e
            if not self._move(follow):
                self._relocate(retry)
                time.sleep(retry.pause())

    # -- the rest ------------------------------------------------------------------------------

    def _call(self, method: str, path: str = "") -> JSON:
        retry = Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        tried = False
        while not retry.expired():
            try:
                r = self.client.http.request(method, self._url(path), headers=self._headers(), timeout=self.client.timeout)
            except httpx.TransportError as e:
                last, tried = e, True
                self._relocate(retry)
                time.sleep(retry.pause())
                continue
            body = decode(r.text)
            if r.is_success:
                return body
            err = error_from(r.status_code, body)
            last = err
            if method == "DELETE" and tried and r.status_code == 404:
                return {"closed": True, "session_id": self.id}  # an earlier try closed it
            if r.status_code in REDIRECTS or r.status_code in (410, 429) or r.status_code >= 500:
                what, _ = self._decide(r.status_code, r.headers.get("location"), body, err, 0)
                self._after(what, retry)
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


class StreamedReply(StreamCore):
    """The streamed reply of one input (from :meth:`Session.stream`).

    Iterate it for the chunks (strings), each once and in order even when the connection is cut
    or the session moves mid-stream; then :attr:`reply` is the :class:`~opengrid.Reply` (with
    ``chunks``, the stream's length). :attr:`chunks` lists every chunk received so far and
    :attr:`text` joins them. The iterator's ``StopIteration.value`` is the reply too. With
    ``check`` (the default) a handler error raises :class:`~opengrid.HandlerError` after the last
    chunk.
    """

    session: Session

    def __init__(self, session: Session, seq: int, input: JSON, check: bool = True):
        super().__init__(session, seq, input, check)
        self._gen: Optional[Iterator[str]] = None

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
            self._ended()
            return None
        except DeadlineExceeded:
            self._gen = None  # a later read starts again from the chunk reached
            raise
        except OpenGridError as e:
            self._gen = None
            self._refused(e)
            raise
        except BaseException:
            self._gen = None
            raise
        self.chunks.append(chunk)
        return chunk

    def _drain(self) -> None:
        while not self._done:
            chunk = self._pull()
            if chunk is not None:
                self._buffer.append(chunk)

    def finish(self) -> Reply:
        """Reads the stream to its end (chunks not iterated yet stay available) and returns the
        reply."""
        self._drain()
        return self.reply

    @property
    def reply(self) -> Reply:
        """The final reply (reads the rest of the stream first if needed)."""
        self._drain()
        return self._result()

    def close(self) -> None:
        """Drops the open connection; the input stays pending on the session (its answer is
        fetched, from the chunk reached, before the next input)."""
        gen, self._gen = self._gen, None
        if gen is not None:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
