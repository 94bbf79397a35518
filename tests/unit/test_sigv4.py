"""SigV4 on the head (``hpcbatch.auth.sigv4.verify``) against requests boto3's own signer made.

Every request here is signed by botocore as boto3 signs an AWS Batch call (or by boto3 itself,
or by our Client), then checked by ``verify`` with ``now`` given: no clock, no head process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import socketserver
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.auth
import msgspec
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from hpcbatch.auth.keys import AccessKey, credentials_profile, generate_access_key
from hpcbatch.auth.sigv4 import AuthError, RequestSigner, SignedRequest, parse_authorization, verify
from hpcbatch.client import Client, find_credentials
from hpcbatch.errors import ClientError, HpcbatchError
from tests import prereq

KEY = AccessKey(
    access_key_id="AKIAHPCBATCHTEST0001",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    user="alice",
    role="user",
    status="Active",
    created_at=1_700_000_000_000,
)
DISABLED = msgspec.structs.replace(KEY, access_key_id="AKIAHPCBATCHTEST0002", status="Inactive")
KEYS = {k.access_key_id: k for k in (KEY, DISABLED)}
SIGNED_AT = dt.datetime(2026, 11, 30, 1, 30, tzinfo=dt.UTC)
NOW = SIGNED_AT.timestamp()
HOST = "head.example:8471"
BODY = json.dumps(
    {
        "jobName": "hello",
        "jobQueue": "default",
        "jobDefinition": "hpcbatch-default",
        "containerOverrides": {"command": ["echo", "hi"]},
    }
).encode()

UNRECOGNIZED = "UnrecognizedClientException"
INVALID = "InvalidSignatureException"
MISMATCH = "The request signature we calculated does not match the signature you provided."


@dataclass(frozen=True)
class Wire:
    """A request as the head's API layer sees it."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def with_headers(self, **changes: str | None) -> Wire:
        """The same request with headers replaced (``None`` removes one); names use ``_``."""
        headers = CIMultiDict(self.headers)
        for name, value in changes.items():
            name = name.replace("_", "-")
            headers.popall(name, None)
            if value is not None:
                headers[name] = value
        return replace(self, headers=CIMultiDictProxy(headers))


def boto_signed(
    body: bytes = BODY,
    key: AccessKey = KEY,
    at: dt.datetime = SIGNED_AT,
    region: str = "us-east-1",
    service: str = "batch",
    path: str = "/v1/submitjob",
    extra: Mapping[str, str] | None = None,
) -> Wire:
    """POST ``path`` signed by botocore's SigV4Auth.add_auth at ``at``, as boto3 signs Batch."""
    request = AWSRequest(
        method="POST",
        url=f"http://{HOST}{path}",
        headers={"Content-Type": "application/json", **(extra or {})},
        data=body,
    )
    signer = SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), service, region)
    naive_utc = at.astimezone(dt.UTC).replace(tzinfo=None)  # what botocore's clock returns
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda: naive_utc):
        signer.add_auth(request)
    # What urllib3 then adds on the wire, and a header boto3 sends without signing it.
    wire = CIMultiDict(request.headers.items())
    wire["Host"] = HOST
    wire["Content-Length"] = str(len(body))
    wire["User-Agent"] = "Boto3/1.40 md/Botocore#1.40 ua/2.1 os/linux"
    return Wire("POST", path, "", CIMultiDictProxy(wire), body)


def check(wire: Wire, now: float = NOW, **kwargs: Any) -> AccessKey:
    return verify(SignedRequest(wire.method, wire.path, wire.query, wire.headers, wire.body), now, KEYS.get, **kwargs)


