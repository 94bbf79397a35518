"""AWS Signature Version 4: check it on the head, add it in our client, with botocore's signer.

Theory of operation. A SigV4 request carries ``Authorization: AWS4-HMAC-SHA256
Credential=<key id>/<YYYYMMDD>/<region>/<service>/aws4_request, SignedHeaders=<a;b;c>,
Signature=<64 hex>`` and ``X-Amz-Date: <YYYYMMDDTHHMMSSZ>``. :func:`verify` parses that,
rebuilds the request from what the client said it signed (method, raw path, raw query, the
*signed* headers only, the body) and lets ``botocore.auth.SigV4Auth`` compute the signature
at the request's own timestamp, so the canonical request is byte for byte what boto3 built.
Nothing here reads the clock: ``now`` is an argument.

Error codes (what boto3 users see as ``ClientError.response["Error"]["Code"]``, HTTP 403):

* ``UnrecognizedClientException``: the request is not signed; the access key id is unknown;
  the key is Inactive. AWS answers a disabled key exactly as an unknown one (it does not say
  the key exists); we say so in the message, since the caller already holds the key, but
  keep AWS's code so SDK retry and error handling behave as against AWS.
* ``InvalidSignatureException``: everything else: a malformed Authorization header, an
  algorithm other than AWS4-HMAC-SHA256, a credential scope for another service (or another
  region, when the head names one), a missing or unparseable X-Amz-Date, a request older or
  newer than ``max_skew_s`` (AWS's "Signature expired" wording), an
  ``x-amz-content-sha256`` that is not the body's hash, and a signature that does not match.
  (AWS reports a malformed header as ``IncompleteSignatureException``; the issue asks for
  one code for every bad signature, and boto3 treats both alike.)

Services: the head verifies scope ``batch`` on AWS Batch's routes and ``logs`` on CloudWatch
Logs' (hpcbatch.head.cwlogs, ``service="logs"``); a key signs for either, as an AWS key does,
but a signature scoped to one service is refused by the other.

Only the head needs this module at import time; the client imports it (and so botocore,
~100 ms) only when it signs, never for ``unix:`` endpoints.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hpcbatch.auth.keys import AccessKey
from hpcbatch.errors import HpcbatchError

__all__ = [
    "ALGORITHM",
    "AuthError",
    "RequestSigner",
    "SignedAuthorization",
    "parse_authorization",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"
INVALID_SIGNATURE = "InvalidSignatureException"

# AWS's own sentences, so that searching the message finds AWS's documentation.
_INVALID_TOKEN = "The security token included in the request is invalid"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)

_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z\Z", re.ASCII)
_SIGNATURE = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+\Z", re.ASCII)  # RFC 9110 token, lowercased
_SHOWN = 120  # characters of a bad header value echoed back in a message


class AuthError(HpcbatchError):
    """The request could not be authenticated (HTTP 403, with AWS's error code)."""

    http_status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.aws_code = code


class SignedAuthorization(NamedTuple):
    """The parts of a SigV4 Authorization header."""

    access_key_id: str
    date: str  # YYYYMMDD, from the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]  # lowercased, in the order given
    signature: str  # 64 lowercase hex digits


def _bad(message: str) -> AuthError:
    return AuthError(INVALID_SIGNATURE, message)


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def parse_authorization(value: str) -> SignedAuthorization:
    """Split a SigV4 Authorization header into its parts; AuthError if it is malformed."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _bad(
            f"Unsupported signature algorithm {_shown(algorithm)!r}: "
            f"hpcbatch accepts only {ALGORITHM} (AWS Signature Version 4)."
        )
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, param = part.strip().partition("=")
        if not eq or name in params:
            raise _bad(
                f"Authorization header is malformed at {_shown(part.strip())!r}: expected "
                f"Credential=..., SignedHeaders=..., Signature=... Authorization={_shown(value)}"
            )
        params[name] = param
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if missing:
        raise _bad(" ".join(missing) + f" Authorization={_shown(value)}")

    scope = params["Credential"].split("/")
    if len(scope) != 5 or not scope[0] or not scope[2]:
        raise _bad(
            "Authorization header's Credential is malformed: expected "
            f"<access key id>/<YYYYMMDD>/<region>/<service>/aws4_request, "
            f"not {_shown(params['Credential'])!r}."
        )
    key_id, date, region, service, terminator = scope
    if terminator != "aws4_request":
        raise _bad(
            "Credential should be scoped with a valid terminator: 'aws4_request', "
            f"not {_shown(terminator)!r}."
        )
    if len(date) != 8 or not date.isascii() or not date.isdigit():
        raise _bad(f"Credential should be scoped to a date as YYYYMMDD, not {_shown(date)!r}.")

    signed = tuple(params["SignedHeaders"].split(";"))
    for name in signed:
        if not _HEADER_NAME.match(name):
            raise _bad(
                f"SignedHeaders must be lowercase header names separated by ';', "
                f"not {_shown(params['SignedHeaders'])!r}."
            )
    if "host" not in signed:
        raise _bad("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")

    signature = params["Signature"]
    if not _SIGNATURE.match(signature):
        raise _bad(f"Signature must be 64 lowercase hexadecimal digits. {_MISMATCH}")
    return SignedAuthorization(key_id, date, region, service, signed, signature)


def _parse_amz_date(value: str) -> float:
    """``20261130T010000Z`` -> epoch seconds; AuthError if it is not that shape or no date."""
    m = _AMZ_DATE.match(value)
    if m is not None:
        try:
            year, month, day, hour, minute, second = (int(g) for g in m.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
        except ValueError:
            pass
    raise _bad(
        f"X-Amz-Date must be a UTC time as YYYYMMDD'T'HHMMSS'Z' (20261130T013000Z), "
        f"not {_shown(value)!r}."
    )


def _amz_date(epoch_s: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_s))


def _skew_words(max_skew_s: float) -> str:
    return f"{max_skew_s / 60:g} min." if max_skew_s % 60 == 0 else f"{max_skew_s:g} s."


def _check_time(amz_date: str, signed_at: float, now: float, max_skew_s: float) -> None:
    """Refuse a request signed more than ``max_skew_s`` from now, in AWS's words."""
    if signed_at < now - max_skew_s:
        raise _bad(
            f"Signature expired: {amz_date} is now earlier than {_amz_date(now - max_skew_s)} "
            f"({_amz_date(now)} - {_skew_words(max_skew_s)})"
        )
    if signed_at > now + max_skew_s:
        raise _bad(
            f"Signature not yet current: {amz_date} is still later than "
            f"{_amz_date(now + max_skew_s)} ({_amz_date(now)} + {_skew_words(max_skew_s)})"
        )


class _Signer(SigV4Auth):
    """botocore's SigV4 with the two things it otherwise guesses given, not guessed.

    ``headers_to_sign``: exactly the request's headers (the caller put only the signed ones
    there), not botocore's "every header but a blacklist, plus host from the URL".
    ``payload``: the body hash already computed, instead of preparing the request again.
    """

    def __init__(self, credentials: Credentials, service: str, region: str, body_sha256: str):
        super().__init__(credentials, service, region)
        self._body_sha256 = body_sha256

    def headers_to_sign(self, request: Any) -> Any:
        return request.headers

    def payload(self, request: Any) -> str:
        return self._body_sha256


def _all_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)  # aiohttp's CIMultiDictProxy: repeated headers
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]


