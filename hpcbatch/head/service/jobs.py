"""The job operations: submit, describe, list, cancel, terminate, logs, a command in a running
job, stored scripts, and why a job waits (the queue's front, the scheduler's decisions).

SubmitJob loads what the request names, plans the job with the pure
``hpcbatch.model.submit.plan_submit``, checks the plan against the head's own rules and the
queue's nodes, and hands it to the engine. ListJobs' request is read by
``hpcbatch.head.joblist``; the store selects and pages. Live jobs are read through the
engine's methods (``job``, ``front_of_queue``, ``decision_records``...), never its dictionaries.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hpcbatch.auth.policy import Caller, check_job_access, may_see_job
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.containers import check_container
from hpcbatch.head.service.common import (
    JobIdGenerator,
    ServiceContext,
    container_of,
    ecs_nodes,
    name_of,
    now_ms,
)
from hpcbatch.head.service.satisfiable import SatisfiabilityCheck
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.model.multinode import split_child_id
from hpcbatch.model.submit import SCRIPT_ENV, SubmitFacts, SubmitPlan, plan_submit
from hpcbatch.validation import check_container_limits

# hpcbatch extension (AWS's clientToken, where boto3 can send it): a SubmitJob that carries
# this tag again, from the same owner, answers the job the first one made.
CLIENT_TOKEN_TAG = "hpcbatch:client-token"


def _request_digest(body: dict[str, Any]) -> str:
    """SHA-256 of a SubmitJob body as sent, less its client token (what a retry repeats)."""
    tags = {k: v for k, v in (body.get("tags") or {}).items() if k != CLIENT_TOKEN_TAG}
    rest = {k: v for k, v in body.items() if k != "tags"}
    if tags:
        rest["tags"] = tags
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Jobs:
    """SubmitJob, DescribeJobs, ListJobs, CancelJob, TerminateJob and hpcbatch's job operations."""

    def __init__(self, cx: ServiceContext) -> None:
        self._cx = cx
        self._job_id = JobIdGenerator()
        self._satisfiable = SatisfiabilityCheck(cx)
        # (owner, client token) -> job, for submitted jobs not yet committed (then the store
        # answers): a retry that comes before the commit must find the job too.
        self._recent_tokens: dict[tuple[str, str], JobRecord] = {}
        self._token_of_job: dict[str, tuple[str, str]] = {}
        cx.engine.commit_observers.append(self._tokens_committed)

    def _check_planned(self, plan: SubmitPlan, caller: Caller) -> None:
        """The head's own rules on a planned job: what its containers may do here, its scripts stored."""
        for planned in plan.containers:
            check_container(planned.container, caller.user, planned.field, self._cx.allow_privileged_containers)
        for field, script_id in plan.scripts:
            if self._cx.store.get_script(script_id, caller.user) is None:
                raise ClientError(f"{field}.environment {SCRIPT_ENV}: {caller.user} has no stored script {script_id}")
        # Again at submission: the definition may predate the head's current limits.
        for planned in plan.containers:
            check_container_limits(planned.container, planned.limits_field, self._cx.container_limits)

    def _submit_facts(self, body: dict[str, Any], caller: Caller, token: str | None, digest: str | None) -> SubmitFacts:
        """Load what a SubmitJob names: its queue, its definition (ECS mapped), the jobs it depends on."""
        queue = self._cx.queue(body["jobQueue"])
        jobdef = self._cx.job_definition(body["jobDefinition"])
        multinode = jobdef.get("type") == "multinode"
        found: dict[str, JobRecord] = {}
        for dep in body.get("dependsOn", []):
            dep_id = dep.get("jobId")
            other = self._cx.find_job(dep_id) if dep_id else None
            if other is not None and may_see_job(caller, other.owner, self._cx.private_data):
                found[dep_id] = other
        created_at = now_ms()
        return SubmitFacts(
            queue=queue, job_definition=jobdef,
            container={} if multinode else container_of(jobdef),
            node_properties=ecs_nodes(jobdef["nodeProperties"]) if multinode else None,
            dependencies=found, owner=caller.user, job_id=self._job_id(created_at), created_at=created_at,
            client_token=token, request_digest=digest,
        )

    def _tokens_committed(self, events: list[tuple[str, int, str, str | None]]) -> None:
        """A commit observer: jobs just committed are found by token in the store from now on."""
        if self._token_of_job:
            for job_id, *_ in events:
                key = self._token_of_job.pop(job_id, None)
                if key is not None:
                    self._recent_tokens.pop(key, None)

    def _submitted_before(self, body: dict[str, Any], caller: Caller) -> tuple[str | None, str | None, JobRecord | None]:
        """The client token of a SubmitJob, its request digest, and the job it made before."""
        token = (body.get("tags") or {}).get(CLIENT_TOKEN_TAG)
        if token is None:
            return None, None, None
        if not 1 <= len(token) <= 64 or not token.isascii() or not token.isprintable():
            raise ClientError(f"tags {CLIENT_TOKEN_TAG}: a client token is 1 to 64 printable ASCII characters")
        digest = _request_digest(body)
        earlier = self._recent_tokens.get((caller.user, token)) or self._cx.store.job_by_client_token(caller.user, token)
        if earlier is not None and earlier.request_digest != digest:
            # As AWS answers a clientToken reused with other parameters (IdempotentParameterMismatch).
            raise ClientError(
                f"tags {CLIENT_TOKEN_TAG} {token}: this client token was already used for job "
                f"{earlier.job_id} with a different request; a new job needs a new token"
            )
        return token, digest, earlier

    def SubmitJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Load what the request names, plan the job (hpcbatch.model.submit, pure), check it, store it."""
        token, digest, earlier = self._submitted_before(body, caller)
        if earlier is not None:  # a retry of a submit that was done: the same job, nothing new
            return {"jobArn": self._cx.arn("job", earlier.job_id), "jobName": earlier.job_name, "jobId": earlier.job_id}
        if token is not None:  # a control field, not a tag of the job
            body = {**body, "tags": {k: v for k, v in body["tags"].items() if k != CLIENT_TOKEN_TAG}}
        facts = self._submit_facts(body, caller, token, digest)
        plan = plan_submit(body, facts)
        self._check_planned(plan, caller)
        job = plan.job
        self._satisfiable.check(facts.queue, job.num_nodes, job.resources, job.tags)
        self._cx.engine.submit(job, plan.children)
        if token is not None:
            self._recent_tokens[(caller.user, token)] = job
            self._token_of_job[job.job_id] = (caller.user, token)
        return {"jobArn": self._cx.arn("job", job.job_id), "jobName": job.job_name, "jobId": job.job_id}

    def _jobs(self, job_ids: list[str]) -> list[JobRecord]:
        live = [self._cx.engine.job(i) for i in job_ids]
        missing = [i for i, j in zip(job_ids, live, strict=True) if j is None]
        stored = {j.job_id: j for j in self._cx.store.get_jobs(missing)} if missing else {}
        out = []
        for job_id, job in zip(job_ids, live, strict=True):
            found = job or stored.get(job_id)
            if found is not None:
                out.append(found)
        return out

    def DescribeJobs(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from hpcbatch.model.jobs import job_detail

        ids = [name_of(i) for i in body["jobs"]]
        return {
            "jobs": [
                self._with_forecast(job_detail(j, self._cx.region, self._cx.account), j)
                for j in self._jobs(ids)
                if may_see_job(caller, j.owner, self._cx.private_data)
            ]
        }

    def _with_forecast(self, doc: dict[str, Any], job: JobRecord) -> dict[str, Any]:
        """A RUNNABLE job's expected start from the scheduler's plan, as hpcbatch's own field
        ``hpcbatchExpectedStartAt`` (ms since the epoch, like AWS's times); absent when unknown."""
        if job.status is JobStatus.RUNNABLE:
            at = self._cx.engine.expected_start(job.job_id)
            if at is not None:
                doc["hpcbatchExpectedStartAt"] = int(at * 1000)
        return doc

    def ListJobs(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """An array's children, a multi-node job's nodes, or a queue's jobs a page at a time:
        the store selects and pages (the request read by hpcbatch.head.joblist)."""
        from hpcbatch.head import joblist
        from hpcbatch.model.jobs import job_summary

        parent, query = None, None
        if body.get("arrayJobId") or body.get("multiNodeJobId"):
            parent = self._cx.job(name_of(body.get("arrayJobId") or body["multiNodeJobId"]))
            if may_see_job(caller, parent.owner, self._cx.private_data):
                query = joblist.children_query(body, parent)
        else:
            queue = name_of(body["jobQueue"]) if body.get("jobQueue") else None
            if queue is not None:
                self._cx.queue(queue)
            query = joblist.queue_query(body, queue, caller, self._cx.private_data)
        if query is None:
            return {"jobSummaryList": []}
        jobs = [self._cx.engine.job(j.job_id) or j for j in self._cx.store.list_jobs(query)]  # the live record
        summaries = [job_summary(j, self._cx.region, self._cx.account) for j in jobs]
        if parent is not None and body.get("arrayJobId"):
            placed = {j.array_index: s for j, s in zip(jobs, summaries, strict=True) if j.array_index is not None}
            return {"jobSummaryList": joblist.array_summaries(parent, placed, body.get("jobStatus"), self._cx.arn)}
        if parent is not None:
            return {"jobSummaryList": joblist.node_summaries(summaries, body.get("jobStatus"))}
        return joblist.page(query, jobs, summaries)

    def _parent_job(self, job_id: str) -> JobRecord:
        """CancelJob/TerminateJob on a node JOBID#i act on the whole multi-node job.

        An array child JOBID:i not placed yet gets its record now, so it can be cancelled alone.
        """
        parent_id, index = split_child_id(job_id)
        if index is not None:
            return self._cx.job(parent_id)
        if ":" in job_id and self._cx.engine.job(job_id) is None and self._cx.store.get_job(job_id) is None:
            child = self._cx.engine.detach_array_child(job_id)  # the scheduler's range skips it from now on
            if child is not None:
                return child
        return self._cx.job(job_id)

    def CancelJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = self._parent_job(name_of(body["jobId"]))
        check_job_access(caller, "cancel", job.job_id, job.owner)
        live = self._cx.engine.job(job.job_id)
        if live is not None and not job.status.is_final:
            self._cx.engine.cancel(live, body["reason"])
        return {}

    def TerminateJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = self._parent_job(name_of(body["jobId"]))
        check_job_access(caller, "terminate", job.job_id, job.owner)
        live = self._cx.engine.job(job.job_id)
        if live is not None and not job.status.is_final:
            self._cx.engine.terminate(live, body["reason"])
        return {}

    # --------------------------------------------------------- hpcbatch's own
    def StartJobTask(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """``hpcbatch run --pty --jobid``: a command inside a running job, on one of its nodes."""
        job_id, command, index = body.get("jobId"), body.get("command"), body.get("nodeIndex", 0)
        if not isinstance(job_id, str) or not job_id:
            raise ClientError("jobId is required")
        if not isinstance(command, str) or not command:
            raise ClientError("command must be a non-empty string (a shell command line)")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ClientError("nodeIndex must be a whole number, 0 or more")
        job = self._parent_job(name_of(job_id))
        check_job_access(caller, "run a command in", job.job_id, job.owner)
        started = self._cx.engine.start_client_task(self._cx.engine.job(job.job_id) or job, index, command)
        if isinstance(started, str):
            raise ClientError(started)
        return {"launchId": started[0], "nodeName": started[1]}

    def PutScript(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        script = body.get("script")
        if not isinstance(script, str) or not script:
            raise ClientError("script must be a non-empty string")
        data = script.encode()
        if len(data) > 1 << 20:
            raise ClientError("script is larger than 1 MiB")
        script_id = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._cx.store.transaction():
            self._cx.store.put_script(script_id, data, caller.user)
        return {"scriptId": script_id}

    def GetJobLogs(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job_id = body.get("jobId")
        if not isinstance(job_id, str):
            raise ClientError("jobId is required")
        job = self._cx.job(name_of(job_id))
        check_job_access(caller, "read the logs of", job.job_id, job.owner)
        if not job.attempts:
            return {"jobId": job.job_id, "data": "", "nextOffset": 0, "complete": job.status.is_final}
        index = body.get("attempt", len(job.attempts) - 1)
        if not isinstance(index, int) or not 0 <= index < len(job.attempts):
            raise ClientError(f"attempt must be between 0 and {len(job.attempts) - 1}")
        offset = body.get("startFromOffset", 0)
        if not isinstance(offset, int) or offset < 0:
            raise ClientError("startFromOffset must be a non-negative integer")
        attempt = job.attempts[index]
        data = self._cx.engine.logs.read(attempt.attempt_id, offset)
        return {
            "jobId": job.job_id,
            "attempt": index,
            "logStreamName": attempt.log_stream_name,
            "data": data.decode(errors="replace"),
            "nextOffset": offset + len(data),
            "complete": attempt.stopped_at is not None and offset + len(data) >= self._cx.engine.logs.size(attempt.attempt_id),
        }

    # -------------------------------------------------------------- why it waits
    def GetJobQueueSnapshot(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """AWS GetJobQueueSnapshot: the first 100 RUNNABLE jobs in the order they will be tried."""
        queue = self._cx.queue(body["jobQueue"])
        jobs = []
        for job_id in self._cx.engine.front_of_queue(queue["jobQueueName"]):
            parent_id = job_id.rpartition(":")[0] if ":" in job_id else job_id
            job = self._cx.engine.job(job_id) or self._cx.engine.job(parent_id)
            if self._cx.shown_job_id(job_id, caller) != job_id:
                continue  # private_data: another user's job is not listed, not even by id
            jobs.append(
                {
                    "jobArn": self._cx.arn("job", job_id),
                    "earliestTimeAtPosition": job.created_at if job is not None else now_ms(),
                }
            )
        return {"frontOfQueue": {"jobs": jobs, "lastUpdatedAt": now_ms()}}

    def WhyJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """hpcbatch's `why`: a job's state, the scheduler's current reason, its queue position
        and the recent decisions about it, each with the events that caused it."""
        job_id = body.get("jobId")
        if not isinstance(job_id, str):
            raise ClientError("jobId is required")
        job = self._cx.job(name_of(job_id))
        if not may_see_job(caller, job.owner, self._cx.private_data):
            raise NotFoundError(f"jobId {job_id} does not exist")
        front = self._cx.engine.front_of_queue(job.job_queue, limit=100_000)
        position = front.index(job.job_id) + 1 if job.job_id in front else None
        dependencies = [d.get("jobId") or d.get("type") for d in job.depends_on]
        status, status_reason, _ = job.shown  # a node that ended on its own: as DescribeJobs shows it
        return {
            "jobId": job.job_id,
            "status": status.value,
            "statusReason": status_reason,
            "queuePosition": position,
            "queueLength": len(front),
            "dependsOn": dependencies,
            # hpcbatch extension: accepted although no node set could hold it (issue 18)
            "allowUnsatisfiable": (job.tags or {}).get("hpcbatch:allowUnsatisfiable", "").lower() in ("true", "1", "yes"),
            "expectedStartAt": self._with_forecast({}, job).get("hpcbatchExpectedStartAt"),
            "decisions": [self._decision(d, caller) for d in self._cx.engine.decision_records(job.job_id)],
        }

    def _decision(self, decision: Any, caller: Caller) -> dict[str, Any]:
        """One scheduler decision as ``why`` answers it: its text, the id of the pass's last
        event (``cause``) and every event that caused it (``causes``: type, event id, the job
        it names), other users' job ids hidden under private_data."""
        causes = []
        for c in decision.causes:
            cause = {"type": c.kind, "eventId": c.event_id}
            if c.job_id is not None:
                cause["jobId"] = self._cx.shown_job_id(c.job_id, caller)
            causes.append(cause)
        return {"cause": decision.cause, "decision": self._cx.masked(decision.text, caller), "causes": causes}

