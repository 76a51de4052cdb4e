"""The asyncio OpenGrid client: the same API as :mod:`opengrid.client`, awaited.

    async with opengrid.AsyncClient("http://127.0.0.1:7600") as client:
        s = await client.create(handler="counter", jurisdictions=["DE"])
        r = await s.send(5)
        sr = s.stream({"user": "hi"})
        async for chunk in sr:
            print(chunk, end="")
        print((await sr.get_reply()).output)

Numbering, retries, moves, failovers and stream resumption behave as in the synchronous client
(they share their decisions, :mod:`opengrid._core`). A session is not safe to use from several
tasks at once: send its inputs one after another.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional, Sequence, Union

import httpx
from httpx_sse import EventSource, SSEError

from ._core import (
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
    decode,
    encode,
)
from .errors import DeadlineExceeded, HandlerError, OpenGridError, Unavailable, error_from
from .models import Reply

JSON_CT = {"content-type": "application/json"}

__all__ = ["AsyncClient", "AsyncSession", "AsyncStreamedReply"]


class AsyncClient(ClientCore):
    """The asyncio mirror of :class:`opengrid.Client` (``http``: an ``httpx.AsyncClient``); an
    RC group's replicas are given and asked as there."""

    def __init__(
        self,
        rc_url: Union[str, Sequence[str]],
        token: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = DEFAULT_RETRY_FOR,
        api_prefix: Optional[str] = None,
        http: Optional[httpx.AsyncClient] = None,
    ):
        super().__init__(rc_url, token, timeout, retry_for, api_prefix)
        self._own_http = http is None
        self.http = http if http is not None else httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def aclose(self) -> None:
        """Closes the connection pool (if the client made it)."""
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _reachable(self, base: str) -> bool:
        """Whether the RC at ``base`` accepts connections (``GET /health`` answers in time)."""
        try:
            await self.http.get(f"{base}/health", timeout=HEALTH_TIMEOUT)
            return True
        except httpx.TransportError:
            return False

    async def _to_rc(self, method: str, path: str, retry: Optional[Retry] = None, **kw: Any) -> httpx.Response:
        """As :meth:`opengrid.Client._to_rc`: the RC's answer, across an RC group's replicas."""
        retry = retry if retry is not None else Retry(self.retry_for)
        kw.setdefault("timeout", self.timeout)
        base = self.rc_url
        hops = 0
        while True:
            try:
                r = await self.http.request(method, self.url(base, path), **kw)
            except httpx.TransportError as e:
                move = self._rc_unreached(e, retry)
                if move is None or (move is False and await self._reachable(base)):
                    raise
                base = self._rc_next(base)
                await asyncio.sleep(UNREACHABLE_PAUSE if move else 0.0)
                continue
            step = self._rc_answered(base, r.status_code, decode(r.text), retry, hops)
            if step is None:
                return r
            hops += 1
            base, pause = step
            await asyncio.sleep(pause)

    async def get(self, path: str) -> JSON:
        """GET a JSON document from the RC with the client's token (e.g. ``/status``)."""
        r = await self._to_rc("GET", path, headers=self._auth(self.token))
        body = decode(r.text)
        if r.is_success:
            return body
        raise error_from(r.status_code, body)

    async def create(
        self,
        manifest: Optional[Manifest] = None,
        *,
        handler: Optional[str] = None,
        jurisdictions: Optional[list[str]] = None,
        session_id: Optional[str] = None,
        capability: Optional[str] = None,
        acceptable_loss: Optional[str] = None,
        egress_hosts: Optional[list[str]] = None,
    ) -> "AsyncSession":
        """As :meth:`opengrid.Client.create`."""
        content, headers, params = self._create_request(
            manifest, handler, jurisdictions, session_id, capability, acceptable_loss, egress_hosts
        )
        retry = Retry(self.retry_for)
        last: Optional[BaseException] = None
        while not retry.expired():
            try:
                r = await self._to_rc("POST", "/sessions", retry, content=content, headers=headers, params=params)
            except httpx.TransportError as e:
                if not self._create_retryable(e, session_id):
                    raise Unavailable(0, "transport_error", f"POST /sessions: {e!r}") from e
                last = e
                await asyncio.sleep(retry.pause())
                continue
            what, x = self._create_answer(r.status_code, decode(r.text), session_id)
            if what == "placed":
                return AsyncSession(
                    self, x.session_id, x.capability or capability, x.address,
                    next_seq=None if session_id else 1, placement=x,
                )
            if what == "located":
                return AsyncSession(self, str(session_id), capability, x, next_seq=None)
            if what == "retry":
                last = x
                await asyncio.sleep(retry.pause())
                continue
            raise x
        raise DeadlineExceeded(self.retry_for, last)

    def attach(self, session_id: str, capability: Optional[str] = None, next_seq: Optional[int] = None) -> "AsyncSession":
        """As :meth:`opengrid.Client.attach` (nothing is sent until the first use)."""
        return AsyncSession(self, session_id, capability, None, next_seq=next_seq)

    async def locate(self, session_id: str, capability: Optional[str] = None) -> dict:
        """The RC's directory entry of a session."""
        return await self._locate(session_id, capability)

    async def _locate(self, session_id: str, capability: Optional[str], retry: Optional[Retry] = None) -> dict:
        r = await self._to_rc("GET", f"/sessions/{session_id}", retry, headers=self._auth(capability or self.token))
        body = decode(r.text)
        if r.is_success and isinstance(body, dict):
            return body
        raise error_from(r.status_code, body)