class SignedRequest(NamedTuple):
    """An HTTP request as SigV4 sees it: ``path`` and ``query`` still percent-encoded, as sent."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def _expected_signature(
    auth: SignedAuthorization,
    secret: str,
    request: SignedRequest,
    signed_values: Iterable[tuple[str, str]],
    body_sha256: str,
    amz_date: str,
) -> str:
    """The signature botocore computes for this request at its own timestamp."""
    url = "http://hpcbatch" + request.path + ("?" + request.query if request.query else "")
    aws = AWSRequest(method=request.method, url=url)
    for name, value in signed_values:
        aws.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    aws.context["timestamp"] = amz_date  # what add_auth would set from the clock
    signer = _Signer(
        Credentials(auth.access_key_id, secret), auth.service, auth.region, body_sha256
    )
    canonical = signer.canonical_request(aws)
    return str(signer.signature(signer.string_to_sign(aws, canonical), aws))


def _authorization(request: SignedRequest) -> SignedAuthorization:
    """The parsed Authorization header, or why the request is not signed at all."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        if "X-Amz-Signature=" in request.query:
            reason = "query-string (presigned URL) authentication is not supported"
        else:
            reason = "it has no Authorization header"
        raise AuthError(
            UNRECOGNIZED_CLIENT,
            f"Request is not signed: {reason}. Sign it with AWS Signature Version 4 and an "
            "hpcbatch access key (boto3 and the aws CLI do, given the key).",
        )
    return parse_authorization(authorization)


def _check_scope(auth: SignedAuthorization, region: str | None, service: str) -> None:
    if auth.service != service:
        raise _bad(f"Credential should be scoped to correct service: '{service}'.")
    if region is not None and auth.region != region:
        raise _bad(
            f"Credential should be scoped to a valid region, not '{_shown(auth.region)}': "
            f"this head's region is '{region}'."
        )


