"""The web console in a real browser (Playwright driving Debian's Chromium) against a real cluster.

Sign-in by one-time link (``hpcbatch console``) and by access key, a job submitted through
the form reaching SUCCEEDED without a reload and its log, cancelling a RUNNABLE job,
draining a node as admin, and another user kept away from a job's log. Every page is
saved as a screenshot in ``$HPCBATCH_SCREENSHOTS`` (default tests/artifacts/screenshots).

Needs root (real Unix users own the jobs; CI runs as root), ``playwright`` and
``/usr/bin/chromium`` (``scripts/setup`` installs Debian's chromium when root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import prereq
from tests.harness import TestCluster, wait_for
from tests.users import ensure_users, need_root

CHROMIUM = "/usr/bin/chromium"
ALICE, BOB = "hpcb_alice", "hpcb_bob"
SCREENSHOTS = Path(os.environ.get("HPCBATCH_SCREENSHOTS") or Path(__file__).parents[1] / "artifacts" / "screenshots")

sync_api = prereq.importorskip("playwright.sync_api", "chromium", "playwright is not installed (pip install playwright)")
if not os.access(CHROMIUM, os.X_OK):
    prereq.skip("chromium", f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def cc() -> Iterator[TestCluster]:
    """A 2-node cluster whose folders the test users can reach, plus a queue that never runs jobs."""
    need_root()
    ensure_users()
    root = tempfile.mkdtemp(prefix="hpcb-console-")
    os.chmod(root, 0o755)
    c = TestCluster(Path(root), nodes=2, head_extra="private_data = false\n")
    try:
        c.up()
        # "parked": its only compute environment is DISABLED, so its jobs stay RUNNABLE.
        c.client.create_compute_environment(computeEnvironmentName="parked", type="UNMANAGED", state="DISABLED")
        c.client.create_job_queue(jobQueueName="parked", priority=1,
                                  computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "parked"}])
        for memory in ("256", "1024"):  # two revisions, shown side by side
            c.client.register_job_definition(jobDefinitionName="train", type="container", containerProperties={
                "command": ["python3", "train.py"], "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                                            {"type": "MEMORY", "value": memory}]})
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def admin_page(cc: TestCluster, browser: Any) -> Any:
    """A browser signed in as root (admin) with the link `hpcbatch console` prints."""
    out = subprocess.run(
        [sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", cc.socket_endpoint, "console"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    url = next(word for word in out.split() if "/console/login?token=" in word)
    page = browser.new_context(viewport={"width": 1366, "height": 800}).new_page()
    page.goto(url)
    page.wait_for_url("**/console/")
    return page


def key_page(cc: TestCluster, browser: Any, user: str) -> Any:
    """A browser signed in with an access key issued to ``user`` (role user)."""
    key = cc.client.call("/hpcbatch/v1/createaccesskey", {"user": user, "role": "user"})
    page = browser.new_context(viewport={"width": 1366, "height": 800}).new_page()
    page.goto(cc.endpoint + "/console/login")
    page.fill("input[name=access_key_id]", key["accessKeyId"])
    page.fill("input[name=secret_access_key]", key["secretAccessKey"])
    page.click("button[type=submit]")
    page.wait_for_url("**/console/")
    return page


def submit_form(page: Any, cc: TestCluster, name: str, command: str, queue: str = "default", **fields: str) -> str:
    page.goto(cc.endpoint + "/console/submit")
    page.fill("input[name=jobName]", name)
    page.select_option("select[name=jobQueue]", queue)
    page.fill("input[name=command]", command)
    for field, value in fields.items():
        page.fill(f"input[name={field}]", value)
    page.click("#submit")
    page.wait_for_url("**/console/jobs/*")
    return page.url.rsplit("/", 1)[-1]


def test_the_one_time_link_signs_in_once_and_every_page_renders(cc: TestCluster, browser: Any) -> None:
    page = admin_page(cc, browser)
    assert "root" in page.inner_text("header")
    for path, name in (("/console/jobs", "jobs"), ("/console/submit", "submit"),
                       ("/console/jobdefs", "jobdefs"), ("/console/queues", "queues"), ("/console/nodes", "nodes")):
        page.goto(cc.endpoint + path)
        assert page.locator("h1").first.is_visible()
        shot(page, name)


def test_a_used_link_is_refused(cc: TestCluster, browser: Any) -> None:
    link = cc.client.call("/hpcbatch/v1/createconsolelink", {})
    first = browser.new_context().new_page()
    first.goto(link["url"])
    first.wait_for_url("**/console/")
    second = browser.new_context().new_page()
    response = second.goto(link["url"])
    assert response.status == 403
    assert "used already" in second.inner_text("main")


def test_a_job_submitted_in_the_form_succeeds_live_and_shows_its_log(cc: TestCluster, browser: Any) -> None:
    page = key_page(cc, browser, ALICE)
    job_id = submit_form(page, cc, "from-the-form", "sh -c 'sleep 1; echo hello from the console'")
    page.evaluate("window.__noReload = 42")  # gone if the page reloads
    page.wait_for_function("document.querySelector('#job-status').textContent.includes('SUCCEEDED')", timeout=30_000)
    assert page.evaluate("window.__noReload") == 42
    page.wait_for_function("document.querySelector('#log').textContent.includes('hello from the console')", timeout=15_000)
    assert cc.job(job_id)["owner"] == ALICE
    assert "RUNNING" in page.inner_text("#job-timeline")
    shot(page, "job-succeeded")


def test_a_runnable_job_is_cancelled_from_its_page(cc: TestCluster, browser: Any) -> None:
    page = key_page(cc, browser, ALICE)
    job_id = submit_form(page, cc, "parked-job", "true", queue="parked")
    page.wait_for_function("document.querySelector('#job-status').textContent.includes('RUNNABLE')", timeout=15_000)
    page.reload()
    assert page.locator("#why").is_visible()  # why it waits, while RUNNABLE
    shot(page, "job-runnable")
    page.fill("form[action$='/cancel'] input[name=reason]", "changed my mind")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#job-status').textContent.includes('FAILED')", timeout=15_000)
    detail = cc.job(job_id)
    assert detail["status"] == "FAILED" and detail["statusReason"] == "changed my mind"


def test_another_user_cannot_read_a_jobs_log(cc: TestCluster, browser: Any) -> None:
    alice = key_page(cc, browser, ALICE)
    job_id = submit_form(alice, cc, "secret-output", "sh -c 'echo alice-$((6*7))'")
    cc.wait_status(job_id, "SUCCEEDED")
    bob = key_page(cc, browser, BOB)
    bob.goto(cc.endpoint + f"/console/jobs/{job_id}")
    assert bob.locator("#log-denied").is_visible()
    assert bob.locator("#log").count() == 0
    assert bob.locator("#cancel, #terminate").count() == 0
    response = bob.request.get(cc.endpoint + f"/console/jobs/{job_id}/log")
    assert response.status == 403
    assert "alice-42" in cc.logs(job_id)  # the output exists, and the owner's API shows it
    assert "alice-42" not in response.text() + bob.content()
    shot(bob, "job-other-user")


def test_a_form_post_without_the_csrf_token_is_refused(cc: TestCluster, browser: Any) -> None:
    page = key_page(cc, browser, ALICE)
    response = page.request.post(cc.endpoint + "/console/submit", form={"jobName": "x", "jobQueue": "default",
                                                                         "jobDefinition": "hpcbatch-default", "command": "true"})
    assert response.status == 403


def test_an_array_parent_expands_to_its_children(cc: TestCluster, browser: Any) -> None:
    page = key_page(cc, browser, ALICE)
    job_id = submit_form(page, cc, "array-of-3", "true", arraySize="3")
    cc.wait_status(job_id, "SUCCEEDED")
    page.goto(cc.endpoint + "/console/jobs?name=array-of-3")
    page.click(f"tr[data-job='{job_id}'] button.expand")
    page.wait_for_selector("tr.child")
    assert page.locator("tr.child").count() == 3
    shot(page, "jobs-array-expanded")


def test_an_admin_drains_and_resumes_a_node_and_a_user_cannot(cc: TestCluster, browser: Any) -> None:
    user = key_page(cc, browser, ALICE)
    user.goto(cc.endpoint + "/console/nodes")
    assert user.locator("button.drain").count() == 0
    page = admin_page(cc, browser)
    page.goto(cc.endpoint + "/console/nodes")
    row = "tr[data-node='node2']"
    page.fill(f"{row} input[name=reason]", "disk swap")
    page.click(f"{row} button.drain")
    page.wait_for_function(f"document.querySelector(\"{row} .state\").textContent.includes('DRAINED')", timeout=15_000)
    assert "disk swap" in page.inner_text(row)
    assert cc.nodes()["node2"]["state"] == "DRAINED"
    shot(page, "nodes-drained")
    page.click(f"{row} button.resume")
    wait_for(lambda: cc.nodes()["node2"]["state"] == "ACTIVE", 15, what="node2 ACTIVE again")


def test_the_overview_charts_what_ran(cc: TestCluster, browser: Any) -> None:
    page = admin_page(cc, browser)
    for _ in range(3):  # a few jobs, so the chart has points
        cc.wait_status(cc.submit(["sleep", "1"]), "SUCCEEDED")
    page.reload()
    assert page.locator("svg.chart polyline").count() == 4
    bars = page.text_content("svg.bars") or ""
    assert "SUCCEEDED" in bars
    shot(page, "overview")


def test_the_nodes_page_pages_over_listnodes_and_filters_by_state(cc: TestCluster, browser: Any) -> None:
    page = admin_page(cc, browser)
    page.goto(cc.endpoint + "/console/nodes?size=1")
    assert page.locator("tr[data-node]").count() == 1 and page.locator("tr[data-node='node1']").count() == 1
    assert page.locator("#nodes-previous, #nodes-first").count() == 0
    page.click("#nodes-next")
    page.wait_for_selector("tr[data-node='node2']")
    assert page.locator("#nodes-next").count() == 0  # two nodes: the second page is the last
    second = page.url
    page.click("tr[data-node='node2'] button.drain")  # an action returns to the page it was taken on
    page.wait_for_url(second)
    page.wait_for_selector("tr[data-node='node2'] button.resume")
    page.click("tr[data-node='node2'] button.resume")
    page.wait_for_selector("tr[data-node='node2'] button.drain")  # the redirect shows it ACTIVE
    assert page.url == second and cc.nodes()["node2"]["state"] == "ACTIVE"
    page.click("#nodes-previous")
    page.wait_for_selector("tr[data-node='node1']")
    page.select_option("select[name=state]", "DOWN")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**state=DOWN**")
    assert page.locator("tr[data-node]").count() == 0 and "No DOWN nodes" in page.inner_text("#nodes")
    page.goto(cc.endpoint + "/console/nodes?state=ASLEEP")
    assert "state must be one of" in page.inner_text("p.error")
    shot(page, "nodes-paged")