def refused(wire: Wire, now: float = NOW, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        check(wire, now, **kwargs)
    return info.value


# -- the happy path ------------------------------------------------------------------------


def test_request_signed_as_boto3_signs_verifies_and_names_its_key() -> None:
    assert check(boto_signed()) == KEY


def test_real_boto3_batch_call_verifies() -> None:
    boto3 = prereq.importorskip("boto3", "boto3")
    sent: list[Any] = []

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield b'{"jobArn": "arn:x", "jobName": "hello", "jobId": "j-1"}'

    def capture(request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        sent.append(request)
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, Raw())

    batch = boto3.client(
        "batch",
        endpoint_url=f"http://{HOST}",
        region_name="local",
        aws_access_key_id=KEY.access_key_id,
        aws_secret_access_key=KEY.secret_access_key,
    )
    batch.meta.events.register("before-send.batch.SubmitJob", capture)
    batch.submit_job(jobName="hello", jobQueue="default", jobDefinition="hpcbatch-default")
    (request,) = sent
    headers = CIMultiDict(
        (name, value.decode("latin-1") if isinstance(value, bytes) else value)
        for name, value in request.headers.items()  # botocore has encoded some values
    )
    headers["Host"] = HOST  # urllib3 adds it on the wire
    wire = Wire("POST", "/v1/submitjob", "", CIMultiDictProxy(headers), request.body)
    assert check(wire, now=time.time()) == KEY


def test_extra_unsigned_headers_do_not_matter() -> None:
    wire = boto_signed().with_headers(X_Forwarded_For="10.0.0.9", Accept_Encoding="identity")
    assert check(wire) == KEY


def test_any_region_is_accepted_unless_the_head_names_one() -> None:
    assert check(boto_signed(region="eu-north-1")) == KEY
    assert check(boto_signed(region="local"), region="local") == KEY
    error = refused(boto_signed(region="eu-north-1"), region="local")
    assert error.aws_code == INVALID and "region" in error.message


def test_matching_x_amz_content_sha256_is_accepted() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    assert check(boto_signed(extra={"X-Amz-Content-SHA256": digest})) == KEY


def test_repeated_signed_header_values_are_joined_as_sigv4_says() -> None:
    request = AWSRequest(method="POST", url=f"http://{HOST}/v1/submitjob", data=BODY)
    request.headers["Content-Type"] = "application/json"
    request.headers["X-Tag"] = "a"
    request.headers["X-Tag"] = "b"  # HTTPHeaders keeps both, as the wire does
    with mock.patch.object(
        botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None)
    ):
        SigV4Auth(Credentials(KEY.access_key_id, KEY.secret_access_key), "batch", "x").add_auth(
            request
        )
    headers = CIMultiDict(request.headers.items())
    headers["Host"] = HOST
    assert headers.getall("X-Tag") == ["a", "b"]
    assert check(Wire("POST", "/v1/submitjob", "", CIMultiDictProxy(headers), BODY)) == KEY


# -- who: unsigned, unknown, disabled --------------------------------------------------------


def test_unsigned_request_is_an_unrecognized_client() -> None:
    error = refused(boto_signed().with_headers(Authorization=None))
    assert error.aws_code == UNRECOGNIZED
    assert error.message.startswith("Request is not signed: ")
    assert error.http_status == 403


def test_unknown_access_key_is_an_unrecognized_client() -> None:
    stranger = msgspec.structs.replace(KEY, access_key_id="AKIAUNKNOWNUNKNOWN00")
    error = refused(boto_signed(key=stranger))
    assert error.aws_code == UNRECOGNIZED
    assert "unknown access key id AKIAUNKNOWNUNKNOWN00" in error.message


def test_disabled_key_is_refused_as_aws_refuses_it() -> None:
    error = refused(boto_signed(key=DISABLED))
    assert error.aws_code in ("UnrecognizedClientException", "AccessDeniedException")
    assert f"access key {DISABLED.access_key_id} is disabled" in error.message


# -- what: the signature ---------------------------------------------------------------------


def test_wrong_secret_is_an_invalid_signature() -> None:
    forged = msgspec.structs.replace(KEY, secret_access_key="x" * 40)
    error = refused(boto_signed(key=forged))
    assert error.aws_code == INVALID
    assert error.message.startswith(MISMATCH)


def test_tampered_body_is_an_invalid_signature() -> None:
    wire = boto_signed()
    tampered = replace(wire, body=wire.body.replace(b"echo", b"rm -rf"))
    error = refused(tampered)
    assert (error.aws_code, error.message.startswith(MISMATCH)) == (INVALID, True)


@pytest.mark.parametrize(
    "header, value",
    [("Content-Type", "text/plain"), ("Host", "other.example:8471"), ("X-Amz-Date", None)],
)
def test_tampered_signed_header_is_an_invalid_signature(header: str, value: str | None) -> None:
    wire = boto_signed().with_headers(**{header.replace("-", "_"): value})
    assert refused(wire).aws_code == INVALID


