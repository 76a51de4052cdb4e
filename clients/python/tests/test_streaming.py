"""Streamed replies (SSE): the ``assistant`` handler streams its answer word by word (it asks
this test's stub model). Each chunk is delivered once, in order, across a cut connection, a live
handover mid-stream and a kill -9 of the holder mid-stream."""

from __future__ import annotations

import threading

import pytest

import opengrid
from conftest import assistant_manifest
from opengrid.testing import wait_for

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"


def words(text: str) -> list[str]:
    out = ("echo: " + text).split(" ")
    return [w + " " for w in out[:-1]] + [out[-1]]


def test_stream_gives_chunks_then_the_reply(colony, make_client, model):
    s = make_client(colony).create(assistant_manifest(model))
    sr = s.stream({"user": WORDS})
    got = list(sr)
    assert got == words(WORDS)
    r = sr.reply
    assert r.seq == 1 and r.output["answer"] == "echo: " + WORDS
    assert r.chunks == len(got) and r.complete is True
    assert sr.text == r.output["answer"]
    # The iterator's own end carries the reply too.
    sr2 = s.stream({"user": "one two"})
    it = iter(sr2)
    chunks = []
    with pytest.raises(StopIteration) as stop:
        while True:
            chunks.append(next(it))
    assert chunks == words("one two")
    assert stop.value.value.seq == 2
    # Streamed and plain inputs share the numbering.
    assert s.send({"status": True}).seq == 3
    s.close()


def test_stream_resumes_after_a_cut_connection(colony, make_client, model, faults):
    s = make_client(colony).create(assistant_manifest(model))
    # The first stream is cut after 4 events: the client posts the input again (same seq) with
    # "from": 4 and gets the rest.
    faults.rules.append((lambda rq: rq.headers.get("accept") == "text/event-stream", ("cut_stream", 4)))
    sr = s.stream({"user": WORDS, "chunk_ms": 20})
    got = list(sr)
    assert faults.fired, "the cut happened"
    assert got == words(WORDS), "each chunk once, in order"
    assert sr.reply.output["turn"] == 1, "the input was handled once"
    assert s.send({"status": True}).output["turns"] == 1
    s.close()


def test_stream_resumes_after_repeated_cuts(colony, make_client, model, faults):
    s = make_client(colony).create(assistant_manifest(model))
    for n in (2, 1, 3):
        faults.rules.append((lambda rq: rq.headers.get("accept") == "text/event-stream", ("cut_stream", n)))
    got = list(s.stream({"user": WORDS, "chunk_ms": 10}))
    assert len(faults.fired) == 3
    assert got == words(WORDS)
    s.close()


def test_streams_lose_and_repeat_nothing_across_racing_handovers(colony, make_client, model):
    # Handovers move the session back and forth while streamed replies go on: a handover waits
    # for the step in progress, so streams meet it when their input is queued or relayed
    # (`complete: false`, `moved_to`) or when they are redirected (307): the client resumes from
    # its offset on the new holder.
    s = make_client(colony).create(assistant_manifest(model))
    stop = threading.Event()
    moves = [0]
    err: list = []

    def hand_over() -> None:
        try:
            while not stop.is_set() and moves[0] < 100:  # bounded
                colony.handover(s.id)
                moves[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            err.append(e)

    t = threading.Thread(target=hand_over)
    t.start()
    try:
        turns = 0
        for i in range(150):
            text = f"turn {i} of the stream test with several words"
            sr = s.stream({"user": text})
            got = list(sr)
            assert got == words(text), f"turn {i}: each chunk once, in order: {got}"
            assert sr.reply.output["answer"] == "echo: " + text
            turns = sr.reply.output["turn"]
            assert turns == i + 1, f"turn {i} handled once: {sr.reply}"
            if moves[0] >= 10 and s.moves >= 3:
                break
    finally:
        stop.set()
        t.join(timeout=120)
    assert not err, err
    assert moves[0] >= 3, f"handovers raced the streams: {moves[0]}"
    assert s.moves >= 3, f"the client followed the session: {s.moves} moves"
    assert s.send({"status": True}).output["turns"] == turns
    wait_for("the client and the directory to agree", lambda: s.address == colony.entry(s.id)["address"], 10)
    s.close()


def test_stream_survives_kill_9_of_the_holder(colony3, make_client, model):
    c = colony3
    s = make_client(c, retry_for=60).create(assistant_manifest(model))
    assert s.send({"user": "warm up"}).output["turn"] == 1
    text = " ".join([WORDS] * 2)
    sr = s.stream({"user": text, "chunk_ms": 100})
    got = [next(sr) for _ in range(3)]
    holder = c.holder(s.id)
    c.kill9(holder)
    got += list(sr)
    assert got == words(text), "each chunk once, in order, across the failover"
    r = sr.reply
    assert r.output["answer"] == "echo: " + text and r.output["turn"] == 2
    assert c.holder(s.id) != holder
    assert s.moves >= 1, "the stream was resumed on the new holder"
    # The model was asked once for that turn (the answer came from the journal after the kill).
    assert model.counts.get(f"{s.id}:2:0") == 1, model.counts
    s.close()


def test_an_unfinished_stream_is_finished_before_the_next_input(colony, make_client, model):
    s = make_client(colony).create(assistant_manifest(model))
    sr = s.stream({"user": "a b c d"})
    first = next(sr)
    sr.close()  # drop the connection mid-stream
    r = s.send({"status": True})
    assert r.seq == 2 and r.output["turns"] == 1
    assert sr.done
    assert [first] + list(sr) == words("a b c d"), "the rest is kept for the reader"
    s.close()


def test_stream_errors_are_typed(colony, make_client, model):
    client = make_client(colony)
    s = client.create(assistant_manifest(model))
    sr = s.stream("not an object")
    with pytest.raises(opengrid.HandlerError) as e:
        list(sr)
    assert e.value.code == "bad_input"
    assert s.next_seq == 2, "processed (with an error): its seq is used"
    sr = s.stream({"user": "x"}, check=False)
    list(sr)
    assert sr.reply.ok
    other = client.create(assistant_manifest(model))
    thief = opengrid.Session(client, other.id, s.capability, other.address)
    with pytest.raises(opengrid.Forbidden):
        list(thief.stream({"user": "x"}))
    assert thief.next_seq == 1, "refused: the seq is free again"
    s.close()
    other.close()


def test_words_streams_its_input_without_a_model(colony, make_client):
    s = make_client(colony).create(handler="words", jurisdictions=["DE"])
    sr = s.stream("one two three")
    assert list(sr) == ["one ", "two ", "three"]
    assert sr.reply.output == {"words": 3, "total": 3} and sr.reply.chunks == 3
    sr = s.stream({"text": "four five", "chunk_ms": 10})
    assert sr.finish().output == {"words": 2, "total": 5}
    assert list(sr) == ["four ", "five"], "finish() keeps the chunks for the reader"
    with pytest.raises(opengrid.HandlerError) as e:
        list(s.stream({"nope": 1}))
    assert e.value.code == "bad_input"
    s.close()
