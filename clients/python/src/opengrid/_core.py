"""What the synchronous and the asynchronous clients share: configuration, the manifest builder,
the retry deadline, and every decision about an answer (follow, relocate, renumber, give up;
which chunk of a stream is new; when a stream is finished). The two clients only do the I/O."""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from typing import Any, Optional, Sequence, Union
from urllib.parse import urlsplit

import httpx

from .errors import AnswerNotRetained, OpenGridError, PayloadTooLarge, error_from
from .models import Placement, Reply

#: The prefix of every API route (``POST {rc}/v1/sessions``, ``{node}/v1/sessions/{id}/inputs``…).
#: ``OPENGRID_API_PREFIX`` in the environment (or ``api_prefix=``) overrides it, for a server that
#: predates ``/v1`` (set it to the empty string).
API_PREFIX = "/v1"

#: Default seconds one request may take.
DEFAULT_TIMEOUT = 10.0
#: Default seconds an operation is retried without progress before ``DeadlineExceeded``.
DEFAULT_RETRY_FOR = 30.0
#: The server sends a keep-alive on an idle stream every 15 s: a read may wait this long.
STREAM_READ_TIMEOUT = 30.0

JSON = Any
Manifest = Union[dict, str]

REDIRECTS = (301, 302, 303, 307, 308)

# An RC group (ADR 0037): seconds before the next replica is asked when one has no leader (an
# election is under way, ``503 no_leader``) or cannot be connected to, and before the same one is
# asked again while its nodes rejoin it (``503 rejoining``: a new leader; nothing was placed).
NO_LEADER_PAUSE = 0.1
UNREACHABLE_PAUSE = 0.05
REJOINING_PAUSE = 0.05
#: Seconds a replica has to answer ``GET /health`` before it is taken as gone (a request to it
#: broke after it may have been sent: only a replica that is gone is left for the next).
HEALTH_TIMEOUT = 0.5
#: ``not_leader`` redirects followed at once in one request; after these, each waits a little
#: (replicas that disagree on who leads must not make the client spin).
FREE_HOPS = 3

#: A body at least this large whose connection breaks (after it was accepted) this many times in
#: a row is taken as refused for its size: a node answers an oversized body with 413 and closes
#: the connection, which the client may see as a broken connection instead of the answer.
LARGE_BODY = 64 << 10
LARGE_BODY_BREAKS = 3

# What to do about an error answer (``SessionCore._decide``).
FOLLOWED = "followed"  # the session moved and the client switched: retry at once
RELOCATE = "relocate"  # ask the RC where the session lives, wait a little, retry
RENUMBER = "renumber"  # the session resumed from an older checkpoint: retry with a lower seq
GIVE_UP = "give_up"  # a final answer: raise it


def api_prefix(explicit: Optional[str]) -> str:
    p = explicit if explicit is not None else os.environ.get("OPENGRID_API_PREFIX", API_PREFIX)
    p = p.strip().rstrip("/")
    if p and not p.startswith("/"):
        p = "/" + p
    return p