def test_tampered_path_or_method_is_an_invalid_signature() -> None:
    wire = boto_signed()
    assert refused(replace(wire, path="/v1/terminatejob")).aws_code == INVALID
    assert refused(replace(wire, method="PUT")).aws_code == INVALID
    assert refused(replace(wire, query="a=b")).aws_code == INVALID


def test_x_amz_content_sha256_that_is_not_the_body_hash_is_refused() -> None:
    wire = boto_signed().with_headers(X_Amz_Content_SHA256=hashlib.sha256(b"other").hexdigest())
    error = refused(wire)
    assert error.aws_code == INVALID and "x-amz-content-sha256" in error.message


def test_signature_for_another_service_is_refused() -> None:
    error = refused(boto_signed(service="s3"))
    assert error.aws_code == INVALID
    assert error.message == "Credential should be scoped to correct service: 'batch'."


# -- when: the clock ----------------------------------------------------------------------


def test_request_20_minutes_old_has_expired_in_aws_words() -> None:
    error = refused(boto_signed(), now=NOW + 20 * 60)
    assert error.aws_code == INVALID
    assert error.message == (
        "Signature expired: 20261130T013000Z is now earlier than 20261130T014500Z "
        "(20261130T015000Z - 5 min.)"
    )


def test_request_4_minutes_old_is_accepted() -> None:
    assert check(boto_signed(), now=NOW + 4 * 60) == KEY


def test_request_from_20_minutes_ahead_is_not_yet_current() -> None:
    error = refused(boto_signed(), now=NOW - 20 * 60)
    assert error.aws_code == INVALID
    assert error.message.startswith("Signature not yet current: 20261130T013000Z is still later")


def test_skew_allowance_is_a_parameter() -> None:
    assert refused(boto_signed(), now=NOW + 61, max_skew_s=60).aws_code == INVALID
    assert check(boto_signed(), now=NOW + 60, max_skew_s=60) == KEY


@pytest.mark.parametrize("amz_date", [None, "", "yesterday", "20261130T013000", "20261331T000000Z"])
def test_missing_or_unparseable_x_amz_date_is_refused(amz_date: str | None) -> None:
    error = refused(boto_signed().with_headers(X_Amz_Date=amz_date))
    assert error.aws_code == INVALID


def test_x_amz_date_on_another_day_than_the_scope_is_refused() -> None:
    error = refused(boto_signed().with_headers(X_Amz_Date="20261201T013000Z"))
    assert error.aws_code == INVALID and "Credential scope" in error.message


# -- malformed Authorization headers ---------------------------------------------------------

_GOOD = boto_signed().headers["Authorization"]
_SIG = _GOOD.rsplit("Signature=", 1)[1]
_CRED = f"Credential={KEY.access_key_id}/20261130/us-east-1/batch/aws4_request"


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer abc",
        "AWS4-HMAC-SHA1 " + _GOOD.split(" ", 1)[1],
        f"AWS {KEY.access_key_id}:c2lnbmF0dXJl",  # SigV2
        "AWS4-HMAC-SHA256",
        f"AWS4-HMAC-SHA256 {_CRED}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=host;x-amz-date",
        f"AWS4-HMAC-SHA256 {_CRED}, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 Credential={KEY.access_key_id}/20261130/us-east-1/batch, "
        f"SignedHeaders=host;x-amz-date, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 {_CRED}x, SignedHeaders=host;x-amz-date, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=content-type;x-amz-date, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=Host;X-Amz-Date, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=host;x-amz-date, Signature={_SIG[:-1]}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=host;x-amz-date, Signature={_SIG.upper()}",
        f"AWS4-HMAC-SHA256 {_CRED}, {_CRED}, SignedHeaders=host, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=host;;x-amz-date, Signature={_SIG}",
        f"AWS4-HMAC-SHA256 {_CRED}, SignedHeaders=host;x-amz-date, Signature={_SIG}, junk",
    ],
)
def test_malformed_authorization_is_an_invalid_signature(authorization: str) -> None:
    error = refused(boto_signed().with_headers(Authorization=authorization))
    assert error.aws_code == INVALID, error.message


