"""Fixtures of the MCP and A2A gateway tests (ADR 0036): a colony of real ``opengrid`` processes
(``$OPENGRID_BIN``) whose nodes' ``assistant`` handler talks to a stub OpenAI-compatible model,
so that a turn streams chunks.

    OPENGRID_BIN=$CARGO_TARGET_DIR/release/opengrid PYTHONPATH=clients/python/src \
        /root/.cache/opengrid-venv/bin/python -m pytest -q tests/protocols
"""

from __future__ import annotations

from typing import Iterator

import pytest

from opengrid.testing import Colony, EchoModel


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    """``host:port`` of a stub chat-completions endpoint answering ``echo: <message> and a few
    more words`` (enough words for a streamed reply)."""
    m = EchoModel(suffix=" and a few more words")
    yield m.host
    m.close()


@pytest.fixture(scope="module")
def colony(model: str) -> Iterator[Colony]:
    """An RC with the gateway on and three nodes (zero-loss sessions replicate to two others,
    so a kill -9 of a holder fails its sessions over with their state)."""
    with Colony(
        nodes=3,
        rc_extra=f'[gateway]\negress_hosts = ["{model}"]\n',
        env={"ASSISTANT_MODEL_URL": f"http://{model}/v1"},
    ) as c:
        yield c