def decode(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def encode(value: Any) -> bytes:
    """JSON bytes of a request body (``ValueError`` for what JSON cannot carry, e.g. NaN)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def auth(token: Optional[str]) -> dict:
    return {"authorization": f"Bearer {token}"} if token else {}


class Retry:
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

    def pause(self) -> float:
        """Seconds to wait before the next try (never past the deadline)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return 0.0
        d = min(left, self.delay * (0.5 + random.random()))
        self.delay = min(self.delay * 2, 1.0)
        return d

    def hop_pause(self) -> float:
        """A redirect was followed: free for the first few, then back off (no ping-pong loop)."""
        self.hops += 1
        return self.pause() if self.hops > 3 else 0.0


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
    default (``acceptable_loss = "0s"``: the session fails over with every acknowledged input).
    The server requires at least one jurisdiction."""
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


class ClientCore:
    """Configuration and request building shared by ``Client`` and ``AsyncClient``, and the
    decisions about the RC's answers (an RC group: which replica to ask next)."""

    def __init__(
        self,
        rc_url: Union[str, Sequence[str]],
        token: Optional[str],
        timeout: float,
        retry_for: float,
        prefix: Optional[str],
    ):
        self.prefix = api_prefix(prefix)
        urls = rc_url.split(",") if isinstance(rc_url, str) else list(rc_url)
        #: The RC's base URLs: for an RC group every replica's, in the order given, then any leader
        #: a replica redirected to that was not given.
        self.rc_urls: list[str] = []
        for u in urls:
            base = self._base(u)
            if base and base not in self.rc_urls:
                self.rc_urls.append(base)
        if not self.rc_urls:
            raise ValueError(f"no RC URL in {rc_url!r}")
        self._rc = 0
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for

    @property
    def rc_url(self) -> str:
        """The RC requests go to now: the first given, then the replica that answered last."""
        return self.rc_urls[self._rc]

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
        return auth(token)

    # -- an RC group -------------------------------------------------------------------------

    def _rc_at(self, base: str) -> str:
        """Makes ``base`` the RC requests go to (learning it if it is new); ``base``."""
        if base not in self.rc_urls:
            self.rc_urls.append(base)
        self._rc = self.rc_urls.index(base)
        return base

    def _rc_next(self, base: str) -> str:
        """Moves on to the replica after ``base``; its base URL."""
        i = self.rc_urls.index(base) + 1 if base in self.rc_urls else self._rc + 1
        self._rc = i % len(self.rc_urls)
        return self.rc_url

    def _rc_unreached(self, e: httpx.TransportError, retry: Retry) -> Optional[bool]:
        """A request to the RC failed in transport: ``None`` (raise it: one RC, or the deadline
        passed), ``True`` (nothing was sent: ask the next replica) or ``False`` (it may have been
        sent: ask the next replica only if this one no longer answers ``GET /health`` — a live
        RC's failure is the answer, and nothing an RC may have acted on is sent twice)."""
        if len(self.rc_urls) < 2 or retry.expired():
            return None
        return isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))

    def _rc_answered(self, base: str, status: int, body: Any, retry: Retry, hops: int) -> Optional[tuple[str, float]]:
        """The RC at ``base`` answered ``status`` / ``body``: ``None`` (the answer is the
        caller's) or ``(base, pause)``: send the same request there after ``pause`` seconds.

        A follower's ``307 not_leader`` sends to the leader it names (also one not given); a
        replica without a leader (``503 no_leader``) is left for the next; a new leader whose
        nodes have not rejoined (``503 rejoining``) is asked again. Until ``retry`` expires."""
        code = body.get("code") if isinstance(body, dict) else None
        if retry.expired() or code not in ("not_leader", "no_leader", "rejoining"):
            self._rc_at(base)
            return None
        if status == 307 and code == "not_leader":
            leader = body.get("location")
            pause = 0.0 if hops < FREE_HOPS else NO_LEADER_PAUSE
            if isinstance(leader, str) and leader.startswith(("http://", "https://")):
                return self._rc_at(self._base(leader)), pause
            return self._rc_next(base), pause
        if status == 503 and code == "no_leader":
            return self._rc_next(base), NO_LEADER_PAUSE
        if status == 503 and code == "rejoining":
            return base, REJOINING_PAUSE
        self._rc_at(base)
        return None

    def _create_request(
        self,
        manifest: Optional[Manifest],
        handler: Optional[str],
        jurisdictions: Optional[list[str]],
        session_id: Optional[str],
        capability: Optional[str],
        acceptable_loss: Optional[str],
        egress_hosts: Optional[list[str]],
    ) -> tuple[bytes, dict, Optional[dict]]:
        """``(content, headers, params)`` of ``POST /sessions``."""
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
        headers = {"content-type": ctype, **auth(capability or self.token)}
        params = {"session_id": session_id} if session_id else None
        return content, headers, params

    @staticmethod
    def _create_retryable(e: httpx.TransportError, session_id: Optional[str]) -> bool:
        # A new session is not idempotent: retry only what surely did not reach the RC (or a
        # known id, which is).
        return bool(session_id) or isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))

    @staticmethod
    def _create_answer(status: int, body: Any, session_id: Optional[str]) -> tuple[str, Any]:
        """``("placed", Placement)``, ``("located", address)``, ``("retry", error)`` or
        ``("raise", error)``."""
        if status in (200, 201) and isinstance(body, dict):
            return "placed", Placement.from_json(body)
        err = error_from(status, body)
        if status == 409 and err.code == "already_placed" and session_id and isinstance(body, dict):
            return "located", body.get("location")
        if status >= 500 and (not isinstance(body, dict) or body.get("retryable", True)):
            return "retry", err
        return "raise", err


