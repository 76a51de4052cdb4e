"""Typed errors of the OpenGrid API.

Every error answer of the server is a JSON object ``{"code": "...", "message": "...", ...}``;
:func:`error_from` turns one into the matching :class:`OpenGridError` subclass:

=======  ======================================  ===========================================
status   class                                   typical codes
=======  ======================================  ===========================================
400      :class:`BadRequest`                     ``bad_json``, ``bad_seq``, ``bad_manifest``,
                                                 ``bad_input``
401      :class:`Unauthorized`                   ``unauthenticated``, ``invalid_token``
403      :class:`Forbidden`                      ``forbidden``
404      :class:`NotFound`                       ``not_found``
409      :class:`Conflict`                       ``seq_gap``, ``already_placed``, ``fenced``
413      :class:`PayloadTooLarge` (a BadRequest) ``body_too_large``
422      :class:`Unsatisfiable`                  ``unsatisfiable`` (with ``why``)
429      :class:`QuotaExceeded`                  ``quota_exceeded``
5xx      :class:`Unavailable` (retryable)        ``not_serving``, ``arriving``, ``orphaned``
=======  ======================================  ===========================================

Two errors do not come from an HTTP error status: :class:`HandlerError` (the session's handler
answered this input with an error: the input *was* processed, its seq is used) and
:class:`AnswerNotRetained` (an input sent again was a duplicate, and the server no longer keeps
the first answer). :class:`DeadlineExceeded` (an :class:`Unavailable`) is raised when the client
gave up retrying.
"""

from __future__ import annotations

from typing import Any, Optional


class OpenGridError(Exception):
    """An error answered by (or, for :class:`DeadlineExceeded`, about) the OpenGrid API.

    Attributes: ``status`` (HTTP status; 200 for :class:`HandlerError` and
    :class:`AnswerNotRetained`, 0 when no answer came at all), ``code`` (the body's ``code``),
    ``message`` and ``body`` (the whole decoded body, or the raw text when it was not JSON).
    """

    #: Whether sending the same request again may succeed.
    retryable: bool = False

    def __init__(self, status: int, code: str, message: str, body: Any = None):
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")


class BadRequest(OpenGridError):
    """400: the request is malformed (``bad_json``, ``bad_seq``, ``bad_manifest``, ``bad_input``…)."""


class PayloadTooLarge(BadRequest):
    """413 ``body_too_large``: the body is over the server's limit."""


class Unauthorized(OpenGridError):
    """401: no token (``unauthenticated``) or a bad, expired or foreign one (``invalid_token``)."""


class Forbidden(OpenGridError):
    """403 ``forbidden``: a valid token that does not open this resource (another session's
    capability, a capability on an operator route)."""


class NotFound(OpenGridError):
    """404: no such session (or route)."""


class Conflict(OpenGridError):
    """409: the request conflicts with the session's state (``seq_gap``, ``already_placed``…)."""


class Unsatisfiable(OpenGridError):
    """422: no node satisfies the manifest; :attr:`why` lists each node's reason."""

    @property
    def why(self) -> list:
        """The server's ``why`` list: ``[{"node", "name", "reason", "filter"}, …]``."""
        if isinstance(self.body, dict):
            return list(self.body.get("why") or [])
        return []


class QuotaExceeded(OpenGridError):
    """429: a quota or rate limit was hit."""

    retryable = True


class Unavailable(OpenGridError):
    """503 (or another 5xx): the node or colony cannot serve this now; retry later."""

    retryable = True


class DeadlineExceeded(Unavailable):
    """The client retried an operation until its deadline (``retry_for``) without an answer.

    ``last`` is the last error seen (an :class:`OpenGridError` or a transport exception). For an
    input, ``seq`` is its seq: whether the session processed it is unknown, so the session keeps
    it and delivers it again (same seq, deduplicated) before its next input.
    """

    def __init__(self, after: float, last: Optional[BaseException], seq: Optional[int] = None):
        self.last = last
        self.seq = seq
        status = last.status if isinstance(last, OpenGridError) else 0
        code = last.code if isinstance(last, OpenGridError) else "deadline_exceeded"
        what = f"input #{seq}: " if seq is not None else ""
        super().__init__(status, code, f"{what}gave up after {after:.1f}s; last error: {last!r}", None)


class HandlerError(OpenGridError):
    """The session's handler answered the input with an error (``{"code", "message"}``).

    The input was processed (its seq is used; the session's state is whatever the handler left);
    :attr:`reply` is the whole :class:`~opengrid.Reply`.
    """

    def __init__(self, reply: Any):
        err = reply.error if isinstance(reply.error, dict) else {"message": reply.error}
        super().__init__(200, str(err.get("code", "handler_error")), str(err.get("message", "")), reply.raw)
        self.reply = reply


class AnswerNotRetained(OpenGridError):
    """An input sent again (same seq) was a duplicate, and the server answered without the first
    processing's output: it is older than the answers the session keeps (or the server predates
    keeping them). ``seq`` is the input's seq, ``last`` the newest seq the session processed."""

    def __init__(self, seq: int, last: Optional[int], body: Any):
        self.seq = seq
        self.last = last
        super().__init__(
            200,
            "answer_not_retained",
            f"input #{seq} was processed before (the session is at #{last}) but its answer is no longer retained",
            body,
        )


_BY_STATUS: dict[int, type[OpenGridError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unsatisfiable,
    429: QuotaExceeded,
}


def error_from(status: int, body: Any) -> OpenGridError:
    """The typed error for an error answer (``status`` and its decoded ``body``)."""
    code = ""
    message = ""
    if isinstance(body, dict):
        code = str(body.get("code") or "")
        message = str(body.get("message") or "")
    elif isinstance(body, str):
        message = body[:500]
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = Unavailable if status >= 500 else OpenGridError
    return cls(status, code, message, body)
