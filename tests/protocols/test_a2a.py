"""The colony's agents over A2A with the official Python SDK (``a2a-sdk``, A2A 1.0 JSON-RPC):
agent cards, messages and streams as session inputs, a task that survives a kill -9 of its
holder, cancel, hostile input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Optional

import httpx
import pytest
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, ClientFactory
from a2a.types import CancelTaskRequest, GetTaskRequest, SendMessageRequest, TaskState
from a2a.utils.errors import A2AError, UnsupportedOperationError
from google.protobuf.json_format import MessageToDict, ParseDict

from opengrid.testing import Colony, http

TIMEOUT = 60


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def message(data: Any = None, text: Optional[str] = None, task: Optional[str] = None) -> SendMessageRequest:
    parts = [{"data": data}] if data is not None else [{"text": text}]
    m: dict[str, Any] = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": parts}
    if task:
        m["taskId"] = task
    return ParseDict({"message": m}, SendMessageRequest())


class Agent:
    """An a2a-sdk client of one agent of the colony, with ``token`` as its bearer."""

    def __init__(self, c: Colony, agent: str, token: Optional[str] = None, streaming: bool = False):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(timeout=TIMEOUT, headers=headers)
        self.base = f"{c.rc_url}/a2a/{agent}"
        self.streaming = streaming

    async def __aenter__(self) -> "Agent":
        self.card = await A2ACardResolver(self.http, self.base).get_agent_card()
        cfg = ClientConfig(streaming=self.streaming, httpx_client=self.http)
        self.client = ClientFactory(cfg).create(self.card)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def send(self, req: SendMessageRequest) -> list:
        return [e async for e in self.client.send_message(req)]

    async def task(self, req: SendMessageRequest) -> dict:
        events = await self.send(req)
        assert len(events) == 1 and events[0].HasField("task"), events
        return MessageToDict(events[0].task)


def output(task: dict) -> Any:
    parts = task["artifacts"][-1]["parts"]
    return next(p["data"] for p in parts if "data" in p)


def test_agent_cards(colony: Colony):
    async def main():
        async with httpx.AsyncClient(timeout=TIMEOUT) as h:
            card = await A2ACardResolver(h, f"{colony.rc_url}/a2a/counter").get_agent_card()
            assert card.name == "counter" and card.capabilities.streaming
            iface = card.supported_interfaces[0]
            assert (iface.url, iface.protocol_binding, iface.protocol_version) == (
                f"{colony.rc_url}/a2a/counter",
                "JSONRPC",
                "1.0",
            )
            assert [s.id for s in card.skills] == ["counter"]
            assert "opengrid" in card.security_schemes
            root = await A2ACardResolver(h, colony.rc_url).get_agent_card()
            assert root.name == "assistant", "the first agent by name"
        assert http("GET", f"{colony.rc_url}/a2a/nope/.well-known/agent-card.json")[0] == 404

    run(main())


def test_a_task_survives_a_kill_9_of_its_holder(colony: Colony):
    async def main():
        async with Agent(colony, "counter") as anon:
            t = await anon.task(message(data=5))
        tid = t["id"]
        assert t["status"]["state"] == "TASK_STATE_INPUT_REQUIRED" and output(t) == 5
        assert t["contextId"] == tid and t["metadata"]["opengrid"]["session"] == tid
        cap = t["metadata"]["opengrid"]["capability"]
        async with Agent(colony, "counter", token=cap) as me:
            t = await me.task(message(text="6", task=tid))
            assert output(t) == 11 and t["id"] == tid
            holder = colony.holder(tid)
            colony.kill9(holder)
            try:
                t = await me.task(message(data=1, task=tid))
                assert output(t) == 12, "the conversation continues from the replicated state"
                assert colony.holder(tid) != holder
                got = MessageToDict(await me.client.get_task(GetTaskRequest(id=tid)))
                assert got["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
                assert got["metadata"]["opengrid"]["info"]["last_seq"] == 3
                assert output(got) == 12
                done = MessageToDict(await me.client.cancel_task(CancelTaskRequest(id=tid)))
                assert done["status"]["state"] == "TASK_STATE_CANCELED"
                got = await me.client.get_task(GetTaskRequest(id=tid))
                assert got.status.state == TaskState.TASK_STATE_CANCELED
                with pytest.raises(UnsupportedOperationError):
                    await me.task(message(data=1, task=tid))
            finally:
                await asyncio.to_thread(colony.start_node, holder)
                await asyncio.to_thread(colony.wait_alive, 3)

    run(main())


def test_a_streamed_message_gives_chunks_then_the_status(colony: Colony):
    async def main():
        async with Agent(colony, "assistant", streaming=True) as anon:
            events = await anon.send(message(data={"user": "stream this", "chunk_ms": 20}))
        first = MessageToDict(events[0].task)
        assert first["status"]["state"] == "TASK_STATE_WORKING"
        tid, cap = first["id"], first["metadata"]["opengrid"]["capability"]
        chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
        streamed = [c for c in chunks if c.artifact.name == "stream"]
        answer = "echo: stream this and a few more words"
        assert "".join(c.artifact.parts[0].text for c in streamed) == answer
        assert [c.append for c in streamed] == [False] + [True] * (len(streamed) - 1)
        reply = MessageToDict(chunks[-1].artifact)
        assert chunks[-1].last_chunk and reply["parts"][1]["data"]["answer"] == answer
        last = events[-1]
        assert last.HasField("status_update")
        assert last.status_update.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        async with Agent(colony, "assistant", token=cap, streaming=True) as me:
            events = await me.send(message(data={"user": "more"}, task=tid))
            assert events[-1].status_update.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            final = [e.artifact_update for e in events if e.HasField("artifact_update")][-1]
            assert MessageToDict(final.artifact)["parts"][1]["data"]["turn"] == 2

    run(main())


def test_hostile_requests_are_refused(colony: Colony):
    async def main():
        async with Agent(colony, "counter") as anon:
            a = await anon.task(message(data=1))
            b = await anon.task(message(data=100))
            # Someone else's task without a capability, and with another task's capability.
            with pytest.raises(A2AClientError):
                await anon.task(message(data=1, task=a["id"]))
        cap_b = b["metadata"]["opengrid"]["capability"]
        async with Agent(colony, "counter", token=cap_b) as other:
            with pytest.raises(A2AClientError):
                await other.task(message(data=1, task=a["id"]))
            with pytest.raises((A2AClientError, A2AError)):
                await other.client.get_task(GetTaskRequest(id=a["id"]))
            with pytest.raises(A2AClientError):
                await other.client.cancel_task(CancelTaskRequest(id=a["id"]))
        cap_a = a["metadata"]["opengrid"]["capability"]
        async with Agent(colony, "counter", token=cap_a) as owner:
            t = await owner.task(message(data=1, task=a["id"]))
            assert output(t) == 2, "the refused messages did not reach the session"

    run(main())
    url = f"{colony.rc_url}/a2a/counter"

    def rpc(body: Any, raw: bool = False, token: Optional[str] = None) -> tuple[int, dict]:
        h = {"content-type": "application/json"}
        if token:
            h["authorization"] = f"Bearer {token}"
        r = httpx.post(url, content=body if raw else None, json=None if raw else body, headers=h, timeout=10)
        return r.status_code, r.json()

    assert rpc(b"{nope", raw=True)[1]["error"]["code"] == -32700
    assert rpc([])[1]["error"]["code"] == -32600
    assert rpc({"jsonrpc": "2.0", "id": 1})[1]["error"]["code"] == -32600
    assert rpc({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {}})[1]["error"]["code"] == -32601
    assert rpc({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {}}})[1]["error"]["code"] == -32602
    code, body = rpc({"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": "s-unknown"}}, token=colony.token)
    assert body["error"]["code"] in (-32001, -32600), body
    code, body = rpc({"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "x"}})
    assert code == 401 and body["id"] == 3, body
    r = httpx.post(f"{colony.rc_url}/a2a/nope", json={"jsonrpc": "2.0", "id": 1, "method": "GetTask"}, timeout=10)
    assert r.status_code == 404