class SessionCore:
    """A session's state and the decisions about answers, shared by ``Session`` and
    ``AsyncSession``."""

    def __init__(
        self,
        client: ClientCore,
        session_id: str,
        capability: Optional[str],
        address: Optional[str],
        next_seq: Optional[int] = 1,
        placement: Optional[Placement] = None,
    ):
        self.client = client
        #: The session id.
        self.id = session_id
        #: The session's capability (the bearer token of its requests).
        self.capability = capability
        #: The placement answer, for a session this client created.
        self.placement = placement
        self._address: Optional[str] = client._base(address) if address else None
        self._next_seq: Optional[int] = max(1, next_seq) if next_seq is not None else None
        # An input whose fate is unknown (the client gave up on it, or a stream not read to its
        # end): delivered again, same seq, before the next input.
        self._pending: Any = None
        #: Moves followed (redirects, relays, relocations).
        self.moves = 0
        #: Acknowledged inputs a bounded-loss session lost in a failover (within its manifest's
        #: acceptable_loss): the client renumbered from where the session resumed.
        self.lost = 0
        #: The answer of an input given up on earlier and delivered before a later one.
        self.recovered: Optional[Reply] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, address={self._address!r}, next_seq={self._next_seq!r})"

    @property
    def pending_seq(self) -> Optional[int]:
        """The seq of an input whose answer the client has not got (it gave up, or a stream was
        not read to its end); it is delivered again, with that seq, before the next input."""
        p = self._pending
        if p is None:
            return None
        return p[0] if isinstance(p, tuple) else p.seq

    def _token(self) -> Optional[str]:
        return self.capability or self.client.token

    def _broken(self, e: httpx.TransportError, size: int, breaks: list) -> Optional[OpenGridError]:
        """Counts a broken connection while sending ``size`` bytes; the error to raise when a
        large body keeps breaking connections that were accepted (see :data:`LARGE_BODY`)."""
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)) or size < LARGE_BODY:
            breaks.clear()
            return None
        breaks.append(e)
        if len(breaks) < LARGE_BODY_BREAKS:
            return None
        return PayloadTooLarge(
            413, "body_too_large",
            f"the node broke the connection {len(breaks)} times while a {size}-byte body was sent "
            f"(over its body limit? 1 MiB by default): {e!r}",
            None,
        )

    def _headers(self, **extra: str) -> dict:
        return {**auth(self._token()), **extra}

    def _move(self, location: Optional[str]) -> bool:
        """Switches to ``location``; whether it is a new address."""
        if not location:
            return False
        base = self.client._base(location)
        if base == self._address:
            return False
        self._address = base
        self.moves += 1
        return True

    def _follow(self, location_header: Optional[str], body: Any) -> bool:
        loc = body.get("location") if isinstance(body, dict) else None
        if not loc and location_header:
            u = urlsplit(location_header)
            loc = f"{u.scheme}://{u.netloc}"
        return self._move(loc)

    def _located(self, entry: Any) -> bool:
        """Takes the address of an RC directory entry; whether it changed."""
        addr = entry.get("address") if isinstance(entry, dict) else None
        if not addr:
            return False
        if self._address is None:
            self._address = self.client._base(addr)
            return True
        return self._move(addr)

    def _decide(self, status: int, location_header: Optional[str], body: Any, err: OpenGridError, seq: int) -> tuple[str, int]:
        """What to do about an error answer to input ``seq``."""
        if status in REDIRECTS:
            return (FOLLOWED, 0) if self._follow(location_header, body) else (RELOCATE, 0)
        if status == 429 or status >= 500:
            return RELOCATE, 0
        if (status == 409 and err.code == "fenced") or status == 410:
            # A holder whose epoch a failover superseded: ask the RC, deliver there.
            return RELOCATE, 0
        if status == 409 and err.code == "seq_gap" and isinstance(body, dict):
            expected = body.get("expected")
            if isinstance(expected, int) and not isinstance(expected, bool) and 1 <= expected < seq:
                # A bounded-loss session failed over from a checkpoint older than inputs it had
                # acknowledged (within its manifest's acceptable_loss): renumber from there.
                self.lost += seq - expected
                self._next_seq = expected + 1
                return RENUMBER, expected
        return GIVE_UP, 0

    def _refused(self, seq: int) -> None:
        """Input ``seq`` was refused for good (4xx): not processed, its seq is free again."""
        if isinstance(self._pending, tuple):
            self._pending = None
        self._next_seq = seq

    def _gave_up(self, seq: int, input: JSON) -> None:
        self._pending = (seq, input)
        self._next_seq = seq + 1

    def _reply_of(self, seq: int, body: dict) -> Reply:
        self._move(body.get("moved_to"))
        self._next_seq = max(self._next_seq or 0, seq + 1)
        if body.get("kind") == "duplicate":
            # `retained` says whether the first answer is given; a server that predates it gives
            # it when the answer has `output` or `error`.
            retained = body.get("retained")
            if retained is None:
                retained = "output" in body or "error" in body
            if retained:
                return Reply.from_json(body, duplicate=True)
            raise AnswerNotRetained(seq, body.get("last"), body)
        return Reply.from_json(body)

    # -- streams -------------------------------------------------------------------------------

    def _stream_body(self, sr: "StreamCore") -> dict:
        return {"seq": sr.seq, "input": sr.input, "from": sr._from}

    def _stream_event(self, sr: "StreamCore", event: str, raw: str) -> tuple[str, Any]:
        """One SSE event of ``sr``'s stream: ``("chunk", text)`` (new: deliver it), ``("skip",
        None)``, ``("done", Reply)``, ``("resume", location or None)`` (stop reading; resume from
        the chunk reached, at ``location`` if given, else where the RC says) with the reason in
        ``sr._last``; raises a final error."""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if event == "chunk":
            offset, chunk = data.get("offset"), data.get("chunk")
            if offset == sr._from:
                sr._from += 1
                return "chunk", chunk
            if isinstance(offset, int) and offset < sr._from:
                return "skip", None  # given already
            sr._last = OpenGridError(0, "stream_gap", f"expected chunk {sr._from}: {data}")
            return "resume", None
        if event == "reply":
            return self._stream_reply(sr, data)
        if event == "error":
            st = int(data.get("status") or 0)
            err = error_from(st, data)
            sr._last = err
            if st in REDIRECTS:
                return "resume", data.get("location")
            if st == 429 or st >= 500 or st == 410 or err.code == "fenced":
                return "resume", None
            raise err
        return "skip", None

    def _stream_reply(self, sr: "StreamCore", data: dict) -> tuple[str, Any]:
        kind = data.get("kind")
        moved = data.get("moved_to")
        chunks = data.get("chunks")
        whole = chunks is None or chunks <= sr._from
        if (kind == "duplicate" and not moved) or (kind == "processed" and data.get("complete", True) and whole):
            return "done", self._reply_of(sr.seq, data)
        # Answered by another node (relayed after a handover): resume there.
        sr._last = OpenGridError(0, "incomplete_stream", f"resume at chunk {sr._from}: {data}")
        return "resume", moved


