"""The HTTP API: AWS Batch's REST-JSON paths and bodies, plus hpcbatch's own under /hpcbatch/v1.

Every request is identified, authorized, parsed, validated against the AWS shape
(``hpcbatch.validation``), run by the service, audited if it changes anything, and answered
only once what it changed is committed. Who is calling:

* over the Unix socket, the kernel's peer credentials (SO_PEERCRED) name the user, as
  munge and Flux's local connector do: local users need no keys;
* over TCP, an AWS Signature Version 4 made with an access key an admin issued; unsigned,
  badly signed, stale or disabled-key requests are refused and change nothing.

Errors come back as AWS does: a 4xx/5xx status, the ``x-amzn-ErrorType`` header and
``{"__type": ..., "message": ...}``, which boto3 turns into its exceptions.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import json
import logging
import os
import pwd
import re
import socket
import struct
import time
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any

import msgspec
from aiohttp import web

from hpcbatch.auth.policy import Caller, authorize
from hpcbatch.errors import ClientError, HpcbatchError, ServerError, ServiceUnavailable
from hpcbatch.head.ratelimit import RateLimiter, RefusalLog, TooManyRequests
from hpcbatch.head.service import BatchService
from hpcbatch.operations import OPERATIONS as OPERATION_TABLE
from hpcbatch.operations import Operation
from hpcbatch.validation import refuse_nul, validate_request

log = logging.getLogger("hpcbatch.api")

# hpcbatch's own operations the API routes to the service (POST /hpcbatch/v1/<name>), and the
# tagging operations' POST twins (``resourceArn`` in the JSON body) for clients that only POST
# (hpcbatch.client); AWS's own tagging routes are ``rest_routes()``. Both read the one table.
EXTENSION_ROUTES = {op.path: op.name for op in OPERATION_TABLE if op.validated == "own" and op.served_by == "service"}
TAG_ROUTES = {op.post_path: op.name for op in OPERATION_TABLE if op.rest}
MAX_BODY = 2 << 20
# Operations whose answer holds a secret: only over the Unix socket or TLS (docs/security.md).
SECRET_REPLIES = frozenset({"CreateAccessKey"})
LOCAL_IDENTITY_TTL_S = 5.0
_PEERCRED = struct.Struct("3i")


class Unauthenticated(HpcbatchError):
    """Nobody we know is calling (AWS: UnrecognizedClientException, HTTP 403)."""

    aws_code = "UnrecognizedClientException"
    http_status = 403


class RequestTooLarge(ClientError):
    """The body is over ``MAX_BODY`` (HTTP 413, as AWS's front end answers)."""

    http_status = 413


_ENCODER = msgspec.json.Encoder()


def json_body(result: Any) -> bytes:
    """An answer as JSON: msgspec's encoder, ten times json.dumps' speed (a DescribeJobs of 100
    jobs in 0.05 ms instead of 0.5; SDK waiters and the console poll it). What msgspec will
    not take (a lone surrogate, which requests are refused for) goes the old way."""
    try:
        return _ENCODER.encode(result)
    except (TypeError, UnicodeEncodeError, msgspec.EncodeError):
        return json.dumps(result).encode()


MAX_NESTING = 64  # AWS Batch's deepest input shape is ~10 levels
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_body(raw: bytes) -> Any:
    """The request body as JSON, or a ClientError naming what is wrong with it.

    Beyond "not JSON": nesting deeper than any AWS shape (Python's parser and every walk after
    it recurse), and lone UTF-16 surrogates (``"\\ud800"``: valid JSON, but no text the store
    can encode). Both are checked only when the raw bytes could hold them (cheap scans).
    """
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ClientError(f"request body nests deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:
        raise ClientError(f"request body is not valid JSON: {exc}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING or _SURROGATE_ESCAPE.search(raw):
        _check_document(body)
    return body


def _check_document(body: Any) -> None:
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ClientError(f"request body{where or ''}: a string holds a lone UTF-16 surrogate; "
                                  "send valid Unicode") from None
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_NESTING:
            raise ClientError(f"request body nests deeper than {MAX_NESTING} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, depth, where))
                stack.append((item, depth + 1, f"{where}.{key}" if len(where) < 200 else where))
        else:
            stack.extend((item, depth + 1, where) for item in value)


class StoreUnavailable(ServerError):
    """The head cannot write its state (disk full): a change is refused, nothing is stored."""


class SpaceGuard:
    """Refuses changes while the state directory's file system is nearly full.

    Checked before a mutating call touches anything, so a full disk gives a clear
    ServerException instead of a change that is half in memory and not on disk.
    """

    def __init__(self, state_dir: str, min_free_bytes: int) -> None:
        self._dir = state_dir
        self._min = min_free_bytes

    def check(self) -> None:
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return  # cannot tell; the commit itself will say
        free = st.f_bavail * st.f_frsize
        if free < self._min:
            raise StoreUnavailable(
                f"disk full: the head's state directory {self._dir} has {free / 2**20:.1f} MiB free "
                f"(it needs {self._min / 2**20:.0f} MiB to accept changes); nothing was changed; "
                "free space there and retry"
            )


def _disk_full(exc: BaseException) -> bool:
    """Whether a store or file error means "no space left" (SQLite says "disk is full")."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc)


async def _committed(engine: Any, operation: str) -> None:
    """Wait for the group commit; a store failure becomes a ServerException naming its cause."""
    try:
        await engine.durable()
    except ServiceUnavailable:  # the state database is away: 503, naming it
        raise
    except Exception as exc:
        cause = str(exc) or type(exc).__name__
        raise StoreUnavailable(
            f"{operation}: the head could not commit to its store ({cause}); it retries every "
            "second, and the change takes effect once the store accepts writes again"
        ) from None


class Identifier:
    """Turns a request into a ``Caller``; see the module docstring."""

    def __init__(self, service: BatchService, roles: Mapping[str, str], region: str | None = None) -> None:
        self._service = service
        self._roles = dict(roles)  # "alice" -> role, "@group" -> role
        self._region = region
        # uid -> (expiry, caller): a passwd and group lookup per request costs more than
        # the request; a changed role or group shows up within a few seconds.
        self._local: dict[int, tuple[float, Caller]] = {}

    def role_of(self, user: str, uid: int, gid: int) -> str:
        """Role of a local user: root and the head's own user are admin; else ``roles``; else ``user``.

        The user who runs the head administers it (as a Flux instance's owner does), so a
        researcher's own ``hpcbatch cluster up`` works without root.
        """
        if uid == 0 or uid == os.geteuid():
            return "admin"
        if user in self._roles:
            return self._roles[user]
        best = "user"
        rank = {"user": 0, "developer": 1, "admin": 2}
        try:
            groups = {grp.getgrgid(g).gr_name for g in os.getgrouplist(user, gid)}
        except (KeyError, OSError):
            groups = set()
        for name, role in self._roles.items():
            if name.startswith("@") and name[1:] in groups and rank.get(role, 0) > rank[best]:
                best = role
        return best

    def identify(self, request: web.Request, body: bytes) -> Caller:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and sock.family == socket.AF_UNIX:
            _pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            now = time.monotonic()
            cached = self._local.get(uid)
            if cached is not None and cached[0] > now:
                return cached[1]
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                raise Unauthenticated(f"uid {uid} has no user name on the head") from None
            caller = Caller(user=user, role=self.role_of(user, uid, gid), via="socket")
            if len(self._local) > 10_000:
                self._local.clear()
            self._local[uid] = (now + LOCAL_IDENTITY_TTL_S, caller)
            return caller
        return self._sigv4(request, body)

    def _sigv4(self, request: web.Request, body: bytes) -> Caller:
        from hpcbatch.auth.keys import AccessKey
        from hpcbatch.auth.sigv4 import SignedRequest, verify

        store = self._service.store

        def lookup(access_key_id: str) -> AccessKey | None:
            doc = store.get_access_key(access_key_id)
            return None if doc is None else AccessKey(**doc)

        signed = SignedRequest(
            request.method, request.rel_url.raw_path, request.rel_url.raw_query_string, request.headers, body
        )
        key = verify(signed, time.time(), lookup, region=self._region)
        return Caller(user=key.user, role=key.role, via="sigv4", access_key_id=key.access_key_id)


def _error(exc: HpcbatchError) -> web.Response:
    body = json.dumps({"__type": exc.aws_code, "message": exc.message})
    return web.Response(
        status=exc.http_status,
        body=body,
        content_type="application/json",
        headers={"x-amzn-ErrorType": exc.aws_code},
    )


def _target(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for key in ("jobId", "jobName", "jobQueue", "jobQueueName", "computeEnvironment",
                "computeEnvironmentName", "jobDefinition", "jobDefinitionName", "name", "user", "accessKeyId",
                "resourceArn"):
        value = body.get(key)
        if isinstance(value, str):
            return value
    return None


@dataclasses.dataclass(frozen=True)
class _Gate:
    """What every operation's handler shares: who is calling, the limits, the service."""

    service: BatchService
    identifier: Identifier
    limiter: RateLimiter | None
    space: SpaceGuard | None
    refusals: RefusalLog  # unauthenticated floods: a few lines, not one per request


@dataclasses.dataclass
class _Call:
    """One request as far as it got: who called, and the body as last parsed (for the audit)."""

    caller: Caller | None = None
    body: Any = None


class _OperationHandler:
    """One operation's route: identify, throttle, parse, authorize, validate, run, audit, answer."""

    def __init__(self, gate: _Gate, operation: Operation, *, in_path: bool) -> None:
        self.gate = gate
        self.operation = operation.name
        self.validate = operation.validated == "aws"
        self.in_path = in_path  # members come from the path and query too (AWS's REST routes)
        self.mutating = operation.write
        self.method = getattr(gate.service, operation.name)

    async def handle(self, request: web.Request) -> web.Response:
        call = _Call()
        try:
            result = await self._perform(request, call)
        except HpcbatchError as exc:
            return await self._refused(request, call, exc)
        except Exception as exc:
            return self._failed(exc)
        return await self._answer(call, result)

    async def _perform(self, request: web.Request, call: _Call) -> Any:
        """Everything up to the service's answer; raises the error to answer with."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(f"request body is over the head's limit of {MAX_BODY >> 20} MiB") from None
        call.caller = caller = self.gate.identifier.identify(request, raw)
        if self.gate.limiter is not None:
            self.gate.limiter.check(caller, self.operation)
        call.body = body = parse_body(raw)
        if self.in_path:
            call.body = body = _path_members(request, body)
        authorize(caller, self.operation)
        self._refuse_secret_in_clear(request, caller)
        body = self._validated(body, len(raw))
        if self.mutating and self.gate.space is not None:
            self.gate.space.check()
        return self.method(body, caller)

    def _refuse_secret_in_clear(self, request: web.Request, caller: Caller) -> None:
        if self.operation in SECRET_REPLIES and caller.via == "sigv4" and not request.secure:
            raise ClientError(f"{self.operation} answers with a secret, which never crosses the network in "
                              "clear: call it over HTTPS (tls_cert and tls_key in the head's config) or "
                              "on the head's Unix socket (hpcbatch admin keys create, on the head)")

    def _validated(self, body: Any, raw_size: int) -> dict[str, Any]:
        if self.validate:
            return validate_request(self.operation, body, raw_size=raw_size)
        if not isinstance(body, dict):
            raise ClientError("request body must be a JSON object")
        refuse_nul(body)  # hpcbatch's own operations: no NUL byte either
        return body

    async def _refused(self, request: web.Request, call: _Call, exc: HpcbatchError) -> web.Response:
        """A refusal: audited (a change refused is worth a line) unless nobody or a flood asked."""
        # Unauthenticated, throttled or out of disk: refused, and nothing is written
        # (auditing a flood or a full disk would only make either worse).
        if call.caller is None or isinstance(exc, TooManyRequests | StoreUnavailable | ServiceUnavailable):
            return self._unaudited(request, call.caller, exc)
        if self.mutating:
            engine = self.gate.service.engine
            engine.audit(_audit_entry(call.caller, self.operation, call.body, f"{exc.aws_code}: {exc.message}"))
            try:
                await _committed(engine, self.operation)
            except (StoreUnavailable, ServiceUnavailable) as store_exc:
                return _error(store_exc)
        return _error(exc)

    def _unaudited(self, request: web.Request, caller: Caller | None, exc: HpcbatchError) -> web.Response:
        if caller is None and not isinstance(exc, StoreUnavailable | ServiceUnavailable):
            # Per source address: past its rate a flood gets 429s, and the log a summary.
            address = request.remote or "the local socket"
            for line in self.gate.refusals.note(address, f"{self.operation} refused: {exc.aws_code}: {exc.message}"):
                log.warning("%s", line)
            limiter = self.gate.limiter
            throttled = limiter.unauthenticated(address) if limiter is not None else None
            return _error(throttled or exc)
        if not isinstance(exc, TooManyRequests):
            log.warning("%s refused: %s: %s", self.operation, exc.aws_code, exc.message)
        return _error(exc)

    def _failed(self, exc: Exception) -> web.Response:
        log.exception("%s failed", self.operation)
        if _disk_full(exc):  # a store write inside the call: rolled back, say why
            return _error(StoreUnavailable(f"{self.operation}: disk full: the head's store refused the "
                                           f"change ({exc}); nothing was changed; free space and retry"))
        return _error(HpcbatchError(f"{self.operation} failed on the head; see the head's log"))

    async def _answer(self, call: _Call, result: Any) -> web.Response:
        """Audit a change, and reply only once what the call changed is committed (group commit)."""
        engine = self.gate.service.engine
        if self.mutating:
            assert call.caller is not None
            engine.audit(_audit_entry(call.caller, self.operation, call.body, "ok", result))
        try:
            await _committed(engine, self.operation)
        except StoreUnavailable as exc:
            return _error(exc)
        except ServiceUnavailable as exc:
            if self.mutating:  # done in the head's memory, not yet stored: it will be, say so
                exc = ServiceUnavailable(
                    f"{self.operation}: {exc.message.removesuffix('; retry')}; the change is kept and stored "
                    "once it answers: check before repeating it"
                )
            return _error(exc)
        return web.Response(body=json_body(result), content_type="application/json")


def _add_operation_routes(app: web.Application, gate: _Gate, only: Collection[str] | None) -> None:
    """A route for every operation of the table the service answers (only ``only``'s if given)."""
    for op in OPERATION_TABLE:
        if op.served_by != "service" or (only is not None and op.name not in only):
            continue
        if op.rest:  # AWS's route, members in the path, and the POST twin with them in the body
            path = op.path.replace("{resourceArn}", "{resourceArn:.+}")
            app.router.add_route(op.method, path, _OperationHandler(gate, op, in_path=True).handle)
        app.router.add_post(op.post, _OperationHandler(gate, op, in_path=False).handle)


def make_app(
    service: BatchService, *, roles: Mapping[str, str] | None = None, region: str | None = None,
    limiter: RateLimiter | None = None, space: SpaceGuard | None = None,
    operations: Collection[str] | None = None,
) -> web.Application:
    """Build the aiohttp application serving every operation (only ``operations`` if given,
    without the health route: a standby's reads, hpcbatch.head.ha)."""
    app = web.Application(client_max_size=MAX_BODY)
    identifier = Identifier(service, roles or {}, region)
    gate = _Gate(service, identifier, limiter, space, RefusalLog(time.monotonic))
    _add_operation_routes(app, gate, operations)
    app.middlewares.append(unknown_route)
    if operations is not None:
        return app
    from hpcbatch.head.cwlogs import mount_logs  # CloudWatch Logs' JSON protocol at POST /

    mount_logs(app, service, identifier, region=region, limiter=limiter)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/hpcbatch/v1/health", health)
    return app


class UnknownOperation(HpcbatchError):
    """No operation lives at this method and path (AWS: UnknownOperationException, HTTP 404)."""

    aws_code = "UnknownOperationException"
    http_status = 404


@web.middleware
async def unknown_route(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer a path or method no route serves in AWS's error shape, not aiohttp's text 404/405
    (boto3 and aws-cli read ``__type``); the console's pages keep their own."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if request.path.startswith("/console"):
            raise
        allowed = ""
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = f" (this path takes {', '.join(sorted(exc.allowed_methods))})"
        path = request.path if len(request.path) <= 200 else request.path[:200] + "..."
        return _error(UnknownOperation(f"no operation at {request.method} {json.dumps(path)}{allowed}: "
                                       "see the AWS Batch API reference for the paths this head serves"))


def _path_members(request: web.Request, body: Any) -> Any:
    """The members AWS's REST routes carry in the path and query (tagging: ``resourceArn``,
    ``tagKeys``) merged into the JSON body, as botocore's serializer split them."""
    if not isinstance(body, dict):
        return body  # validation names the problem
    body = dict(body)
    if "resourceArn" in request.match_info:
        body["resourceArn"] = urllib.parse.unquote(request.match_info["resourceArn"])
    keys = request.query.getall("tagKeys", [])
    if keys:
        body["tagKeys"] = list(keys)
    return body


def _audit_entry(caller: Caller, operation: str, body: Any, outcome: str, result: Any = None) -> dict[str, Any]:
    target = None
    if isinstance(result, dict):  # what the call made (a new job's id) names it best
        target = result.get("jobId") or result.get("accessKeyId")
    target = target or _target(body)
    # A refused request is audited with what it named: a NUL byte in it must not reach the
    # store (PostgreSQL refuses NUL in text, and the failed commit would be retried forever).
    if target is not None:
        target = target.replace("\x00", "\\u0000")
    outcome = outcome.replace("\x00", "\\u0000")
    return {
        "at": time.time_ns() // 1_000_000,
        "user": caller.user,
        "role": caller.role,
        "via": caller.via,
        "accessKeyId": caller.access_key_id,
        "operation": operation,
        "target": target,
        "outcome": outcome,
    }
