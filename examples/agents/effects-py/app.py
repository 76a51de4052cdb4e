"""Durable effects from Python (ADR 0034): the same imports as the Rust SDK's `Ctx`.

Built by scripts/build-agents.sh with componentize-py against the world
`opengrid:agent/agent@0.2.0`, whose `effects` interface is `wit_world.imports.effects`:
`now_ms()`, `random_u64()` and `fetch(HttpRequest)` return their value or raise
`componentize_py_types.Err(AgentError)` with the node's code.

Input: `{}`, `{"url": "http://…"}`, `{"emit": ["chunk", …]}`, `{"after_ms": n}` or a mix.
Output: `{"now", "random", "source", "inputs"}`; with a url the answer to a POST of
`{"now", "random", "source"}` to it: `"status"`, `"body"` (text); with `emit` the chunks are streamed
(`effects.emit`) and their offsets answered as `"offsets"`; with `after_ms` a timer
(`effects.schedule`) brings `{}` back then, its id answered as `"timer"`. A refused or failed
effect is the agent's error, with the node's code (`fetch`, …). `init` calls `now_ms()`, which the node
refuses there, and keeps what it said in the state.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.guest import Handled
from wit_world.imports import effects
from wit_world.imports.types import AgentError


class Guest(exports.Guest):
    def init(self, session: str) -> bytes:
        try:
            init_now = f"ok: {effects.now_ms()}"
        except Err as e:
            init_now = f"{e.value.code}: {e.value.message}"
        return json.dumps({"inputs": 0, "init_now": init_now}).encode()

    def handle(self, state: bytes, input: str) -> Handled:
        st = json.loads(state)
        try:
            req = json.loads(input)
        except ValueError as e:
            raise Err(AgentError("bad_input", f"input is not JSON: {e}"))
        if not isinstance(req, dict):
            raise Err(AgentError("bad_input", "expected {} or {\"url\": \"…\"}"))
        # Effects raise Err(AgentError): uncaught, it is the agent's error, with the node's code.
        out = {"now": effects.now_ms(), "random": effects.random_u64()}
        src = effects.source()
        if isinstance(src, effects.InputSource_Client):
            out["source"] = {"client": src.value}
        elif isinstance(src, effects.InputSource_Timer):
            out["source"] = {"timer": src.value}
        elif isinstance(src, effects.InputSource_Call):
            out["source"] = {"call": src.value}
        if "emit" in req:
            out["offsets"] = [effects.emit(str(c)) for c in req["emit"]]
        if "after_ms" in req:
            out["timer"] = effects.schedule(effects.When_AfterMs(int(req["after_ms"])), "{}")
        if "url" in req:
            body = json.dumps(out).encode()
            headers = [("content-type", "application/json")]
            r = effects.fetch(effects.HttpRequest("POST", req["url"], headers, body))
            out["status"] = r.status
            out["body"] = r.body.decode(errors="replace")
        st["inputs"] += 1
        out["inputs"] = st["inputs"]
        out["init_now"] = st["init_now"]
        return Handled(json.dumps(st).encode(), json.dumps(out))