def test_parse_authorization_reads_botocore_header() -> None:
    parsed = parse_authorization(_GOOD)
    assert parsed.access_key_id == KEY.access_key_id
    assert (parsed.date, parsed.region, parsed.service) == ("20261130", "us-east-1", "batch")
    assert parsed.signed_headers == ("content-type", "host", "x-amz-date")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_authorization_string_raises_only_auth_error(authorization: str) -> None:
    with pytest.raises(AuthError):
        check(boto_signed().with_headers(Authorization=authorization))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_GOOD)), st.integers(0, 20), st.text(max_size=20))
def test_mangled_authorization_never_raises_anything_else(at: int, cut: int, insert: str) -> None:
    mangled = _GOOD[:at] + insert + _GOOD[at + cut :]
    try:
        assert check(boto_signed().with_headers(Authorization=mangled)) == KEY
    except AuthError as error:
        assert error.aws_code in (INVALID, UNRECOGNIZED)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["X-Amz-Date", "Host", "Content-Type", "X-Amz-Content-SHA256"]),
        st.text(max_size=40),
    ),
    st.text(max_size=30),
    st.text(max_size=30),
)
def test_any_header_path_or_query_raises_only_auth_error(
    changes: dict[str, str], path: str, query: str
) -> None:
    wire = boto_signed().with_headers(**{k.replace("-", "_"): v for k, v in changes.items()})
    wire = replace(wire, path="/" + path, query=query)
    try:
        check(wire)
    except AuthError:
        pass


def test_auth_error_is_an_hpcbatch_error_answered_with_403() -> None:
    error = AuthError(INVALID, "nope")
    assert isinstance(error, HpcbatchError)
    assert (error.aws_code, error.http_status, error.message) == (INVALID, 403, "nope")


# -- keys ----------------------------------------------------------------------------------


def test_generated_keys_look_like_aws_keys_and_differ() -> None:
    keys = [generate_access_key("bob", "developer", 5) for _ in range(50)]
    for key in keys:
        assert re.fullmatch(r"AKIA[A-Z2-7]{16}", key.access_key_id)
        assert re.fullmatch(r"[A-Za-z0-9+/]{40}", key.secret_access_key)
        assert (key.user, key.role, key.status, key.created_at) == ("bob", "developer", "Active", 5)
    assert len({k.access_key_id for k in keys}) == len({k.secret_access_key for k in keys}) == 50


def test_generate_access_key_refuses_an_unknown_role() -> None:
    with pytest.raises(ClientError, match="role: must be one of admin, developer, user"):
        generate_access_key("bob", "root", 5)


def test_key_repr_hides_the_secret() -> None:
    assert KEY.secret_access_key not in repr(KEY)


def test_credentials_profile_is_the_aws_credentials_block() -> None:
    assert credentials_profile(KEY, "hpc") == (
        "[hpc]\n"
        f"aws_access_key_id = {KEY.access_key_id}\n"
        f"aws_secret_access_key = {KEY.secret_access_key}\n"
    )


# -- our own client signs --------------------------------------------------------------------