class StreamCore:
    """The state of one streamed reply, shared by ``StreamedReply`` and ``AsyncStreamedReply``."""

    def __init__(self, session: SessionCore, seq: int, input: JSON, check: bool = True):
        self.session = session
        #: The input's seq.
        self.seq = seq
        self.input = input
        self.check = check
        #: Every chunk received so far.
        self.chunks: list[str] = []
        self._from = 0
        self._buffer: deque[str] = deque()
        self._final: Optional[Reply] = None
        self._failed: Optional[OpenGridError] = None
        self._last: Optional[BaseException] = None
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the reply has arrived (or the input was refused)."""
        return self._done

    @property
    def text(self) -> str:
        """The chunks received so far, joined."""
        return "".join(self.chunks)

    def _ended(self) -> None:
        self._done = True
        if self.session._pending is self:
            self.session._pending = None

    def _refused(self, e: OpenGridError) -> None:
        """Refused for good (4xx): not processed, so its seq is free again."""
        self._done = True
        self._failed = e
        if self.session._pending is self:
            self.session._pending = None
            self.session._next_seq = self.seq

    def _result(self) -> Reply:
        from .errors import HandlerError

        if self._failed is not None:
            raise self._failed
        assert self._final is not None
        if self.check and self._final.error is not None:
            raise HandlerError(self._final)
        return self._final
