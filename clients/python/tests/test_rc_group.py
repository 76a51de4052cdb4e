"""The client of an RC group (ADR 0037): three RC replicas on one Raft log, nodes that know every
replica, clients given every replica (or one follower).

- kill -9 of the leader while sessions are sent inputs: no input fails, every total continues, a
  session created after the kill is placed by the new leader (sync and asyncio);
- a client given one follower follows its ``307 not_leader`` to the leader and stays there;
- the decisions about the replicas' answers against a scripted transport: ``no_leader`` (next
  replica), ``rejoining`` (same replica again), a refused connection (next), a connection broken
  after the request may have been sent (resent elsewhere only when that replica is gone).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Optional

import httpx
import pytest

import opengrid
from conftest import GROUP_RECORDED, counter_manifest
from opengrid.testing import Colony, wait_for
from test_aio import AsyncRecording


@pytest.fixture
def group() -> Colony:
    """A colony whose RC is a group of three replicas, with three nodes (a zero-loss session
    keeps a copy beyond its holder)."""
    with Colony(nodes=3, rc_group=3) as c:
        yield c


class Load(threading.Thread):
    """Sends inputs to ``sessions`` one after another until stopped, checking every running
    total; counts the acknowledged inputs and keeps every failure."""

    def __init__(self, sessions: list[opengrid.Session]):
        super().__init__(daemon=True)
        self.sessions = sessions
        self.totals = {s.id: 0 for s in sessions}
        self.sent = {s.id: 0 for s in sessions}
        self.acked = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and not self.failures:
            for s in self.sessions:
                n = self.sent[s.id] + 1
                try:
                    r = s.send(n)
                except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                    self.failures.append(f"input {n} to {s.id}: {e!r}")
                    return
                self.sent[s.id] = n
                self.totals[s.id] += n
                if (r.seq, r.output) != (n, self.totals[s.id]):
                    self.failures.append(f"input {n} to {s.id}: {r} (total {self.totals[s.id]})")
                    return
                self.acked += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=120)
        assert not self.is_alive(), "the load did not stop"


def test_a_client_of_every_replica_loses_nothing_when_the_leader_is_killed(group, make_client):
    c = group
    placer = make_client(c, rc=",".join(c.rc_urls), retry_for=60)
    loader = make_client(c, rc=",".join(c.rc_urls), retry_for=60)
    sessions = [loader.create(counter_manifest("0s")) for _ in range(3)]
    first = placer.create(counter_manifest("0s"))  # each client is used by one thread
    assert first.send(1).output == 1
    load = Load(sessions)
    load.start()
    wait_for("inputs acknowledged before the kill", lambda: load.acked >= 30 or load.failures, 60)

    old = c.leader()
    assert placer.rc_url == loader.rc_url == c.rc_url_of(old), "a client remembers the replica that answered"
    c.kill9(old)
    killed = time.monotonic()
    # The placer last spoke to the killed leader: it finds the new one (a refused or broken
    # connection to a replica that is gone, then a follower's not_leader or no_leader) and is
    # placed there.
    placed = placer.create(counter_manifest("0s"))
    placing = time.monotonic() - killed
    new = c.leader()
    assert new != old, "a new replica leads"
    assert placer.rc_url == c.rc_url_of(new), (placer.rc_url, c.rc_urls, new)
    assert placed.send(7).output == 7
    assert first.send(2).output == 3
    assert placer.locate(placed.id, placed.capability)["address"] == placed.address

    before = load.acked
    wait_for("inputs acknowledged under the new leader", lambda: load.acked >= before + 60 or load.failures, 60)
    load.stop()
    assert load.failures == [], load.failures
    print(f"\n{load.acked} inputs acknowledged, none failed; placed again {placing:.2f}s after the kill")

    # Every total continues where it was: the next input adds to it.
    for s in sessions:
        n = load.sent[s.id] + 1
        assert s.send(n).output == load.totals[s.id] + n
        assert s.info()["last_seq"] == n
    # The new leader's directory has every session.
    ids = {e["session_id"] for e in c.status(new)["sessions"] if e.get("state") == "active"}
    assert {s.id for s in sessions} | {placed.id} <= ids


def test_a_client_given_one_follower_follows_not_leader_to_the_leader(group, make_client):
    c = group
    leader = c.leader()
    follower = c.followers()[0]
    client = make_client(c, rc=c.rc_url_of(follower))
    s = client.create(counter_manifest("0s"))
    assert client.rc_url == c.rc_url_of(leader), "the leader it was sent to is remembered"
    assert client.rc_urls == [c.rc_url_of(follower), c.rc_url_of(leader)]
    assert [s.send(n).output for n in (2, 3)] == [2, 5]
    assert client.locate(s.id, s.capability)["address"] == s.address
    redirects = [
        r for r in GROUP_RECORDED
        if r.status == 307 and isinstance(r.body, dict) and r.body.get("code") == "not_leader"
        and r.url.startswith(c.rc_url_of(follower))
    ]
    assert redirects, "the follower answered not_leader"
    assert redirects[-1].body["location"] == c.rc_url_of(leader)
    # Another client of that follower, attached to the session, finds it through the leader.
    other = make_client(c, rc=c.rc_url_of(follower)).attach(s.id, s.capability)
    assert other.send(4).output == 9
    s.close()


def test_the_asyncio_client_loses_nothing_when_the_leader_is_killed(group):
    c = group

    async def main() -> None:
        http = httpx.AsyncClient(transport=AsyncRecording(GROUP_RECORDED), timeout=10)
        async with opengrid.AsyncClient(list(c.rc_urls), http=http, retry_for=60) as client:
            sessions = [await client.create(counter_manifest("0s")) for _ in range(2)]
            totals = {s.id: 0 for s in sessions}
            old = c.leader()
            for n in range(1, 41):
                if n == 10:
                    c.kill9(old)
                for s in sessions:
                    totals[s.id] += n
                    r = await s.send(n)
                    assert (r.seq, r.output) == (n, totals[s.id]), r
            placed = await client.create(counter_manifest("0s"))
            new = c.leader()
            assert new != old
            assert client.rc_url == c.rc_url_of(new)
            assert (await placed.send(5)).output == 5
            assert (await client.locate(placed.id, placed.capability))["address"] == placed.address
        await http.aclose()

    asyncio.run(main())


# -- the decisions, against a scripted transport --------------------------------------------------

A, B, C = "http://a:1", "http://b:2", "http://c:3"
PLACED = {"session_id": "s-1", "node": "did:x", "node_name": "n1", "address": "http://n1:9", "epoch": 1}


def scripted(answers: dict[str, list[Any]], health: Optional[Callable[[str], bool]] = None):
    """A transport answering each base URL's ``POST /v1/sessions`` with its next scripted answer
    (``(status, body)`` or an exception); ``GET /health`` answers 200 where ``health`` says so
    (every base by default), else the connection is refused. Keeps the order of the requests."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        seen.append(f"{request.method} {base}{request.url.path}")
        if request.url.path == "/health":
            if health is None or health(base):
                return httpx.Response(200, json={"status": "ok"})
            raise httpx.ConnectError("refused", request=request)
        a = answers[base].pop(0)
        if isinstance(a, Exception):
            raise a
        status, body = a
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle), seen


