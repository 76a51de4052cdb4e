"""The client follows its session: a live handover between sends, and a failover after the
holder is killed with -9 (a zero-loss session: no acknowledged input is lost)."""

from __future__ import annotations

import threading
import time

import pytest

import opengrid
from conftest import counter_manifest
from opengrid.testing import wait_for


def test_follows_live_handovers_between_sends(colony, make_client):
    client = make_client(colony)
    s = client.create(counter_manifest())
    total = 0
    for round in range(4):
        for n in (1, 2, 3):
            total += n
            assert s.send(n).output == total
        before = colony.entry(s.id)
        moved = colony.handover(s.id)
        # The RC's directory follows the handover a moment later.
        after = wait_for("the directory to show the handover",
                         lambda: (e := colony.entry(s.id))["address"] == moved["address"] and e, 10)
        assert after["node_name"] != before["node_name"], (before, moved, after)
        assert after["epoch"] > before["epoch"]
        # The client still points at the old holder: its next input is redirected (307) or
        # relayed (`moved_to`), and the client switches to the new holder.
        assert s.address == before["address"]
        r = s.send(10)
        total += 10
        assert r.output == total and r.seq == 4 * (round + 1)
        assert s.address == after["address"], "switched to the new holder"
        assert s.info()["epoch"] == after["epoch"]
    assert s.moves >= 4
    s.close()


def test_a_handover_during_sends_loses_nothing(colony, make_client):
    client = make_client(colony)
    s = client.create(counter_manifest())
    errors: list[BaseException] = []
    stop = threading.Event()

    def hand_over() -> None:
        try:
            for _ in range(3):
                colony.handover(s.id)
                time.sleep(0.1)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=hand_over)
    t.start()
    total, sent = 0, 0
    deadline = time.monotonic() + 60
    while not (stop.is_set() and sent >= 20):
        assert time.monotonic() < deadline, "the handovers did not finish"
        sent += 1
        total += sent
        r = s.send(sent)
        assert (r.seq, r.output) == (sent, total), r
    t.join(timeout=60)
    assert not errors, errors
    assert s.info()["last_seq"] == sent
    s.close()


def test_follows_a_failover_after_kill_9_without_losing_an_input(colony3, make_client):
    c = colony3
    client = make_client(c, retry_for=60)
    s = client.create(counter_manifest("0s"))
    expected = 0
    for n in range(1, 6):
        expected += n
        assert s.send(n).output == expected
    holder = c.holder(s.id)
    old_address = s.address
    c.kill9(holder)
    # The holder is gone: the client's next input meets a refused connection, asks the RC, and
    # is delivered wherever the session was restored, from its copy with every input in it.
    for n in range(6, 11):
        expected += n
        r = s.send(n)
        assert (r.seq, r.output) == (n, expected), r
    assert s.address != old_address
    assert c.holder(s.id) != holder
    info = s.info()
    assert info["last_seq"] == 10
    assert info["epoch"] > 1
    s.close()


def test_an_input_in_flight_when_the_holder_dies_is_delivered_once(colony3, make_client):
    c = colony3
    client = make_client(c, retry_for=60)
    s = client.create(counter_manifest("0s"))
    s.send(100)
    holder = c.holder(s.id)
    result: dict = {}

    def send() -> None:
        try:
            result["reply"] = s.send(1)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    # Kill the holder, then send at once: whether the input reached it or not, the client
    # retries the same seq on the new holder, and the session counts it once.
    c.kill9(holder)
    t = threading.Thread(target=send)
    t.start()
    t.join(timeout=90)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["reply"].output == 101
    assert s.send(0).output == 101
    s.close()


def test_an_attached_session_finds_its_new_holder(colony3, make_client):
    c = colony3
    s = make_client(c, retry_for=60).create(counter_manifest("0s"))
    s.send(7)
    c.kill9(c.holder(s.id))
    other = make_client(c, retry_for=60).attach(s.id, s.capability)
    r = other.send(1)
    assert (r.seq, r.output) == (2, 8)
    assert other.address == c.entry(s.id)["address"]


def test_deadline_exceeded_keeps_the_input_and_delivers_it_first(colony3, make_client):
    c = colony3
    client = make_client(c, retry_for=60)
    s = client.create(counter_manifest("0s"))
    s.send(1)
    # Too short a deadline to outlive a failover: the client gives up on input #2 …
    client.retry_for = 0.3
    c.kill9(c.holder(s.id))
    with pytest.raises(opengrid.DeadlineExceeded) as e:
        s.send(2)
    assert e.value.seq == 2 and s.pending_seq == 2
    assert s.next_seq == 3, "the seq stays reserved for the input in doubt"
    # … and delivers it (same seq) before the next input once the session is back.
    client.retry_for = 60
    r = s.send(3)
    assert (r.seq, r.output) == (3, 6)
    assert s.recovered is not None and (s.recovered.seq, s.recovered.output) == (2, 3)
    assert s.pending_seq is None
