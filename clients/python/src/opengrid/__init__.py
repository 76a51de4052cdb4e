"""The OpenGrid Python client.

    import opengrid

    client = opengrid.Client("http://127.0.0.1:7600")
    s = client.create(handler="counter", jurisdictions=["DE"])
    print(s.send(5).output)          # 5
    for chunk in s.stream({"user": "hi"}):   # a handler that streams
        print(chunk, end="")

See :mod:`opengrid.client` for how inputs are numbered, retried and followed across moves;
:mod:`opengrid.errors` for the typed errors; :mod:`opengrid.aio` for asyncio
(``AsyncClient``); ``opengrid.testing`` boots a local colony for tests.
"""

from ._core import API_PREFIX, build_manifest
from .aio import AsyncClient, AsyncSession, AsyncStreamedReply
from .client import Client, Session, StreamedReply
from .errors import (
    AnswerNotRetained,
    BadRequest,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    HandlerError,
    NotFound,
    OpenGridError,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
    Unsatisfiable,
    error_from,
)
from .models import Placement, Reply

__all__ = [
    "API_PREFIX",
    "AnswerNotRetained",
    "AsyncClient",
    "AsyncSession",
    "AsyncStreamedReply",
    "BadRequest",
    "Client",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "HandlerError",
    "NotFound",
    "OpenGridError",
    "PayloadTooLarge",
    "Placement",
    "QuotaExceeded",
    "Reply",
    "Session",
    "StreamedReply",
    "Unauthorized",
    "Unavailable",
    "Unsatisfiable",
    "build_manifest",
    "error_from",
]
__version__ = "0.1.0"