class AsyncSession(SessionCore):
    """The asyncio mirror of :class:`opengrid.Session`; :meth:`address` and :meth:`get_next_seq`
    are coroutines (they may ask the RC or the node)."""

    client: AsyncClient

    async def get_address(self) -> str:
        """Base URL of the node holding the session (asked of the RC if not known yet)."""
        if self._address is None:
            e = await self.client.locate(self.id, self._token())
            if not self._located(e):
                raise Unavailable(503, "no_address", f"the RC has no address for session {self.id}", e)
        assert self._address is not None
        return self._address

    @property
    def address(self) -> Optional[str]:
        """The holder's base URL as far as the client knows (None before the first use of an
        attached session)."""
        return self._address

    @property
    def next_seq(self) -> Optional[int]:
        """The seq the next input gets (None for an attached session before its first use)."""
        return self._next_seq

    async def get_next_seq(self) -> int:
        """The seq the next input gets (read from the session for an attached one)."""
        if self._next_seq is None:
            self._next_seq = int((await self.info()).get("last_seq") or 0) + 1
        return self._next_seq

    async def _relocate(self, retry: Optional[Retry] = None) -> bool:
        try:
            return self._located(await self.client._locate(self.id, self._token(), retry))
        except (OpenGridError, httpx.TransportError):
            return False

    async def _url(self, path: str = "") -> str:
        return self.client.url(await self.get_address(), f"/sessions/{self.id}{path}")

    async def _after(self, what: str, retry: Retry) -> None:
        if what == FOLLOWED:
            await asyncio.sleep(retry.hop_pause())
        else:
            await self._relocate(retry)
            await asyncio.sleep(retry.pause())

    async def send(self, input: JSON, *, check: bool = True) -> Reply:
        """As :meth:`opengrid.Session.send`."""
        await self._settle()
        reply = await self._deliver(await self.get_next_seq(), input)
        if check and reply.error is not None:
            raise HandlerError(reply)
        return reply

    def stream(self, input: JSON, *, check: bool = True) -> "AsyncStreamedReply":
        """As :meth:`opengrid.Session.stream`: ``async for chunk in s.stream(x)``, then
        ``await sr.get_reply()``. Nothing is sent before the first read."""
        encode(input)  # what JSON cannot carry fails here
        return AsyncStreamedReply(self, 0, input, check)

    async def _settle(self) -> None:
        p = self._pending
        if p is None:
            return
        if isinstance(p, AsyncStreamedReply):
            await p._drain()
            return
        seq, input = p
        self.recovered = await self._deliver(seq, input)

    async def _deliver(self, seq: int, input: JSON) -> Reply:
        retry = Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        breaks: list = []
        while True:
            body_bytes = encode({"seq": seq, "input": input})
            if retry.expired():
                self._gave_up(seq, input)
                raise DeadlineExceeded(self.client.retry_for, last, seq)
            try:
                r = await self.client.http.post(
                    await self._url("/inputs"), content=body_bytes, headers=self._headers(**JSON_CT),
                    timeout=self.client.timeout,
                )
            except Unavailable as e:
                last = e
                await asyncio.sleep(retry.pause())
                continue
            except httpx.TransportError as e:
                last = e
                refused = self._broken(e, len(body_bytes), breaks)
                if refused is not None:
                    self._refused(seq)
                    raise refused from e
                await self._relocate(retry)
                await asyncio.sleep(retry.pause())
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
                await self._after(what, retry)

    async def _pump(self, sr: "AsyncStreamedReply") -> AsyncIterator[str]:
        retry = Retry(self.client.retry_for)
        timeout = httpx.Timeout(self.client.timeout, read=max(self.client.timeout, STREAM_READ_TIMEOUT))
        breaks: list = []
        while True:
            if retry.expired():
                raise DeadlineExceeded(self.client.retry_for, sr._last, sr.seq)
            follow: Optional[str] = None
            body_bytes = encode(self._stream_body(sr))
            try:
                async with self.client.http.stream(
                    "POST", await self._url("/inputs"), content=body_bytes,
                    headers=self._headers(accept="text/event-stream", **JSON_CT), timeout=timeout,
                ) as r:
                    if r.status_code != 200:
                        await r.aread()
                        body = decode(r.text)
                        err = error_from(r.status_code, body)
                        sr._last = err
                        what, n = self._decide(r.status_code, r.headers.get("location"), body, err, sr.seq)
                        if what == RENUMBER:
                            sr.seq = n
                        elif what == GIVE_UP:
                            raise err
                        else:
                            await self._after(what, retry)
                        continue
                    if "text/event-stream" not in r.headers.get("content-type", ""):
                        await r.aread()
                        body = decode(r.text)
                        if isinstance(body, dict):
                            sr._final = self._reply_of(sr.seq, body)
                            return
                    ended = False
                    async for ev in EventSource(r).aiter_sse():
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
                            ended = True
                            break
                    if not ended:
                        sr._last = OpenGridError(0, "stream_cut", f"the stream ended at chunk {sr._from} without a reply")
            except Unavailable as e:
                sr._last = e
            except httpx.TransportError as e:
                sr._last = e
                refused = self._broken(e, len(body_bytes), breaks)
                if refused is not None:
                    raise refused from e
            except SSEError as e:
                sr._last = e
            if not self._move(follow):
                await self._relocate(retry)
                await asyncio.sleep(retry.pause())

    async def _call(self, method: str, path: str = "") -> JSON:
        retry = Retry(self.client.retry_for)
        last: Optional[BaseException] = None
        tried = False
        while not retry.expired():
            try:
                r = await self.client.http.request(
                    method, await self._url(path), headers=self._headers(), timeout=self.client.timeout
                )
            except httpx.TransportError as e:
                last, tried = e, True
                await self._relocate(retry)
                await asyncio.sleep(retry.pause())
                continue
            body = decode(r.text)
            if r.is_success:
                return body
            err = error_from(r.status_code, body)
            last = err
            if method == "DELETE" and tried and r.status_code == 404:
                return {"closed": True, "session_id": self.id}
            if r.status_code in REDIRECTS or r.status_code in (410, 429) or r.status_code >= 500:
                what, _ = self._decide(r.status_code, r.headers.get("location"), body, err, 0)
                await self._after(what, retry)
                continue
            raise err
        raise DeadlineExceeded(self.client.retry_for, last)

    async def info(self) -> dict:
        """As :meth:`opengrid.Session.info`."""
        return await self._call("GET")

    async def close(self) -> dict:
        """As :meth:`opengrid.Session.close`."""
        return await self._call("DELETE")


