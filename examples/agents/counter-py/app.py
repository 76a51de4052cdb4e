"""The counter agent in Python (ADR 0028): the same semantics as examples/agents/counter-rs.

State is JSON (the running total), input a JSON number, output the new total. Built into a
component by scripts/build-agents.sh with componentize-py against actors/wasm/wit.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.guest import Handled
from wit_world.imports import host
from wit_world.imports.types import AgentError, Level


class Guest(exports.Guest):
    def init(self, session: str) -> bytes:
        return json.dumps(0).encode()

    def handle(self, state: bytes, input: str) -> Handled:
        total = json.loads(state)
        try:
            add = json.loads(input)
        except ValueError as e:
            raise Err(AgentError("bad_input", f"input is not JSON: {e}"))
        # bool is an int in Python; JSON true is not a number here (as in the Rust agent).
        if not isinstance(add, int) or isinstance(add, bool) or add < 0:
            raise Err(AgentError("bad_input", "a number"))
        total += add
        host.log(Level.DEBUG, f"seq {host.seq()}: total {total}")
        return Handled(json.dumps(total).encode(), json.dumps(total))