def client_of(transport: httpx.MockTransport, rc: Any = f"{A},{B},{C}", retry_for: float = 5) -> opengrid.Client:
    return opengrid.Client(rc, http=httpx.Client(transport=transport), retry_for=retry_for)


def test_no_leader_asks_the_next_replica_and_rejoining_the_same_again():
    t, seen = scripted({
        A: [(503, {"code": "no_leader", "message": "election"})],
        B: [(503, {"code": "rejoining", "message": "wait"}), (201, PLACED)],
    })
    client = client_of(t)
    s = client.create(handler="counter", jurisdictions=["DE"])
    assert s.id == "s-1"
    assert seen == [f"POST {A}/v1/sessions", f"POST {B}/v1/sessions", f"POST {B}/v1/sessions"]
    assert client.rc_url == B


def test_a_refused_connection_asks_the_next_replica():
    t, seen = scripted({A: [httpx.ConnectError("refused")], B: [(201, PLACED)]})
    client = client_of(t, rc=[A, B, C])
    client.create(handler="counter", jurisdictions=["DE"])
    assert seen == [f"POST {A}/v1/sessions", f"POST {B}/v1/sessions"]
    assert client.rc_url == B


def test_not_leader_is_followed_to_a_leader_not_given():
    t, seen = scripted({
        A: [(307, {"code": "not_leader", "location": C, "url": f"{C}/v1/sessions", "message": "x"})],
        C: [(201, PLACED)],
    })
    client = client_of(t, rc=A)
    client.create(handler="counter", jurisdictions=["DE"])
    assert seen == [f"POST {A}/v1/sessions", f"POST {C}/v1/sessions"]
    assert (client.rc_url, client.rc_urls) == (C, [A, C])


def test_a_broken_request_to_a_live_replica_is_not_sent_again():
    # The RC may have placed the session: a new placement is not sent to another replica.
    t, seen = scripted({A: [httpx.ReadError("cut")], B: [(201, PLACED)]})
    with pytest.raises(opengrid.Unavailable):
        client_of(t).create(handler="counter", jurisdictions=["DE"])
    assert seen == [f"POST {A}/v1/sessions", f"GET {A}/health"]


def test_a_broken_request_to_a_replica_that_is_gone_goes_to_the_next():
    t, seen = scripted({A: [httpx.ReadError("cut")], B: [(201, PLACED)]}, health=lambda base: base != A)
    client = client_of(t)
    client.create(handler="counter", jurisdictions=["DE"])
    assert seen == [f"POST {A}/v1/sessions", f"GET {A}/health", f"POST {B}/v1/sessions"]


def test_a_group_without_a_leader_ends_at_the_deadline():
    no_leader = (503, {"code": "no_leader", "message": "election"})
    t, seen = scripted({u: [no_leader] * 100 for u in (A, B, C)})
    started = time.monotonic()
    with pytest.raises(opengrid.DeadlineExceeded):
        client_of(t, retry_for=0.5).create(handler="counter", jurisdictions=["DE"])
    assert time.monotonic() - started < 2
    assert {s.split("/v1")[0] for s in seen} == {f"POST {u}" for u in (A, B, C)}
