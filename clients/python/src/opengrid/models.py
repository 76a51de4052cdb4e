"""The API's answers as dataclasses: :class:`Placement` (a created session) and :class:`Reply`
(the answer to one input)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Placement:
    """Where the RC placed a session (the ``201`` answer of ``POST /v1/sessions``)."""

    session_id: str
    #: The session's capability: the bearer token its requests carry.
    capability: Optional[str]
    #: Base URL of the node's API (no ``/v1``).
    address: str
    #: The node's DID.
    node: str
    node_name: str
    epoch: int
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict) -> "Placement":
        return cls(
            session_id=str(body["session_id"]),
            capability=body.get("capability"),
            address=str(body.get("address") or ""),
            node=str(body.get("node") or ""),
            node_name=str(body.get("node_name") or ""),
            epoch=int(body.get("epoch") or 0),
            raw=body,
        )


@dataclass(frozen=True)
class Reply:
    """The answer to one input.

    ``output`` is the handler's answer, or ``error`` (``{"code", "message"}``) when the handler
    failed on this input (``Session.send`` raises :class:`~opengrid.HandlerError` then, unless
    ``check=False``). ``duplicate`` is true when the input had been processed before (a retry with
    the same seq) and this is the first processing's answer. ``durable``/``copies``/``not_durable``
    say how safe the state including this input is; ``moved_to`` is set when the session moved
    while answering (the client follows it). ``chunks``/``complete`` are set for a streamed reply.
    """

    seq: int
    output: Any = None
    error: Optional[dict] = None
    durable: bool = False
    copies: int = 0
    duplicate: bool = False
    moved_to: Optional[str] = None
    not_durable: Optional[str] = None
    chunks: Optional[int] = None
    complete: Optional[bool] = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the handler answered without an error."""
        return self.error is None

    @classmethod
    def from_json(cls, body: dict, duplicate: bool = False) -> "Reply":
        err = body.get("error")
        if err is not None and not isinstance(err, dict):
            err = {"code": "handler_error", "message": str(err)}
        return cls(
            seq=int(body.get("seq") or 0),
            output=body.get("output"),
            error=err,
            durable=bool(body.get("durable", False)),
            copies=int(body.get("copies") or 0),
            duplicate=duplicate,
            moved_to=body.get("moved_to"),
            not_durable=body.get("not_durable"),
            chunks=body.get("chunks"),
            complete=body.get("complete"),
            raw=body,
        )