class VerifyingHead:
    """A stub head (TCP or Unix socket) that runs ``verify`` on every request it gets."""

    def __init__(self, unix_path: Path | None = None) -> None:
        self.seen: list[CIMultiDictProxy[str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = CIMultiDictProxy(CIMultiDict(self.headers.items()))
                stub.seen.append(headers)
                path, _, query = self.path.partition("?")
                status, doc = 200, {"ok": "yes"}
                if "Authorization" in headers or unix_path is None:
                    try:
                        key = verify(SignedRequest("POST", path, query, headers, body), time.time(), KEYS.get)
                        doc = {"user": key.user}
                    except AuthError as e:
                        status, doc = e.http_status, {"__type": e.aws_code, "message": e.message}
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        if unix_path is None:
            self.server: socketserver.BaseServer = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"  # type: ignore[attr-defined]
        else:

            class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
                daemon_threads = True

            class UnixHandler(Handler):
                def address_string(self) -> str:
                    return "unix"

            self.server = UnixHTTPServer(str(unix_path), UnixHandler)
            self.endpoint = f"unix:{unix_path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def head() -> Iterator[VerifyingHead]:
    stub = VerifyingHead()
    try:
        yield stub
    finally:
        stub.close()


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS credentials anywhere but what a test puts in ``tmp_path``."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    return tmp_path


def test_client_signature_verifies_on_the_head(head: VerifyingHead, no_aws_env: Path) -> None:
    with Client(head.endpoint, credentials=(KEY.access_key_id, KEY.secret_access_key)) as c:
        assert c.call("/v1/submitjob", {"jobName": "hi"}) == {"user": "alice"}
        assert c.describe_jobs(jobs=["a"]) == {"user": "alice"}  # keep-alive, signed again
    authorization = parse_authorization(head.seen[0]["Authorization"])
    assert (authorization.region, authorization.service) == ("local", "batch")
    assert authorization.signed_headers == ("accept", "content-type", "host", "x-amz-date")


def test_client_with_a_wrong_secret_gets_the_heads_refusal(
    head: VerifyingHead, no_aws_env: Path
) -> None:
    with Client(head.endpoint, credentials=(KEY.access_key_id, "y" * 40)) as c:
        with pytest.raises(ClientError, match="signature we calculated does not match"):
            c.list_nodes()


def test_client_finds_its_key_in_the_profile_and_region_in_env(
    head: VerifyingHead, no_aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (no_aws_env / "credentials").write_text(credentials_profile(KEY, "hpc"))
    monkeypatch.setenv("AWS_PROFILE", "hpc")
    monkeypatch.setenv("AWS_REGION", "site-a")
    assert find_credentials() == (KEY.access_key_id, KEY.secret_access_key)
    with Client(head.endpoint) as c:
        assert c.list_nodes() == {"user": "alice"}
    assert parse_authorization(head.seen[0]["Authorization"]).region == "site-a"


def test_client_reads_the_environment_before_the_files(
    no_aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (no_aws_env / "config").write_text(
        "[default]\naws_access_key_id = A\naws_secret_access_key = B\n"
    )
    assert find_credentials() == ("A", "B")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "C")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "D")
    assert find_credentials() == ("C", "D")


def test_a_named_profile_that_does_not_exist_is_an_error(
    no_aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(ClientError, match="AWS_PROFILE=nope: no such profile"):
        find_credentials()


def test_client_without_a_key_sends_unsigned(head: VerifyingHead, no_aws_env: Path) -> None:
    with Client(head.endpoint) as c:
        with pytest.raises(ClientError, match="Request is not signed"):
            c.list_nodes()
    assert "Authorization" not in head.seen[0]


def test_client_never_signs_over_a_unix_socket(tmp_path: Path, no_aws_env: Path) -> None:
    stub = VerifyingHead(unix_path=tmp_path / "head.sock")
    try:
        with Client(stub.endpoint, credentials=(KEY.access_key_id, KEY.secret_access_key)) as c:
            assert c.list_nodes() == {"ok": "yes"}
        assert "Authorization" not in stub.seen[0] and "X-Amz-Date" not in stub.seen[0]
    finally:
        stub.close()


def test_request_signer_matches_botocore_add_auth() -> None:
    headers = {"Host": HOST, "Content-Type": "application/json"}
    ours = dict(
        RequestSigner(KEY.access_key_id, KEY.secret_access_key, "us-east-1").headers(
            "POST", HOST, "/v1/submitjob", headers, BODY, now=NOW
        )
    )
    theirs = boto_signed()
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["X-Amz-Date"] == theirs.headers["X-Amz-Date"] == "20261130T013000Z"


def test_a_secrets_key_file_is_made_private_and_refused_when_open(tmp_path: Path) -> None:
    import os

    from hpcbatch.auth.keys import SecretBox, SecretsKeyError

    old = os.umask(0)
    try:
        box = SecretBox.load(tmp_path / "secrets.key")
    finally:
        os.umask(old)
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    sealed = box.seal("AKIA1", "secret")
    assert sealed.startswith("aesgcm1:") and "secret" not in sealed
    assert box.open("AKIA1", sealed) == "secret"
    with pytest.raises(SecretsKeyError):
        box.open("AKIA2", sealed)  # bound to its key id: not movable to another row
    (tmp_path / "secrets.key").chmod(0o644)
    with pytest.raises(SecretsKeyError, match=f"run chmod 600 {tmp_path / 'secrets.key'}"):
        SecretBox.load(tmp_path / "secrets.key")
