"""The Python client for an hpcbatch head: AWS Batch's REST-JSON API plus hpcbatch's own calls.

Shaped like boto3 (snake_case methods, camelCase keyword arguments that are the AWS request
body, the parsed JSON answer returned as a dict) and like flux's job API (every call has an
``_async`` twin returning a :class:`concurrent.futures.Future`). The twin is generated from
the blocking method (the same function, submitted to the client's thread pool), so the two
cannot drift; the blocking form does not go through the pool because ``concurrent.futures``
alone costs a one-shot CLI process ~5 ms.

Only the standard library is imported, and not much of it: ``hpcbatch submit`` runs a whole
Python process per job and must finish in about 60 ms, so HTTP/1.1 is spoken directly over a
socket (``http.client`` pulls in the ``email`` package, ~20 ms on our machines). Each worker
thread of the client keeps one keep-alive connection to the head.

    >>> c = Client("http://127.0.0.1:8471")                      # doctest: +SKIP
    >>> job = c.submit_job(jobName="hi", jobQueue="default",      # doctest: +SKIP
    ...                    jobDefinition="hpcbatch-default",
    ...                    containerOverrides={"command": ["echo", "hi"]})
    >>> c.wait_job(job["jobId"])["status"]                        # doctest: +SKIP
    'SUCCEEDED'
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import Unpack

    from hpcbatch.auth.sigv4 import RequestSigner
    from hpcbatch.client_types import ClientOptions, SubmitJobRequest

from hpcbatch.client_operations import OperationMethods
from hpcbatch.errors import ClientError, HpcbatchError, ServerError
from hpcbatch.operations import OPERATIONS as OPERATION_TABLE
from hpcbatch.operations import method_name

__all__ = ["Client", "HeadUnreachableError", "OPERATIONS", "find_credentials", "resolve_ca_bundle", "resolve_endpoint"]

# The one table (hpcbatch.operations): method name -> the path its JSON body is POSTed to.
# AWS's tagging operations, which AWS serves at /v1/tags/{resourceArn} by POST, DELETE and
# GET, go to the head's POST twins (resourceArn in the body): this client only POSTs.
OPERATIONS: dict[str, str] = {method_name(op.name): op.post for op in OPERATION_TABLE}

# Calls that change nothing (the table's reads, as hpcbatch.auth.policy.READ_ONLY): one whose
# connection broke after it was sent may be asked of the next head (a write may not: it
# may have been done).
READ_ONLY_PATHS = frozenset(op.post for op in OPERATION_TABLE if not op.write)
# SubmitJob's idempotency token (hpcbatch.head.service): a submit that carries one may be
# sent again, since the head answers the job the first one made. submit_job adds a fresh one.
CLIENT_TOKEN_TAG = "hpcbatch:client-token"
# boto3's standard retry mode: 3 attempts in all ($AWS_MAX_ATTEMPTS), the n-th retry after a
# random wait of up to 2**(n-1) s (at most 20 s); 429 and 503 mean the head did nothing.
DEFAULT_MAX_ATTEMPTS = 3
MAX_BACKOFF_S = 20.0
RETRY_STATUSES = frozenset({429, 503})
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED"})
DEFAULT_PORT = 8471


class HeadUnreachableError(ClientError):
    """No head answers at the endpoint (none configured, refused, timed out, cut off)."""


class _Retry(Exception):
    """The call was not done, or may be sent again: retry it after a backoff, else raise ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _may_resend(path: str, body: dict[str, Any] | None) -> bool:
    """Whether a call may be sent again after its connection broke: a read, or a submit with a token."""
    if path in READ_ONLY_PATHS:
        return True
    tags = (body or {}).get("tags")
    return path == OPERATIONS["submit_job"] and isinstance(tags, dict) and bool(tags.get(CLIENT_TOKEN_TAG))


def _backoff(retry: int) -> float:
    """Seconds before retry ``retry`` (1, 2, ...): full jitter, as botocore's standard mode."""
    import random  # only when a call is retried: a one-shot CLI process never pays for it

    return min(random.random() * 2 ** (retry - 1), MAX_BACKOFF_S)


