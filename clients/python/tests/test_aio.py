"""The asyncio client (``opengrid.AsyncClient``) against the same real processes: numbering,
the first answer of a retried seq, a live handover, streams across a cut, typed errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

import opengrid
from conftest import RECORDED, Recorded, assistant_manifest, counter_manifest, parse_sse
from test_streaming import WORDS, words


class AsyncRecording(httpx.AsyncBaseTransport):
    """Records responses (for the OpenAPI check); can lose one answer or cut one stream."""

    def __init__(self, log: list[Recorded] = RECORDED) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.log = log
        self.drop_next_input_reply = False
        self.cut_next_stream_after: int | None = None
        self.fired = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        ctype = resp.headers.get("content-type", "")
        raw = await resp.aread()
        await resp.aclose()
        if "text/event-stream" in ctype:
            cut = self.cut_next_stream_after
            if cut is not None:
                self.cut_next_stream_after = None
                self.fired += 1
                raw = b"\n\n".join(raw.split(b"\n\n")[:cut]) + b"\n\n"
            self.log.append(Recorded(request.method, str(request.url), resp.status_code, ctype, parse_sse(raw)))

            async def body(raw: bytes = raw, cut: Any = cut) -> Any:
                yield raw
                if cut is not None:
                    raise httpx.ReadError("injected: stream cut")

            return httpx.Response(resp.status_code, headers=resp.headers, stream=_AsyncStream(body()), request=request)
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        self.log.append(Recorded(request.method, str(request.url), resp.status_code, ctype, decoded))
        if self.drop_next_input_reply and request.method == "POST" and request.url.path.endswith("/inputs"):
            self.drop_next_input_reply = False
            self.fired += 1
            raise httpx.ReadError("injected: the answer was lost on the way back")
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        return httpx.Response(resp.status_code, headers=headers, content=raw, request=request)


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, gen: Any) -> None:
        self.gen = gen

    async def __aiter__(self):  # type: ignore[override]
        async for part in self.gen:
            yield part


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def make(colony, transport: AsyncRecording, **kw: Any) -> opengrid.AsyncClient:
    return opengrid.AsyncClient(colony.rc_url, http=httpx.AsyncClient(transport=transport, timeout=10), **kw)


def test_async_send_numbering_duplicate_and_handover(colony):
    async def main() -> None:
        t = AsyncRecording()
        async with make(colony, t) as client:
            s = await client.create(counter_manifest())
            assert [(await s.send(n)).output for n in (1, 2, 3)] == [1, 3, 6]
            assert s.next_seq == 4
            # The answer to #4 is lost: the client retries #4 and gets the first answer.
            t.drop_next_input_reply = True
            r = await s.send(10)
            assert t.fired == 1
            assert r.seq == 4 and r.output == 16 and r.duplicate
            # A live handover between sends.
            before = colony.entry(s.id)
            moved = await asyncio.to_thread(colony.handover, s.id)
            r = await s.send(1)
            assert (r.seq, r.output) == (5, 17)
            assert s.address == moved["address"] != before["address"]
            info = await s.info()
            assert info["last_seq"] == 5
            # Attached elsewhere: next seq read from the session.
            other = client.attach(s.id, s.capability)
            assert await other.get_next_seq() == 6
            assert (await other.send(0)).output == 17
            await s.close()
            await t.inner.aclose()

    run(main())


def test_async_stream_across_a_cut(colony, model):
    async def main() -> None:
        t = AsyncRecording()
        async with make(colony, t) as client:
            s = await client.create(assistant_manifest(model))
            t.cut_next_stream_after = 3
            sr = s.stream({"user": WORDS})
            got = [c async for c in sr]
            assert t.fired == 1
            assert got == words(WORDS)
            r = await sr.get_reply()
            assert r.seq == 1 and r.output["answer"] == "echo: " + WORDS and r.chunks == len(got)
            assert sr.reply is r
            assert (await s.send({"status": True})).output["turns"] == 1
            await s.close()
            await t.inner.aclose()

    run(main())


def test_async_typed_errors(colony):
    async def main() -> None:
        t = AsyncRecording()
        async with make(colony, t) as client:
            with pytest.raises(opengrid.Unsatisfiable):
                await client.create(counter_manifest(), jurisdictions=["US"])
            with pytest.raises(opengrid.BadRequest):
                await client.create({"version": 1})
            s = await client.create(counter_manifest())
            with pytest.raises(opengrid.Unauthorized):
                await client.attach(s.id).send(1)
            other = await client.create(counter_manifest())
            thief = opengrid.AsyncSession(client, other.id, s.capability, other.address)
            with pytest.raises(opengrid.Forbidden):
                await thief.send(1)
            assert thief.next_seq == 1
            with pytest.raises(opengrid.PayloadTooLarge):
                await s.send("x" * (20 << 20))
            await s.send(2**62)
            with pytest.raises(opengrid.HandlerError) as e:
                await s.send(2**62)
            assert e.value.code == "overflow" and s.next_seq == 3
            await s.close()
            await other.close()
            await t.inner.aclose()

    run(main())