def _signed_date(request: SignedRequest, auth: SignedAuthorization) -> tuple[str, float]:
    """``X-Amz-Date`` as sent and as epoch seconds, checked against the credential scope."""
    amz_date = request.headers.get("x-amz-date")
    if amz_date is None:
        raise _bad(
            "Authorization header requires existence of a 'X-Amz-Date' header. "
            f"Authorization={_shown(request.headers.get('authorization', ''))}"
        )
    signed_at = _parse_amz_date(amz_date)
    if amz_date[:8] != auth.date:
        raise _bad(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    return amz_date, signed_at


def _active_key(auth: SignedAuthorization, lookup: Callable[[str], AccessKey | None]) -> AccessKey:
    key = lookup(auth.access_key_id)
    if key is None:
        raise AuthError(
            UNRECOGNIZED_CLIENT,
            f"{_INVALID_TOKEN} (unknown access key id {_shown(auth.access_key_id)}).",
        )
    if key.status != "Active":
        raise AuthError(
            UNRECOGNIZED_CLIENT,
            f"{_INVALID_TOKEN} (access key {key.access_key_id} is disabled).",
        )
    return key


def _body_sha256(request: SignedRequest) -> str:
    body_sha256 = hashlib.sha256(request.body).hexdigest()
    declared = request.headers.get("x-amz-content-sha256")
    if declared is not None and declared != body_sha256:
        raise _bad("The provided 'x-amz-content-sha256' header does not match what was computed.")
    return body_sha256


def _signed_values(request: SignedRequest, auth: SignedAuthorization) -> list[tuple[str, str]]:
    signed_values: list[tuple[str, str]] = []
    for name in auth.signed_headers:
        values = _all_values(request.headers, name)
        if not values:
            raise _bad(f"{_MISMATCH} (signed header '{name}' is not in the request)")
        signed_values.extend((name, v) for v in values)
    return signed_values


def verify(
    request: SignedRequest,
    now: float,
    lookup: Callable[[str], AccessKey | None],
    *,
    region: str | None = None,
    service: str = "batch",
    max_skew_s: float = 300,
) -> AccessKey:
    """Check a request's SigV4 signature; return the key that signed it, or raise AuthError.

    ``request.path`` and ``request.query`` are as sent, still percent-encoded (aiohttp's
    ``request.raw_path`` split at ``?``); ``headers`` is looked up case-insensitively; ``now``
    is epoch seconds. ``region=None`` accepts any region in the credential scope (clients pick
    theirs freely).
    """
    auth = _authorization(request)
    _check_scope(auth, region, service)
    amz_date, signed_at = _signed_date(request, auth)
    key = _active_key(auth, lookup)
    _check_time(amz_date, signed_at, now, max_skew_s)
    body_sha256 = _body_sha256(request)
    signed_values = _signed_values(request, auth)
    try:
        expected = _expected_signature(
            auth, key.secret_access_key, request, signed_values, body_sha256, amz_date
        )
    except (ValueError, TypeError, UnicodeError) as exc:  # an unparseable URL or header value
        raise _bad(f"{_MISMATCH} ({type(exc).__name__}: {_shown(str(exc))})") from None
    if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("ascii")):
        raise _bad(_MISMATCH)
    return key


class RequestSigner:
    """Signs our client's requests as boto3 does: service ``batch``, the key's region scope."""

    def __init__(
        self, access_key_id: str, secret_access_key: str, region: str, service: str = "batch"
    ) -> None:
        self.access_key_id = access_key_id
        self.region = region
        self.service = service
        self._signer = SigV4Auth(Credentials(access_key_id, secret_access_key), service, region)

    def headers(
        self,
        method: str,
        host: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
    ) -> list[tuple[str, str]]:
        """``X-Amz-Date`` and ``Authorization`` for a request with these headers (Host included).

        Every header given is signed, so pass exactly the ones sent (never Content-Length or
        Connection, which proxies may rewrite). ``now`` defaults to the clock.
        """
        request = AWSRequest(method=method, url=f"http://{host}{path}", headers=headers, data=body)
        if "host" not in request.headers:
            request.headers["Host"] = host
        stamp = _amz_date(time.time() if now is None else now)
        # add_auth's steps with the timestamp ours to give (add_auth always reads the clock).
        request.context["timestamp"] = stamp
        request.headers["X-Amz-Date"] = stamp
        signer = self._signer
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        signed = signer.signed_headers(signer.headers_to_sign(request))
        authorization = (
            f"{ALGORITHM} Credential={signer.scope(request)}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return [("X-Amz-Date", stamp), ("Authorization", authorization)]