def _max_attempts() -> int:
    """``$AWS_MAX_ATTEMPTS`` as boto3 reads it (the first try included), else 3."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "")
    return int(value) if value.isdigit() and int(value) >= 1 else DEFAULT_MAX_ATTEMPTS


class _TryNext(Exception):
    """This head cannot take the call, and it was not done: try the next endpoint."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _home() -> str:
    return os.environ.get("HPCBATCH_HOME") or os.path.join(os.path.expanduser("~"), ".hpcbatch")


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The head's URL: the argument, $HPCBATCH_ENDPOINT, the local cluster's file, or /etc/hpcbatch/client.toml."""
    if endpoint:
        return endpoint
    env = os.environ.get("HPCBATCH_ENDPOINT")
    if env:
        return env
    path = os.path.join(_home(), "cluster", "cluster.json")
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f).get("endpoint")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded:
        return str(recorded)
    recorded = _system_endpoint()
    if recorded:
        return recorded
    raise HeadUnreachableError(
        "no hpcbatch head found: start one with 'hpcbatch cluster up' or set HPCBATCH_ENDPOINT"
        f" (on a cluster: name it in {_client_config_path()})"
    )


def resolve_ca_bundle(ca_bundle: str | None = None, endpoints: list[str] | None = None) -> str | None:
    """The CA bundle an ``https://`` head is verified with: the argument, else
    $HPCBATCH_CA_BUNDLE, else the local cluster's CA when ``endpoints`` are its TCP endpoints
    (``cluster.json``'s ``ca_bundle``, made by ``hpcbatch cluster up``), else $AWS_CA_BUNDLE
    (as boto3 reads it); None: the system's CAs."""
    found = ca_bundle or os.environ.get("HPCBATCH_CA_BUNDLE")
    if found:
        return found
    try:
        with open(os.path.join(_home(), "cluster", "cluster.json"), encoding="utf-8") as f:
            record = json.load(f)
        ours = str(record.get("http_endpoint") or "").split(",")
        recorded = record.get("ca_bundle") if endpoints is None or set(endpoints) <= set(ours) else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    return str(recorded) if recorded else os.environ.get("AWS_CA_BUNDLE") or None


def _client_config_path() -> str:
    return os.environ.get("HPCBATCH_CLIENT_CONFIG") or "/etc/hpcbatch/client.toml"


def _system_endpoint() -> str | None:
    """``endpoint`` from the host's client.toml (written by the Ansible roles and bootstrap)."""
    import tomllib  # only when no other source named the head

    try:
        with open(_client_config_path(), "rb") as f:
            endpoint = tomllib.load(f).get("endpoint")
    except (OSError, ValueError):
        return None
    return str(endpoint) if endpoint else None


def find_credentials() -> tuple[str, str] | None:
    """The caller's access key as the AWS CLI finds a static one: environment, then files.

    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``; else profile ``$AWS_PROFILE`` (or
    ``default``) in ``$AWS_SHARED_CREDENTIALS_FILE`` (``~/.aws/credentials``), then in
    ``$AWS_CONFIG_FILE`` (``~/.aws/config``) -- botocore's env, shared-credentials and config
    providers. Not botocore's whole chain: it ends at the EC2 metadata service, which off EC2
    stalls a call for a second or more, and importing botocore only to look would cost every
    CLI call ~100 ms. A profile named in ``$AWS_PROFILE`` that does not exist is an error.
    """
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        return key_id, secret
    named = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    profile = named or "default"
    found = False
    for env, default, section in (
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", profile),
        (
            "AWS_CONFIG_FILE",
            "~/.aws/config",
            "default" if profile == "default" else f"profile {profile}",
        ),
    ):
        path = os.path.expanduser(os.environ.get(env) or default)
        if not os.path.isfile(path):
            continue
        import configparser  # only when the file exists: ~2 ms

        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ClientError(f"{path}: cannot be read as an AWS credentials file: {exc}") from None
        if parser.has_section(section):
            found = True
            key_id = parser.get(section, "aws_access_key_id", fallback=None)
            secret = parser.get(section, "aws_secret_access_key", fallback=None)
            if key_id and secret:
                return key_id.strip(), secret.strip()
    if named and not found:
        raise ClientError(
            f"AWS_PROFILE={named}: no such profile in ~/.aws/credentials or ~/.aws/config"
        )
    return None


def _region() -> str:
    """The region our signatures are scoped to; the head accepts any unless told otherwise."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "local"


class _Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read status and body.

    Just enough HTTP for a JSON API: Content-Length or chunked responses, ``Connection:
    close`` honoured. ``unix:/path/to/socket`` endpoints use a Unix socket (the head's
    local, uid-authenticated listener).
    """

    def __init__(self, endpoint: str, timeout: float, ca_bundle: str | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._tls = endpoint.startswith("https://")  # verified against ca_bundle (hpcbatch.tls)
        self._ca_bundle = ca_bundle
        self._sock: socket.socket | None = None
        self._rfile: Any = None
        if endpoint.startswith("unix:"):
            self._family = socket.AF_UNIX
            self._address: Any = endpoint[len("unix:") :].removeprefix("//")
            self._host = "localhost"
        elif endpoint.startswith(("http://", "https://")):
            rest = endpoint.split("://", 1)[1].split("/", 1)[0]
            if rest.startswith("["):  # [::1]:8471
                host, _, port = rest[1:].partition("]")
                port = port.lstrip(":")
            else:
                host, _, port = rest.partition(":")
            self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if port and not port.isdigit():
                raise ClientError(f"endpoint {endpoint!r}: the port must be a number")
            self._address = (host or "127.0.0.1", int(port) if port else DEFAULT_PORT)
            self._host = rest
        else:
            raise ClientError(f"endpoint {endpoint!r}: must start with http://, https:// or unix:")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._rfile.close()
                self._sock.close()
            except OSError:
                pass
        self._sock = self._rfile = None

    def _connect(self) -> None:
        try:
            self._open()
        except OSError as exc:  # nothing was sent: another head may take the request safely
            raise _ConnectFailed(exc.errno, exc.strerror or str(exc) or type(exc).__name__) from None

    def _open(self) -> None:
        if self._family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self._address)
        else:
            host, port = self._address
            # An ASCII host as bytes: getaddrinfo would otherwise load the idna codec (~2 ms
            # of the 60 ms a `hpcbatch submit` process may take).
            sock = socket.create_connection(
                (host.encode() if host.isascii() else host, port), timeout=self.timeout
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls:
                from hpcbatch.tls import wrap_client  # the ssl module only for https://

                sock = wrap_client(sock, host, self._ca_bundle)
        self._sock = sock
        self._rfile = sock.makefile("rb")

    def post(self, path: str, body: bytes, extra_headers: str = "") -> tuple[int, bytes]:
        """Send one request once; a kept-alive connection the head has closed is replaced first.

        Never sent twice here: once the request has left, a broken connection is the
        caller's to judge (the head may have done it). ``extra_headers``: more header
        lines, each ending in CRLF (the SigV4 signature).
        """
        if self._sock is not None and self._peer_closed():
            self.close()  # the head closed it while idle (keep-alive timeout, restart)
        if self._sock is None:
            self._connect()
        try:
            return self._exchange(path, body, extra_headers)
        except (OSError, _Dropped):
            self.close()
            raise

    def _peer_closed(self) -> bool:
        """Whether the head has closed this idle connection (as urllib3 checks before reuse)."""
        sock = self._sock
        assert sock is not None
        try:
            sock.settimeout(0)
            try:
                sock.recv(1, socket.MSG_PEEK)
            except ValueError:  # a TLS socket takes no flags: read (a session ticket is no data)
                import ssl  # loaded already by whoever made the TLS socket

                try:
                    sock.recv(1)
                except ssl.SSLWantReadError:
                    return False
        except BlockingIOError:
            return False  # open, and nothing unasked for waiting
        except OSError:
            return True
        finally:
            sock.settimeout(self.timeout)
        return True  # end of file, or bytes nobody asked for: either way not reusable

    def _exchange(self, path: str, body: bytes, extra_headers: str = "") -> tuple[int, bytes]:
        assert self._sock is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
            f"{extra_headers}Content-Length: {len(body)}\r\n\r\n"
        )
        self._sock.sendall(head.encode("latin-1") + body)
        rfile = self._rfile
        status_line = rfile.readline(65537)
        if not status_line:
            raise _Dropped()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ServerError(
                f"the head at {self.endpoint} answered {status_line[:80]!r}, not HTTP"
            )
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        while True:
            line = rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while True:
                size = int(rfile.readline(65537).split(b";", 1)[0], 16)
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(rfile.read(size))
                rfile.readline(65537)
            data = b"".join(chunks)
            keep = True
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            data = rfile.read(length)
            if len(data) < length:
                raise ConnectionResetError("connection closed in the middle of a response")
            keep = True
        else:
            data = rfile.read()
            keep = False
        if (
            not keep
            or headers.get(b"connection", b"").lower() == b"close"
            or parts[0] == b"HTTP/1.0"
        ):
            self.close()
        return status, data


class _Dropped(Exception):
    """The peer closed the connection before sending a status line."""


class _ConnectFailed(OSError):
    """No connection could be made: the request never left this process."""


STANDBY_ERROR = "StandbyHeadException"  # hpcbatch.head.ha: a standby head's answer


def _is_standby_answer(status: int, data: bytes) -> bool:
    return status == 503 and STANDBY_ERROR.encode() in data[:200]


def _raise_for(status: int, data: bytes, endpoint: str) -> None:
    """Turn an AWS-shaped error answer into ClientError (4xx) or ServerError (5xx)."""
    message = ""
    try:
        doc = json.loads(data)
        if isinstance(doc, dict):
            message = str(doc.get("message") or doc.get("Message") or "")
    except ValueError:
        message = data[:200].decode("utf-8", "replace").strip()
    if not message:
        message = f"HTTP {status} from the head at {endpoint}"
    if 400 <= status < 500:
        raise ClientError(message)
    raise ServerError(message)


# Client's keyword-only options (hpcbatch.client_types.ClientOptions).
_CLIENT_OPTIONS = frozenset({"failover_wait_s", "max_attempts", "ca_bundle"})


class Client(OperationMethods):
    """A connection to an hpcbatch head (or to whichever of several heads is active).

    ``endpoint`` is ``http://host:port`` or ``unix:/path``; ``None`` resolves it from
    ``$HPCBATCH_ENDPOINT`` or the local cluster (``$HPCBATCH_HOME/cluster/cluster.json``).
    Several endpoints, comma-separated, name active/standby heads (docs/ha.md): a call
    that cannot connect, or that a standby declines, goes to the next one, round and round
    for up to ``failover_wait_s`` (a takeover takes a few seconds). A call whose connection
    broke after it was sent is sent again (there or elsewhere) only if it changes nothing (a
    read) or carries a client token (every :meth:`submit_job`): a write may have been done.
    Answers 429 and 503 are retried with backoff, as boto3's standard retry mode does.
    Every operation in :data:`OPERATIONS` is a method taking the AWS request body as
    keyword arguments; every public call has an ``_async`` twin that runs it on one of
    ``max_workers`` threads and returns a :class:`concurrent.futures.Future`. Each thread
    (the caller's included) keeps its own keep-alive connection to the head.

    ``https://`` heads are verified against ``ca_bundle`` (else :func:`resolve_ca_bundle`'s).
    Over ``http(s)://`` every request is signed with AWS Signature Version 4, as boto3 signs
    (service ``batch``, region ``$AWS_REGION``/``$AWS_DEFAULT_REGION`` or ``local``), when
    there is a key: ``credentials=(access_key_id, secret_access_key)``, else what
    :func:`find_credentials` finds; ``credentials=False`` never signs. ``unix:`` endpoints
    are never signed: there the head learns the caller from the kernel.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = 30,
        max_workers: int = 8,
        credentials: tuple[str, str] | Literal[False] | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        unknown = set(options) - _CLIENT_OPTIONS
        if unknown:
            raise TypeError(f"Client() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        failover_wait_s = options.get("failover_wait_s", 20.0)
        max_attempts = options.get("max_attempts")
        ca_bundle = options.get("ca_bundle")
        self.endpoints = [e.strip().rstrip("/") for e in resolve_endpoint(endpoint).split(",") if e.strip()]
        if not self.endpoints:
            raise ClientError(f"endpoint {endpoint!r}: names no head")
        self.endpoint = self.endpoints[0]
        self.failover_wait_s = failover_wait_s
        self.max_attempts = max_attempts or _max_attempts()
        self._sleep: Callable[[float], None] = time.sleep  # tests pass their own
        self.timeout = timeout
        self.max_workers = max_workers
        self._credentials = credentials
        # https:// heads are verified against this CA bundle (resolve_ca_bundle); None: the system's.
        self.ca_bundle = (
            resolve_ca_bundle(ca_bundle, self.endpoints) if any(e.startswith("https://") for e in self.endpoints) else None
        )
        # Resolved on the first request (files read, botocore imported only if it signs).
        self._signer: RequestSigner | None | Literal[False] = False
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- transport ------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.endpoint != self.endpoint:  # another head took over
            conn.close()
            conn = None
        if conn is None:
            conn = _Connection(self.endpoint, self.timeout, ca_bundle=self.ca_bundle)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _make_signer(self) -> RequestSigner | None:
        """The SigV4 signer for this client, or None (a ``unix:`` endpoint, or no key)."""
        if self._credentials is False:
            return None
        credentials = self._credentials or find_credentials()
        if credentials is None:
            return None
        # Imported here: botocore costs ~100 ms, which an unsigned `hpcbatch submit` never pays.
        from hpcbatch.auth.sigv4 import RequestSigner

        return RequestSigner(credentials[0], credentials[1], _region())

    def _signature(self, conn: _Connection, path: str, payload: bytes) -> str:
        """The SigV4 header lines for this request, or "" when the client does not sign."""
        if conn.endpoint.startswith("unix:"):
            return ""  # the head learns who we are from the kernel
        signer = self._signer
        if signer is False:
            signer = self._signer = self._make_signer()
        if signer is None:
            return ""
        # Sign exactly the headers _Connection._exchange sends, but not Content-Length.
        sent = {
            "Host": conn._host,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        pairs = signer.headers("POST", conn._host, path, sent, payload)
        return "".join(f"{name}: {value}\r\n" for name, value in pairs)

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` as JSON to ``path``; return the parsed answer or raise an error.

        Retried up to ``max_attempts`` in all, with jittered backoff (boto3's standard
        mode), when the head refused it without doing it (429, 503, no connection), and
        after a broken connection only if it may be sent again (:func:`_may_resend`).
        """
        payload = json.dumps(body or {}, separators=(",", ":")).encode()
        resend = _may_resend(path, body)
        attempt = 1
        while True:
            try:
                return self._call_heads(path, payload, resend)
            except _Retry as retry:
                if attempt >= self.max_attempts:
                    raise retry.error from None
                self._sleep(_backoff(attempt))
                attempt += 1

    def _call_heads(self, path: str, payload: bytes, resend: bool) -> dict[str, Any]:
        """One attempt: the one head, or the heads in turn while they decline (failover)."""
        if len(self.endpoints) == 1:
            return self._call_one(path, payload, resend=resend)
        deadline = time.monotonic() + self.failover_wait_s
        tried = 0
        while True:
            try:
                return self._call_one(path, payload, rotate=True, resend=resend)
            except _TryNext as e:
                tried += 1
                if time.monotonic() > deadline:
                    raise HeadUnreachableError(
                        f"no active hpcbatch head among {', '.join(self.endpoints)} within "
                        f"{self.failover_wait_s:g} s (last: {e.why})"
                    ) from None
                current = self.endpoints.index(self.endpoint) if self.endpoint in self.endpoints else 0
                self.endpoint = self.endpoints[(current + 1) % len(self.endpoints)]
                if tried % len(self.endpoints) == 0:
                    time.sleep(0.2)  # a whole round declined: a takeover is under way

    def _call_one(self, path: str, payload: bytes, rotate: bool = False, resend: bool | None = None) -> dict[str, Any]:
        if resend is None:
            resend = path in READ_ONLY_PATHS
        conn = self._connection()
        signature = self._signature(conn, path, payload)
        try:
            status, data = conn.post(path, payload, signature)
        except (OSError, _Dropped) as e:
            conn.close()
            raise self._unanswered(conn, e, rotate=rotate, resend=resend) from None
        self._check_status(conn, status, data, rotate)
        if not data:
            return {}
        try:
            doc = json.loads(data)
        except ValueError:
            raise ServerError(f"the head answered {path} with something that is not JSON") from None
        return doc if isinstance(doc, dict) else {"result": doc}

    def _unanswered(self, conn: _Connection, e: OSError | _Dropped, *, rotate: bool, resend: bool) -> Exception:
        """What to raise when a request got no answer: try the next head, retry, or say so."""
        if isinstance(e, _Dropped):
            why = "connection closed by the head"
        elif isinstance(e, TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = e.strerror or str(e) or type(e).__name__
        not_sent = isinstance(e, _ConnectFailed)
        if rotate and (not_sent or resend):
            return _TryNext(f"{conn.endpoint}: {why}")
        error = HeadUnreachableError(f"cannot reach the hpcbatch head at {self.endpoint}: {why}")
        if not_sent:
            return error  # nothing listens: say so now (a starting head is polled)
        if resend:
            return _Retry(error)
        # Sent, and the answer lost: the head may have done it. Never sent twice.
        return HeadUnreachableError(
            f"cannot reach the hpcbatch head at {self.endpoint}: {why}; the request was sent and "
            f"may have been done (look before repeating it)"
        )

    def _check_status(self, conn: _Connection, status: int, data: bytes, rotate: bool) -> None:
        """Raise for an answer that is not a success: a standby's, a throttle to retry, an error."""
        standby = _is_standby_answer(status, data)
        if rotate and standby:
            raise _TryNext(f"{conn.endpoint} is a standby")
        if status in RETRY_STATUSES and not standby:
            try:
                _raise_for(status, data, self.endpoint)
            except HpcbatchError as refused:  # throttled or unavailable: nothing was done
                raise _Retry(refused) from None
        if status >= 400:
            _raise_for(status, data, self.endpoint)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the client's threads (what every ``_async`` does)."""
        if self._pool is None:
            # Imported here, not at the top: concurrent.futures loads logging, ~5 ms that a
            # one-shot `hpcbatch submit` process (blocking calls only) never needs.
            from concurrent.futures import ThreadPoolExecutor

            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix="hpcbatch-client"
                    )
        return self._pool.submit(fn, *args, **kwargs)

    def call_async(self, path: str, body: dict[str, Any] | None = None) -> Future[dict[str, Any]]:
        """:meth:`call` on a worker thread."""
        return self.submit(self.call, path, body)

    def close(self) -> None:
        """Stop the worker threads and close every connection."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r})"

    if TYPE_CHECKING:
        # The _async twins are generated below; this tells type checkers that
        # ``client.submit_job_async(...)`` exists.
        def __getattr__(self, name: str) -> Callable[..., Any]: ...

    # -- hpcbatch's own operations, with friendlier signatures -----------------------------

    def describe_head(self) -> dict[str, Any]:
        """This head's role (active or standby), its epoch, and the active head (any head answers)."""
        # Asked of this head only, and once: the answer is about the head that gives it.
        return self._call_one(OPERATIONS["describe_heads"], b"{}", resend=False)

    def submit_job(self, **body: Unpack[SubmitJobRequest]) -> dict[str, Any]:
        """SubmitJob, with a fresh client token unless ``tags`` carries one already.

        The token lets the call be sent again after a broken connection: the head answers
        the job the first one made, so a retried submit never makes a second job.
        """
        tags = dict(body.get("tags") or {})
        tags.setdefault(CLIENT_TOKEN_TAG, os.urandom(16).hex())
        return self.call(OPERATIONS["submit_job"], {**body, "tags": tags})

    # -- helpers ---------------------------------------------------------------------------

    def paginate(self, method_name: str, result_key: str, **body: Any) -> Iterator[dict[str, Any]]:
        """Yield every item under ``result_key`` across pages, following ``nextToken``."""
        method = getattr(self, method_name)
        while True:
            page = method(**body)
            yield from page.get(result_key) or []
            token = page.get("nextToken")
            if not token:
                return
            body["nextToken"] = token

    def all_nodes(self) -> list[dict[str, Any]]:
        """Every node ListNodes shows, a page of 1,000 at a time (an unpaged call answers
        only the first page, as AWS Batch's List calls do)."""
        return list(self.paginate("list_nodes", "nodes", maxResults=1000))

    def wait_jobs(
        self,
        job_ids: list[str],
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Wait until every job is SUCCEEDED or FAILED; return their final JobDetails by id.

        Polls DescribeJobs (100 ids per call, as AWS allows), starting fast and backing off
        to ``poll`` seconds. ``on_progress`` sees the latest details after every round.
        Raises TimeoutError after ``timeout`` seconds, NotFoundError for an unknown id.
        """
        from hpcbatch.errors import NotFoundError

        deadline = None if timeout is None else time.monotonic() + timeout
        latest: dict[str, dict[str, Any]] = {}
        pending = list(dict.fromkeys(job_ids))
        delay = min(0.05, poll)
        while True:
            chunks = [pending[i : i + 100] for i in range(0, len(pending), 100)]
            if len(chunks) == 1:
                answers = [self.describe_jobs(jobs=chunks[0])]
            else:
                answers = [f.result() for f in [self.describe_jobs_async(jobs=c) for c in chunks]]
            for answer in answers:
                for job in answer.get("jobs") or []:
                    latest[job["jobId"]] = job
            missing = [j for j in pending if j not in latest]
            if missing:
                raise NotFoundError(f"jobs: no job with id {missing[0]}")
            pending = [j for j in pending if latest[j].get("status") not in TERMINAL_STATUSES]
            if on_progress is not None:
                on_progress(latest)
            if not pending:
                return latest
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(
                    f"{len(pending)} of {len(latest)} jobs still unfinished after {timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, poll)

    def wait_job(
        self, job_id: str, timeout: float | None = None, poll: float = 1.0
    ) -> dict[str, Any]:
        """Wait for one job to end; return its final JobDetail (SUCCEEDED or FAILED)."""
        return self.wait_jobs([job_id], timeout=timeout, poll=poll)[job_id]


def _install_async_twin(method: str) -> None:
    """Add ``Client.<method>_async``: the very same method, run on a worker thread.

    The twin *is* the blocking method submitted to the pool, so the two cannot drift (the
    lesson of flux's submit/submit_async, whose argument lists were kept in sync by hand).
    """
    blocking = getattr(Client, method)

    def twin(self: Client, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.submit(blocking, self, *args, **kwargs)

    twin.__name__, twin.__qualname__ = method + "_async", f"Client.{method}_async"
    twin.__doc__ = f"Like :meth:`{method}`, on a worker thread; returns a Future of its result."
    setattr(Client, method + "_async", twin)


for _method in (*OPERATIONS, "wait_job", "wait_jobs"):
    _install_async_twin(_method)
