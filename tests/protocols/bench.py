"""Latency of one input to the `counter` handler, in one colony: the session API directly
(``/v1/sessions/{id}/inputs``, plain httpx) vs an
MCP ``tools/call`` (official ``mcp`` SDK) vs an A2A ``SendMessage`` (official ``a2a-sdk``), each a
follow-up input of one conversation, sequential.

    OPENGRID_BIN=$CARGO_TARGET_DIR/release/opengrid PYTHONPATH=clients/python/src \
        /root/.cache/opengrid-venv/bin/python tests/protocols/bench.py --count 200 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opengrid.testing import Colony, http  # noqa: E402

MANIFEST = {
    "version": 1,
    "session": {"handler": "counter", "continuity": "interactive"},
    "placement": {"jurisdictions": ["DE"]},
    "migration": {"cost": "cheap", "acceptable_loss": "0s", "max_blackout": "200ms"},
}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def timed(n: int, warmup: int, one: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(warmup):
        await one()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await one()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def direct(c: Colony, n: int, warmup: int) -> tuple[list[float], str]:
    code, p = http("POST", f"{c.rc_url}/v1/sessions", MANIFEST)
    assert code == 201, (code, p)
    h = {"authorization": f"Bearer {p['capability']}"}
    seq = 0
    async with httpx.AsyncClient(timeout=30, headers=h) as cl:
        base = f"{p['address']}/v1/sessions/{p['session_id']}/inputs"
        probe = await cl.post(base, json={"seq": 1, "input": 1})
        assert probe.status_code == 200, probe.text
        seq = 1

        async def one():
            nonlocal seq
            seq += 1
            r = await cl.post(base, json={"seq": seq, "input": 1})
            assert r.status_code == 200 and r.json()["output"] == seq, r.text

        return await timed(n, warmup, one), base


async def mcp(c: Colony, n: int, warmup: int) -> list[float]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(f"{c.rc_url}/mcp") as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()

            async def one():
                r = await s.call_tool("counter", {"input": 1})
                assert not r.is_error, r

            return await timed(n, warmup, one)


async def a2a(c: Colony, n: int, warmup: int) -> list[float]:
    from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
    from a2a.types import SendMessageRequest
    from google.protobuf.json_format import MessageToDict, ParseDict

    def msg(task=None):
        m = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"data": 1}]}
        if task:
            m["taskId"] = task
        return ParseDict({"message": m}, SendMessageRequest())

    async with httpx.AsyncClient(timeout=30) as h:
        card = await A2ACardResolver(h, f"{c.rc_url}/a2a/counter").get_agent_card()
        first = [e async for e in ClientFactory(ClientConfig(streaming=False, httpx_client=h)).create(card).send_message(msg())]
        t = MessageToDict(first[0].task)
        tid, cap = t["id"], t["metadata"]["opengrid"]["capability"]
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {cap}"}) as h:
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=h)).create(card)

        async def one():
            async for e in client.send_message(msg(tid)):
                assert e.HasField("task"), e

        return await timed(n, warmup, one)


async def main(count: int, warmup: int) -> dict:
    with Colony(nodes=2) as c:
        d, _ = await direct(c, count, warmup)
        m = await mcp(c, count, warmup)
        a = await a2a(c, count, warmup)
    res = {"count": count, "handler": "counter", "direct_path": "/v1/sessions/{id}/inputs"}
    for name, xs in (("direct", d), ("mcp", m), ("a2a", a)):
        res[name] = {"p50_ms": round(pct(xs, 50), 3), "p99_ms": round(pct(xs, 99), 3)}
    for name in ("mcp", "a2a"):
        res[f"{name}_over_direct"] = {
            k: round(res[name][k] / res["direct"][k], 2) for k in ("p50_ms", "p99_ms")
        }
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="measured inputs per path (1..10000)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    o = ap.parse_args()
    if not 1 <= o.count <= 10000:
        ap.error("--count must be in 1..10000")
    r = asyncio.run(asyncio.wait_for(main(o.count, max(0, min(o.warmup, 1000))), 900))
    if o.json:
        print(json.dumps(r))
    else:
        for k in ("direct", "mcp", "a2a"):
            print(f"{k:>7}: p50 {r[k]['p50_ms']:8.3f} ms  p99 {r[k]['p99_ms']:8.3f} ms")
        for k in ("mcp", "a2a"):
            x = r[f"{k}_over_direct"]
            print(f"{k}/direct: p50 x{x['p50_ms']}  p99 x{x['p99_ms']}")
