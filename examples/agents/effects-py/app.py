"""Durable effects from Python (ADR 0034): the same imports as the Rust SDK's `Ctx`.

Built by scripts/build-agents.sh with componentize-py against the world
`opengrid:agent/agent@0.2.0`, whose `effects` interface is `wit_world.imports.effects`:
`now_ms()`, `random_u64()` and `fetch(HttpRequest)` return their value or raise
`componentize_py_types.Err(AgentError)` with the node's code.

Input: `{}` or `{"url": "http://…"}`. Output: `{"now", "random", "inputs"}`, and with a url the
answer to a POST of `{"now", "random"}` to it: `"status"`, `"body"` (text). A refused or failed
fetch is the agent's error, with the node's code (`fetch`). `init` calls `now_ms()`, which the node
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
