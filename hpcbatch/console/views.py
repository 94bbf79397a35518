"""The console's pages: server-rendered HTML (jinja2, autoescaped) under ``/console``.

Reads and actions go through :func:`hpcbatch.console.operations.perform` (the API's
operations and checks); the jobs list reads the store's indexed listing directly, with
ListJobs' own visibility rule, because it filters on state and name together (ListJobs
takes one or the other) and must stay fast at 100,000 jobs (keyset pages, no count).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from aiohttp import web

from hpcbatch.auth.keys import AccessKey
from hpcbatch.auth.policy import AccessDenied, Caller, authorize, may_see_job
from hpcbatch.console.nodepages import MAX_PAGE_SIZE, NodesPage, NodesView, read_page
from hpcbatch.console.nodepages import STATES as NODE_STATES
from hpcbatch.console.operations import perform
from hpcbatch.console.sessions import COOKIE, SESSION_TTL_S, Session, Sessions
from hpcbatch.errors import ClientError, HpcbatchError
from hpcbatch.head.events import EventFeed
from hpcbatch.head.service import BatchService
from hpcbatch.jobspec import SubmitRequest, submit_job_body
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import JobQuery

PAGE_SIZE = 50
HISTORY_POINTS = 360  # capacity samples kept for the overview chart
SAMPLE_INTERVAL_S = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _fmt_time(ms: int | None) -> str:
    if not ms:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _fmt_duration(start: int | None, stop: int | None) -> str:
    if not start:
        return ""
    seconds = max(0, int(((stop or time.time() * 1000) - start) / 1000))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class Console:
    """The console's state (sessions, capacity history) and its request handlers."""

    def __init__(self, service: BatchService, feed: EventFeed, identify: Callable[[web.Request, bytes], Caller]) -> None:
        self.service = service
        self.feed = feed
        self.identify = identify
        self.sessions = Sessions(service.store)
        self.history: deque[tuple[int, float, float, int, int]] = deque(maxlen=HISTORY_POINTS)
        self.stopping = False
        self.http_url = ""  # the head's TCP address, for the links `hpcbatch console` prints
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("hpcbatch.console", "templates"),
            autoescape=jinja2.select_autoescape(default=True),
        )
        self.templates.filters["time"] = _fmt_time
        self.templates.globals["duration"] = _fmt_duration
        self._last_sample = 0.0
        service.engine.commit_observers.append(self._committed)

    def _committed(self, events: list[tuple[str, int, str, str | None]]) -> None:
        """Sample capacity when things change too (at most once a second), not only on the timer."""
        if time.monotonic() - self._last_sample >= 1.0:
            self.sample()

    # ------------------------------------------------------------------ plumbing
    def render(self, request: web.Request, name: str, status: int = 200, **values: Any) -> web.Response:
        session: Session | None = request.get("session")
        html = self.templates.get_template(name).render(
            me=session.caller if session else None, csrf=session.csrf if session else "",
            path=request.path, event_id=request.get("event_id", 0), **values,
        )
        return web.Response(text=html, content_type="text/html", status=status,
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    def signed_in(self, handler: Handler) -> Handler:
        """Run ``handler`` with the request's session; to sign-in otherwise. POSTs need the CSRF token."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                if request.method == "GET" and not request.path.endswith(("/log", "/stream", "/children")):
                    raise web.HTTPSeeOther("/console/login")
                raise web.HTTPUnauthorized(text="sign in again")
            request["session"] = session
            # Taken before the page reads anything: its live updates start from here, so a
            # change that lands while it renders still reaches the browser.
            request["event_id"] = self.service.store.last_event_id()
            if request.method == "POST":
                form = await request.post()
                token = form.get("csrf") or request.headers.get("X-CSRF-Token")
                if not session.csrf_ok(token if isinstance(token, str) else None):
                    raise web.HTTPForbidden(text="the form's CSRF token is missing or stale: reload the page")
                request["form"] = form
            return await handler(request)

        return wrapped

    def caller(self, request: web.Request) -> Caller:
        session: Session = request["session"]
        return session.caller

    async def call(self, request: web.Request, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        return await perform(self.service, operation, body, self.caller(request))

    # ------------------------------------------------------------------ sign-in
    async def login_page(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token:
            session = self.sessions.redeem(token)
            if session is None:
                return self.render(request, "login.html", 403, error="This sign-in link was used already or has expired: run 'hpcbatch console' again.")
            return self._signed_in(session)
        return self.render(request, "login.html", error=None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key_id = str(form.get("access_key_id", "")).strip()
        secret = str(form.get("secret_access_key", "")).strip()
        doc = self.service.store.get_access_key(key_id) if key_id else None
        key = AccessKey(**doc) if doc else None
        import hmac

        if key is None or not key.active or not hmac.compare_digest(key.secret_access_key.encode(), secret.encode()):
            return self.render(request, "login.html", 403, error="Unknown access key, wrong secret, or an inactive key.")
        return self._signed_in(self.sessions.start(Caller(user=key.user, role=key.role, via="console", access_key_id=key.access_key_id)))

    def _signed_in(self, session: Session) -> web.StreamResponse:
        response = web.HTTPSeeOther("/console/")
        response.set_cookie(COOKIE, session.session_id, path="/console", httponly=True, samesite="Strict", max_age=int(SESSION_TTL_S))
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/console/login")
        response.del_cookie(COOKIE, path="/console")
        return response

    async def create_link(self, request: web.Request) -> web.StreamResponse:
        """API ``CreateConsoleLink``: a one-time sign-in link for whoever calls."""
        from hpcbatch.head.api import _error

        try:
            raw = await request.read()
            caller = self.identify(request, raw)
            authorize(caller, "CreateConsoleLink")
        except HpcbatchError as exc:
            return _error(exc)
        token = self.sessions.create_link(Caller(user=caller.user, role=caller.role, via="console", access_key_id=caller.access_key_id))
        self.service.engine.audit({
            "at": time.time_ns() // 1_000_000, "user": caller.user, "role": caller.role, "via": caller.via,
            "accessKeyId": caller.access_key_id, "operation": "CreateConsoleLink", "target": None, "outcome": "ok",
        })
        await self.service.engine.durable()
        path = f"/console/login?token={token}"
        return web.json_response({"url": self.http_url + path, "path": path, "user": caller.user, "role": caller.role})

    # ------------------------------------------------------------------ overview
    def sample(self) -> None:
        """One point of the overview's capacity chart."""
        engine = self.service.engine
        used = total = 0.0
        for name, info in engine.nodes_snapshot().items():
            if info.facts is None or info.state == "DOWN":
                continue
            total += info.facts.vcpus
            used += engine.node_usage(name)[0]
        running = len(engine.jobs_where(lambda j: j.status.is_active and j.parent_id is None))
        runnable = len(engine.jobs_where(lambda j: j.status is JobStatus.RUNNABLE))
        point = (int(time.time() * 1000), used, total, running, runnable)
        history = self.history
        # Points stay SAMPLE_INTERVAL_S apart (the chart spans an hour however busy the
        # cluster is); a sample taken sooner replaces the newest point, keeping it fresh.
        if len(history) >= 2 and history[-1][0] - history[-2][0] < SAMPLE_INTERVAL_S * 1000:
            history[-1] = point
        else:
            history.append(point)
        self._last_sample = time.monotonic()

    async def sampler(self, app: web.Application) -> Any:
        """aiohttp cleanup context: sample capacity while the app runs."""

        async def loop() -> None:
            while True:
                self.sample()
                await asyncio.sleep(SAMPLE_INTERVAL_S)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def overview(self, request: web.Request) -> web.StreamResponse:
        counts: dict[str, int] = dict.fromkeys((s.value for s in JobStatus), 0)
        for (_queue, status), n in self.service.store.count_jobs_by_queue_status().items():
            counts[status] = counts.get(status, 0) + n
        nodes = await self._all_nodes(request)
        node_states: dict[str, int] = {}
        for n in nodes:
            node_states[n["state"]] = node_states.get(n["state"], 0) + 1
        return self.render(
            request, "overview.html", counts=counts, top=max(counts.values()) or 1, node_states=node_states,
            chart=_capacity_chart(list(self.history)),
            vcpus=(sum(n["allocatedVcpus"] for n in nodes), sum(n["vcpus"] for n in nodes if n["state"] != "DOWN")),
        )

    async def _all_nodes(self, request: web.Request) -> list[dict[str, Any]]:
        """Every node, over ListNodes' pages: one page per step of the event loop, so a
        fleet of 10,000 never holds the head still while the overview is drawn."""
        nodes: list[dict[str, Any]] = []
        body: dict[str, Any] = {"maxResults": MAX_PAGE_SIZE}
        while True:
            page = await self.call(request, "ListNodes", body)
            nodes.extend(page["nodes"])
            if not page.get("nextToken"):
                return nodes
            body = {"maxResults": MAX_PAGE_SIZE, "nextToken": page["nextToken"]}
            await asyncio.sleep(0)

    # ---------------------------------------------------------------------- jobs
    def _visible_owner(self, caller: Caller, owner: str | None) -> tuple[str | None, bool]:
        """ListJobs' rule: under private_data a user lists only their own jobs."""
        if self.service.private_data and not caller.is_admin:
            if owner not in (None, caller.user):
                return owner, False
            return caller.user, True
        return owner, True

    def _live(self, job: JobRecord) -> JobRecord:
        return self.service.engine.job(job.job_id) or job

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        caller = self.caller(request)
        queue = q.get("queue") or None
        status = q.get("status") or None
        name = q.get("name") or None
        owner, allowed = self._visible_owner(caller, q.get("owner") or None)
        error = None
        after = None
        if q.get("after"):
            created, _, job_id = q["after"].partition(".")
            after = (int(created), job_id) if created.isdigit() and job_id else None
        rows: list[JobRecord] = []
        if status is not None and status not in JobStatus.__members__:
            error = f"status must be one of {', '.join(JobStatus.__members__)}"
        elif allowed:
            rows = self.service.store.list_jobs(JobQuery(
                queue=queue, statuses=(JobStatus(status),) if status else (), owner=owner,
                name_like=name if name is None or name.endswith("*") else name + "*",
                limit=PAGE_SIZE + 1, after=after,
            ))
        more = len(rows) > PAGE_SIZE
        rows = [self._live(j) for j in rows[:PAGE_SIZE]]
        next_after = f"{rows[-1].created_at}.{rows[-1].job_id}" if more and rows else None
        queues = sorted(d["jobQueueName"] for d in self.service.store.list_resources("queue"))
        return self.render(
            request, "jobs.html", jobs=rows, queues=queues, statuses=[s.value for s in JobStatus], error=error,
            filters={"queue": queue or "", "status": status or "", "owner": q.get("owner", ""), "name": name or ""},
            next_after=next_after, first_page=after is None,
        )

    async def children(self, request: web.Request) -> web.StreamResponse:
        """The rows of an array's or a multi-node job's children (HTML fragment)."""
        job_id = request.match_info["job_id"]
        try:
            parent = (await self.call(request, "DescribeJobs", {"jobs": [job_id]}))["jobs"]
            if not parent:
                raise web.HTTPNotFound(text="no such job")
            key = "arrayJobId" if "arrayProperties" in parent[0] and "size" in parent[0]["arrayProperties"] else "multiNodeJobId"
            summaries = (await self.call(request, "ListJobs", {key: job_id}))["jobSummaryList"]
        except HpcbatchError as exc:
            raise web.HTTPForbidden(text=exc.message) from None
        return self.render(request, "children.html", children=summaries)

    def _job_record(self, caller: Caller, job_id: str) -> JobRecord | None:
        job = self.service.engine.job(job_id) or self.service.store.get_job(job_id)
        if job is None or not may_see_job(caller, job.owner, self.service.private_data):
            return None
        return job

    async def job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        caller = self.caller(request)
        described = (await self.call(request, "DescribeJobs", {"jobs": [job_id]}))["jobs"]
        job = self._job_record(caller, job_id)
        if not described or job is None:
            return self.render(request, "error.html", 404, message=f"No job {job_id} that you may see.")
        detail = described[0]
        why = None
        if job.status is JobStatus.RUNNABLE:
            why = await self.call(request, "WhyJob", {"jobId": job_id})
        children = []
        if job.array_size is not None:
            children = (await self.call(request, "ListJobs", {"arrayJobId": job_id}))["jobSummaryList"]
        elif job.is_gang:
            children = (await self.call(request, "ListJobs", {"multiNodeJobId": job_id}))["jobSummaryList"]
        may_act = caller.is_admin or caller.user == job.owner
        return self.render(
            request, "job.html", job=job, detail=detail, events=self.service.store.job_events(job_id), why=why,
            children=children, may_act=may_act, final=job.status.is_final,
            cancellable=job.status in (JobStatus.SUBMITTED, JobStatus.PENDING, JobStatus.RUNNABLE),
        )

    async def job_log(self, request: web.Request) -> web.StreamResponse:
        """GetJobLogs as JSON for the page's log follower (the owner's and admins' only)."""
        body: dict[str, Any] = {"jobId": request.match_info["job_id"]}
        for key in ("startFromOffset", "attempt"):
            value = request.query.get(key)
            if value is not None and value.isdigit():
                body[key] = int(value)
        try:
            return web.json_response(await self.call(request, "GetJobLogs", body))
        except AccessDenied as exc:
            return web.json_response({"error": exc.message}, status=403)
        except HpcbatchError as exc:
            return web.json_response({"error": exc.message}, status=exc.http_status)

    async def job_action(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        action = request.match_info["action"]
        form = request["form"]
        operation = {"cancel": "CancelJob", "terminate": "TerminateJob"}.get(action)
        if operation is None:
            raise web.HTTPNotFound()
        reason = str(form.get("reason") or f"{action.capitalize()}ed in the console by {self.caller(request).user}")
        try:
            await self.call(request, operation, {"jobId": job_id, "reason": reason})
        except HpcbatchError as exc:
            return self.render(request, "error.html", exc.http_status, message=exc.message)
        raise web.HTTPSeeOther(f"/console/jobs/{job_id}")

    # -------------------------------------------------------------------- submit
    async def _submit_choices(self, request: web.Request) -> dict[str, Any]:
        jobdefs = (await self.call(request, "DescribeJobDefinitions", {"status": "ACTIVE"}))["jobDefinitions"]
        queues = (await self.call(request, "DescribeJobQueues", {}))["jobQueues"]
        latest: dict[str, dict[str, Any]] = {}
        for d in jobdefs:
            latest[d["jobDefinitionName"]] = d
        return {"jobdefs": sorted(latest.values(), key=lambda d: d["jobDefinitionName"]),
                "queues": [q["jobQueueName"] for q in queues if q["state"] == "ENABLED"]}

    async def submit_page(self, request: web.Request) -> web.StreamResponse:
        return self.render(request, "submit.html", error=None, form={}, **await self._submit_choices(request))

    async def submit(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in request["form"].items() if k != "csrf"}
        try:
            body = submit_body(form)
            result = await self.call(request, "SubmitJob", body)
        except HpcbatchError as exc:
            return self.render(request, "submit.html", 400, error=exc.message, form=form, **await self._submit_choices(request))
        raise web.HTTPSeeOther(f"/console/jobs/{result['jobId']}")

    # ---------------------------------------------------------- resources, nodes
    async def jobdefs(self, request: web.Request) -> web.StreamResponse:
        docs = (await self.call(request, "DescribeJobDefinitions", {}))["jobDefinitions"]
        by_name: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            by_name.setdefault(d["jobDefinitionName"], []).append(d)
        for revisions in by_name.values():
            revisions.sort(key=lambda d: -d["revision"])
        return self.render(request, "jobdefs.html", by_name=dict(sorted(by_name.items())), summary=_jobdef_summary)

    async def queues(self, request: web.Request) -> web.StreamResponse:
        queues = (await self.call(request, "DescribeJobQueues", {}))["jobQueues"]
        ces = (await self.call(request, "DescribeComputeEnvironments", {}))["computeEnvironments"]
        nodes = await self._all_nodes(request)
        capacity: dict[str, dict[str, float]] = {}
        for n in nodes:
            c = capacity.setdefault(n["computeEnvironment"] or "", dict.fromkeys(
                ("nodes", "active", "vcpus", "vcpus_used", "mem", "mem_used", "gpus", "gpus_used"), 0))
            c["nodes"] += 1
            if n["state"] == "DOWN":
                continue
            c["active"] += n["state"] == "ACTIVE"
            c["vcpus"] += n["vcpus"]
            c["vcpus_used"] += n["allocatedVcpus"]
            c["mem"] += n["memoryMiB"]
            c["mem_used"] += n["allocatedMemoryMiB"]
            c["gpus"] += len(n["gpus"])
            c["gpus_used"] += n["allocatedGpus"]
        counts = self.service.store.count_jobs_by_queue_status()
        per_queue = {q["jobQueueName"]: {s.value: counts.get((q["jobQueueName"], s.value), 0) for s in JobStatus} for q in queues}
        queues.sort(key=lambda q: (-q["priority"], q["jobQueueName"]))
        return self.render(request, "queues.html", queues=queues, ces=ces, capacity=capacity, per_queue=per_queue)

    async def nodes(self, request: web.Request) -> web.StreamResponse:
        """A page of nodes (hpcbatch.console.nodepages): ListNodes' pages, filtered by state."""
        view = NodesView()
        try:
            view = NodesView.from_query(request.query)
            page = await read_page(lambda body: self.call(request, "ListNodes", body), view)
        except ClientError as exc:
            page, error = NodesPage(nodes=[], next_token=None, scanned=0), exc.message
        else:
            error = None
        return self.render(
            request, "nodes.html", nodes=page.nodes, error=error, states=NODE_STATES, filter_state=view.state,
            page_size=view.size, back_url=view.url(), scanned=page.scanned,
            next_url=view.next_url(page.next_token) if page.next_token else None,
            previous_url=view.previous_url(), first_url=view.first_url(),
        )

    async def node_action(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        operation = {"drain": "DrainNode", "resume": "ResumeNode"}.get(request.match_info["action"])
        if operation is None:
            raise web.HTTPNotFound()
        body: dict[str, Any] = {"name": name}
        reason = str(request["form"].get("reason") or "")
        if operation == "DrainNode" and reason:
            body["reason"] = reason
        try:
            await self.call(request, operation, body)
        except HpcbatchError as exc:
            return self.render(request, "error.html", exc.http_status, message=exc.message)
        back = str(request["form"].get("back") or "")  # the page (filter, page) the action was taken on
        raise web.HTTPSeeOther(back if back == "/console/nodes" or back.startswith("/console/nodes?") else "/console/nodes")

    # --------------------------------------------------------------- live updates
    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events from the event stream (resumes from Last-Event-ID)."""
        caller = self.caller(request)
        job_id = request.query.get("job") or None
        start = request.headers.get("Last-Event-ID") or request.query.get("after") or ""
        after = int(start) if start.isdigit() else self.service.store.last_event_id()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            await response.write(b"retry: 2000\n\n")
            while not self.stopping:
                events, after, _more = await self.feed.follow(caller, after, 200, 15.0, job_id, None)
                if events:  # one message per batch: a busy cluster must not flood every browser
                    data = json.dumps({"count": len(events), "last": events[-1]})
                    await response.write(f"id: {after}\nevent: change\ndata: {data}\n\n".encode())
                else:
                    await response.write(b": still here\n\n")
        except ConnectionResetError:
            pass  # the browser went away
        return response

    async def on_shutdown(self, app: web.Application) -> None:
        self.stopping = True
        self.feed.close()


def submit_body(form: dict[str, str]) -> dict[str, Any]:
    """The SubmitJob body for the console's form (the CLI's builder, hpcbatch.jobspec); a bad
    field raises ClientError naming it."""
    return submit_job_body(submit_request(form))


def submit_request(form: dict[str, str]) -> SubmitRequest:
    """The console's submit form as the request ``hpcbatch submit`` would make of the same choices."""
    return SubmitRequest(
        name=form.get("jobName", "").strip(),
        queue=form.get("jobQueue", ""),
        job_definition=form.get("jobDefinition", ""),
        command=_form_command(form),
        vcpus=_form_text(form, "vcpus"),
        memory=_form_text(form, "memory"),
        gpus=_form_text(form, "gpus"),
        env=_form_environment(form),
        nodes=_form_whole(form, "numNodes", "numNodes"),
        array_size=_form_whole(form, "arraySize", "arrayProperties.size"),
        depends_on=[d for d in form.get("dependsOn", "").replace(",", " ").split() if d],
        retries=_form_whole(form, "attempts", "retryStrategy.attempts"),
        timeout=_form_whole(form, "timeout", "timeout.attemptDurationSeconds"),
    )


def _form_text(form: dict[str, str], field: str) -> str | None:
    return form.get(field, "").strip() or None


def _form_whole(form: dict[str, str], field: str, named: str) -> int | None:
    value = form.get(field, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ClientError(f"{named} must be a whole number")
    return int(value)


def _form_command(form: dict[str, str]) -> list[str]:
    try:
        return shlex.split(form.get("command", "").strip())
    except ValueError as exc:
        raise ClientError(f"command: {exc}") from None


def _form_environment(form: dict[str, str]) -> dict[str, str]:
    environment: dict[str, str] = {}
    for number, line in enumerate(form.get("environment", "").splitlines(), 1):
        if line.strip():
            name, sep, value = line.strip().partition("=")
            if not sep or not name:
                raise ClientError(f"environment line {number}: write NAME=value")
            environment[name] = value
    return environment


def _jobdef_summary(doc: dict[str, Any]) -> dict[str, str]:
    """The few facts of a job definition revision shown side by side."""
    props = doc.get("containerProperties") or {}
    nodes = doc.get("nodeProperties")
    if nodes:
        first = (nodes.get("nodeRangeProperties") or [{}])[0].get("container") or {}
        props = first
    reqs = {r["type"]: r["value"] for r in props.get("resourceRequirements") or ()}
    return {
        "type": doc.get("type", ""),
        "status": doc.get("status", ""),
        "image": props.get("image") or "(host)",
        "command": " ".join(props.get("command") or []) or "(given at submit)",
        "vcpus": str(reqs.get("VCPU", props.get("vcpus", 1))),
        "memory": f"{reqs.get('MEMORY', props.get('memory', 512))} MiB",
        "gpus": str(reqs.get("GPU", 0)),
        "nodes": str(nodes.get("numNodes")) if nodes else "1",
        "retry": str((doc.get("retryStrategy") or {}).get("attempts", 1)),
        "timeout": f"{(doc.get('timeout') or {}).get('attemptDurationSeconds')} s" if doc.get("timeout") else "none",
    }


def _capacity_chart(points: list[tuple[int, float, float, int, int]], width: int = 640, height: int = 160) -> dict[str, Any]:
    """Polylines (SVG coordinates) for vCPUs used/total and jobs running/runnable over time."""
    if len(points) < 2:
        return {"ready": False}
    t0, t1 = points[0][0], points[-1][0]
    span = max(1, t1 - t0)
    top_cpu = max(max(p[2] for p in points), 1.0)
    top_jobs = max(max(max(p[3], p[4]) for p in points), 1)

    def line(index: int, top: float) -> str:
        return " ".join(
            f"{(p[0] - t0) / span * width:.1f},{height - p[index] / top * (height - 10):.1f}" for p in points
        )

    return {
        "ready": True, "width": width, "height": height,
        "used": line(1, top_cpu), "total": line(2, top_cpu), "running": line(3, top_jobs), "runnable": line(4, top_jobs),
        "top_cpu": top_cpu, "top_jobs": top_jobs, "since": _fmt_time(t0), "until": _fmt_time(t1),
    }