class AsyncStreamedReply(StreamCore):
    """The asyncio mirror of :class:`opengrid.StreamedReply`: ``async for chunk in sr``, then
    ``await sr.get_reply()`` (or :attr:`reply` once :attr:`done`)."""

    session: AsyncSession

    def __init__(self, session: AsyncSession, seq: int, input: JSON, check: bool = True):
        super().__init__(session, seq, input, check)
        self._gen: Optional[AsyncIterator[str]] = None
        self._started = False

    async def _start(self) -> None:
        # The seq is taken when the stream starts (stream() itself is not a coroutine).
        if not self._started:
            s = self.session
            await s._settle()
            self.seq = await s.get_next_seq()
            s._next_seq = self.seq + 1
            s._pending = self
            self._started = True

    def __aiter__(self) -> "AsyncStreamedReply":
        return self

    async def __anext__(self) -> str:
        await self._start()
        if self._buffer:
            return self._buffer.popleft()
        if not self._done:
            chunk = await self._pull()
            if chunk is not None:
                return chunk
        self._result()  # raises a handler error or a refusal at the end
        raise StopAsyncIteration

    async def _pull(self) -> Optional[str]:
        if self._gen is None:
            self._gen = self.session._pump(self)
        try:
            chunk = await self._gen.__anext__()
        except StopAsyncIteration:
            self._gen = None
            self._ended()
            return None
        except DeadlineExceeded:
            self._gen = None
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

    async def _drain(self) -> None:
        await self._start()
        while not self._done:
            chunk = await self._pull()
            if chunk is not None:
                self._buffer.append(chunk)

    async def get_reply(self) -> Reply:
        """Reads the rest of the stream (chunks not iterated yet stay available) and returns
        the reply."""
        await self._drain()
        return self._result()

    @property
    def reply(self) -> Reply:
        """The reply, once :attr:`done` (else use ``await get_reply()``)."""
        if not self._done:
            raise RuntimeError("the stream has not ended: await get_reply()")
        return self._result()

    async def aclose(self) -> None:
        """Drops the open connection; the input stays pending on the session."""
        gen, self._gen = self._gen, None
        if gen is not None:
            await gen.aclose()  # type: ignore[attr-defined]
