"""The colony's agents over MCP with the official Python SDK (``mcp``): tools, calls, progress
notifications of a streamed reply, a live handover mid-conversation, resources, hostile input."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

import httpx
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from opengrid.testing import Colony

TIMEOUT = 60


@asynccontextmanager
async def mcp_session(c: Colony, token: Optional[str] = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(f"{c.rc_url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await asyncio.wait_for(s.initialize(), TIMEOUT)
                yield s


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def test_tools_are_the_colonys_agents(colony: Colony):
    async def main():
        async with mcp_session(colony) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"counter", "assistant", "tutor"} <= set(tools), tools.keys()
            assert "wasm" not in tools
            schema = tools["counter"].input_schema
            assert schema["type"] == "object" and schema["required"] == ["input"], schema
            assert "session" in schema["properties"]
            assert tools["counter"].description

    run(main())


def test_a_conversation_keeps_its_state_across_a_live_handover(colony: Colony):
    async def main():
        async with mcp_session(colony) as s:
            totals = []
            for n in (1, 2, 3):
                r = await s.call_tool("counter", {"input": n})
                assert not r.is_error, r
                totals.append(r.structured_content["output"])
            assert totals == [1, 3, 6]
            sid = r.structured_content["session"]
            assert r.structured_content["seq"] == 3
            before = colony.holder(sid)
            await asyncio.to_thread(colony.handover, sid)
            assert colony.holder(sid) != before
            r = await s.call_tool("counter", {"input": 4})
            assert not r.is_error, r
            assert r.structured_content["output"] == 10, "the running total continues on the new holder"
            assert r.structured_content["session"] == sid and r.structured_content["seq"] == 4
            assert r.content[0].text == "10"
            # The session is a resource of this MCP session.
            res = (await s.list_resources()).resources
            assert [str(x.uri) for x in res] == [f"opengrid://sessions/{sid}"]
            info = json.loads((await s.read_resource(res[0].uri)).contents[0].text)
            assert info["session_id"] == sid and info["last_seq"] == 4, info
        # A new MCP session gets a new OpenGrid session.
        async with mcp_session(colony) as s2:
            r = await s2.call_tool("counter", {"input": 5})
            assert r.structured_content["output"] == 5
            assert r.structured_content["session"] != sid

    run(main())


def test_a_streamed_reply_comes_as_progress_notifications(colony: Colony):
    async def main():
        seen: list[tuple[float, Optional[str]]] = []

        async def progress(p: float, total: Optional[float], message: Optional[str]) -> None:
            seen.append((p, message))

        async with mcp_session(colony) as s:
            r = await s.call_tool(
                "assistant", {"input": {"user": "hello there", "chunk_ms": 20}}, progress_callback=progress
            )
            assert not r.is_error, r
            answer = r.structured_content["output"]["answer"]
            assert answer == "echo: hello there and a few more words"
            assert len(seen) == len(answer.split(" ")), seen
            assert [p for p, _ in seen] == list(range(1, len(seen) + 1))
            assert "".join(m or "" for _, m in seen) == answer
            # Without a progress token the same conversation answers whole.
            r = await s.call_tool("assistant", {"input": {"user": "again"}})
            assert r.structured_content["output"]["turn"] == 2

    run(main())


def test_another_mcp_session_needs_the_capability_to_use_a_session(colony: Colony):
    async def main():
        async with mcp_session(colony) as s:
            r = await s.call_tool("counter", {"input": 7})
            sid, cap = r.structured_content["session"], r.structured_content["capability"]
        async with mcp_session(colony) as stranger:
            with pytest.raises(MCPError):
                await stranger.call_tool("counter", {"input": 1, "session": sid})
            with pytest.raises(MCPError):
                await stranger.read_resource(f"opengrid://sessions/{sid}")
        async with mcp_session(colony, token=cap) as holder:
            r = await holder.call_tool("counter", {"input": 1, "session": sid})
            assert r.structured_content["output"] == 8, "re-attached at the session's next seq"
            with pytest.raises(MCPError):
                await holder.call_tool("tutor", {"input": 1, "session": sid})

    run(main())


def test_hostile_input_is_refused(colony: Colony):
    async def main():
        async with mcp_session(colony) as s:
            for name, args in [
                ("no-such-agent", {"input": 1}),
                ("counter", {}),
                ("counter", {"input": 1, "session": 5}),
                ("counter", {"input": 1, "bogus": True}),
                ("counter", {"input": 1, "session": "not a session id"}),
            ]:
                with pytest.raises(MCPError):
                    await s.call_tool(name, args)
            # A handler error is the tool's error result, and the conversation goes on.
            r = await s.call_tool("counter", {"input": "not a number"})
            assert r.is_error and r.structured_content["error"], r
            r = await s.call_tool("counter", {"input": 2})
            assert not r.is_error and r.structured_content["output"] == 2

    run(main())
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    for body in [b"{not json", b"[]", b'{"jsonrpc": "2.0", "id": 1, "method": 5}']:
        r = httpx.post(f"{colony.rc_url}/mcp", content=body, headers=h, timeout=10)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
