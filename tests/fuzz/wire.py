"""Raw HTTP to a head, status and all: the fuzzer must see exactly what the head answers.

The project's client turns answers into exceptions; a fuzzer wants the status line, the
``x-amzn-ErrorType`` header and the body bytes, and must be able to send bytes that are not
JSON at all. One keep-alive connection, re-opened when the head closes it; over TCP every
request is signed with SigV4 by botocore, as boto3 signs.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    error_type: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Wire:
    """POST raw bodies to a head over its Unix socket, or over TCP signed with an access key."""

    def __init__(self, *, unix_path: str | None = None, tcp: tuple[str, int] | None = None,
                 credentials: tuple[str, str] | None = None, region: str = "local", timeout: float = 30) -> None:
        assert (unix_path is None) != (tcp is None), "one of unix_path or tcp"
        self._unix, self._tcp, self._timeout = unix_path, tcp, timeout
        self._credentials, self._region = credentials, region
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._unix is not None:
                self._conn = _UnixConnection(self._unix, self._timeout)
            else:
                assert self._tcp is not None
                self._conn = http.client.HTTPConnection(*self._tcp, timeout=self._timeout)
        return self._conn

    def _headers(self, path: str, body: bytes, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._tcp is not None and self._credentials is not None:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials

            host = f"{self._tcp[0]}:{self._tcp[1]}"
            request = AWSRequest(method="POST", url=f"http://{host}{path}", headers=headers, data=body)
            SigV4Auth(Credentials(*self._credentials), "batch", self._region).add_auth(request)
            headers = dict(request.headers.items())
        headers.update(extra or {})
        return headers

    def post(self, path: str, body: bytes, extra_headers: dict[str, str] | None = None) -> Answer:
        """POST ``body`` to ``path``; one retry on a connection the head had closed."""
        headers = self._headers(path, body, extra_headers)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return Answer(response.status, response.getheader("x-amzn-ErrorType"), data)
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(self, path: str, doc: Any) -> Answer:
        return self.post(path, json.dumps(doc).encode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
