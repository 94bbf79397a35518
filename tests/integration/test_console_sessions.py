"""A console session survives a restart of the head (kill -9 and start, as an upgrade or a
crash does) and a failover to a standby head (PostgreSQL), over real HTTP with the session
cookie, and ends when its access key is made Inactive (hpcbatch.console.sessions)."""

from __future__ import annotations

from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, OpenerDirector, build_opener

from tests.harness import TestCluster, wait_for
from tests.pg import PostgresServer


def _path(opener: OpenerDirector, url: str, data: bytes | None = None) -> str:
    """Where the console sends the browser (the login page when it is not signed in)."""
    with opener.open(url, data=data, timeout=10) as response:
        return str(response.url).split("/console", 1)[1]


def test_a_console_session_survives_a_head_restart_and_ends_with_its_key(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=1)
    try:
        c.up()
        key = c.client.call("/hpcbatch/v1/createaccesskey", {"user": "alice", "role": "user"})
        browser = build_opener(HTTPCookieProcessor(CookieJar()))
        form = urlencode({"access_key_id": key["accessKeyId"], "secret_access_key": key["secretAccessKey"]})
        assert _path(browser, c.endpoint + "/console/login", form.encode()) == "/"
        assert _path(browser, c.endpoint + "/console/jobs") == "/jobs"
        c.kill("head")  # kill -9: nothing of the session in memory survives
        c.start_head()
        wait_for(lambda: c.client.call("/hpcbatch/v1/whoami", {}), 30, what="the head to answer again")
        assert _path(browser, c.endpoint + "/console/jobs") == "/jobs"  # still signed in
        stranger = build_opener(HTTPCookieProcessor(CookieJar()))
        assert _path(stranger, c.endpoint + "/console/jobs") == "/login"
        c.client.call("/hpcbatch/v1/updateaccesskey", {"accessKeyId": key["accessKeyId"], "status": "Inactive"})
        assert _path(browser, c.endpoint + "/console/jobs") == "/login"  # the key's sessions end with it
    finally:
        c.close()


def test_a_console_session_survives_a_failover_to_the_standby(tmp_path: Path, postgres: PostgresServer) -> None:
    """Signed in at the active head; it is killed, the standby takes over, and the same cookie
    (cookies go by host, not port) is a session there: the session was in the shared store."""
    c = TestCluster(tmp_path, nodes=1, store="postgresql", heads=2)
    try:
        c.up()
        assert c.active_head() == "head"
        key = c.client.call("/hpcbatch/v1/createaccesskey", {"user": "alice", "role": "user"})
        browser = build_opener(HTTPCookieProcessor(CookieJar()))
        form = urlencode({"access_key_id": key["accessKeyId"], "secret_access_key": key["secretAccessKey"]})
        first, second = c.heads["head"]["endpoint"], c.heads["head2"]["endpoint"]
        assert _path(browser, first + "/console/login", form.encode()) == "/"
        c.kill("head")
        assert c.active_head(timeout=20) == "head2"
        assert _path(browser, second + "/console/jobs") == "/jobs"
        assert _path(build_opener(HTTPCookieProcessor(CookieJar())), second + "/console/jobs") == "/login"
    finally:
        c.close()
