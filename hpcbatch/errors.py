"""The one error hierarchy: every failure a caller can see maps to an AWS Batch error shape.

AWS Batch answers user mistakes with HTTP 400 ``ClientException`` and its own faults with
HTTP 500 ``ServerException``; the message names the field and the fix. Code raises these
and the HTTP layer turns them into ``{"__type": ..., "message": ...}`` bodies.
"""

from __future__ import annotations


class HpcbatchError(Exception):
    """Base of every error hpcbatch raises on purpose."""

    aws_code = "ServerException"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(HpcbatchError):
    """The caller sent something wrong: a field, a name, a state that forbids the call."""

    aws_code = "ClientException"
    http_status = 400


class NotFoundError(ClientError):
    """A named resource does not exist (AWS reports this as a ClientException too)."""


class ServerError(HpcbatchError):
    """Something on our side failed; the caller may retry."""


class ServiceUnavailable(ServerError):
    """Something the head depends on is away for now (its state database): the call may
    succeed once it is back (HTTP 503, which SDKs retry); the message says whether anything
    was changed."""

    http_status = 503
