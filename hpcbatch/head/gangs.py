"""Multi-node parallel jobs in the head: a parent (JOBID) and one node record per node (JOBID#i).

Every node of a try is placed at once (``StartGang``: the scheduler chose the nodes). The
main node's end, or a lost node, ends the try: the other nodes are killed, and when every
one has stopped the parent is decided as one job (success, retry, failure). A retry after a
lost node waits, as a single job's would, until that node has surely fenced its attempt.
Only the gang's own nodes may launch MPI daemons on each other (``launch_request``).

Part of the engine (hpcbatch.head.engine): it acts on live jobs only through the engine's
moves (``GangHost``), so every change goes through the job transition table and the
engine's commit.
"""

from __future__ import annotations

import logging
import secrets
from typing import Protocol

from hpcbatch import protocol as p
from hpcbatch.head.commits import CommitBatcher
from hpcbatch.head.nodes import NodeRegistry
from hpcbatch.model.decisions import AttemptEnd, Verdict, attempt_verdict
from hpcbatch.model.interrupts import preempted
from hpcbatch.model.jobs import Attempt, FenceHold, GangEnding, JobRecord
from hpcbatch.model.lifecycle import JobEvent, JobStatus
from hpcbatch.model.multinode import NodeEnd, child_job_id, gang_failure_reason, names_resource
from hpcbatch.scheduler import AttemptEnded, Event, StartGang
from hpcbatch.scheduler.predict import attempt_run_s

log = logging.getLogger("hpcbatch.engine")

EXITED_REASON = "Essential container in task exited"
MAIN_NODE_EXITED = "Main node exited"
MASTER_PORT = "29500"  # torchrun's default rendezvous port on the main node


class GangHost(Protocol):
    """What the gang part needs of the engine."""

    jobs: dict[str, JobRecord]
    registry: NodeRegistry
    commits: CommitBatcher

    def move(self, job: JobRecord, event: JobEvent, reason: str | None) -> None: ...
    def touch(self, job: JobRecord) -> None: ...
    def feed(self, event: Event) -> None: ...
    def event_id(self) -> str: ...
    def requeue(self, job: JobRecord) -> None: ...
    def now_ms(self) -> int: ...
    def mono(self) -> float: ...
    def new_attempt(self, job: JobRecord, node: str, compute_environment: str, gpus: list[str]) -> Attempt: ...
    def start_message(self, job: JobRecord, attempt: Attempt) -> p.StartAttempt: ...
    def kill(self, node: str, attempt_id: str, reason: str, *, grace_s: float | None = None,
             warning_signal: str | None = None) -> None: ...
    def release(self, name: str, job_id: str) -> None: ...
    def hold_for_fence(self, job: JobRecord, lost: FenceHold, hold_s: float) -> None: ...


class Gangs:
    """The multi-node jobs of one engine; see the module docstring."""

    def __init__(self, host: GangHost) -> None:
        self._host = host

    def children(self, parent: JobRecord) -> list[JobRecord]:
        """The live nodes (JOBID#i) of a multi-node job, in index order."""
        jobs = self._host.jobs
        ids = (child_job_id(parent.job_id, i) for i in range(parent.num_nodes))
        return [jobs[c] for c in ids if c in jobs]

    # ---------------------------------------------------------------- placement
    def start(self, action: StartGang) -> None:
        """Place every node of a multi-node job at once (the scheduler chose the nodes)."""
        host = self._host
        parent = host.jobs.get(action.job_id)
        children = self.children(parent) if parent is not None else []
        if parent is None or parent.status is not JobStatus.RUNNABLE or len(children) != parent.num_nodes:
            host.feed(AttemptEnded(host.event_id(), action.job_id))
            return
        parent.hosts = list(action.nodes)
        parent.launch_secret = secrets.token_hex(16)
        parent.ending = None
        gpus = action.gpus or tuple(() for _ in action.nodes)
        for child, node, node_gpus in zip(children, action.nodes, gpus, strict=True):
            # Log streams are named by the parent (one job to the user).
            attempt = host.new_attempt(parent, node, action.compute_environment, list(node_gpus))
            child.attempts.append(attempt)
            host.registry.nodes[node].jobs.add(child.job_id)
            host.move(child, JobEvent.PLACED, None)
        main_attempt = children[parent.main_node].attempts[-1]
        parent.attempts.append(
            Attempt(
                attempt_id=main_attempt.attempt_id, node=main_attempt.node,
                compute_environment=action.compute_environment, log_stream_name=main_attempt.log_stream_name,
                gpus=list(main_attempt.gpus),
            )
        )
        host.move(parent, JobEvent.PLACED, None)
        for child in children:
            host.commits.send(child.attempts[-1].node, host.start_message(child, child.attempts[-1]))

    def node_environment(self, parent: JobRecord, index: int) -> dict[str, str]:
        """AWS's multi-node variables, plus what torchrun/NCCL need to find the main node."""
        main_facts = self._host.registry.facts(parent.hosts[parent.main_node]) if parent.hosts else None
        main_ip = main_facts.addresses[0] if main_facts and main_facts.addresses else ""
        fabric_ip = (main_facts.fabric_address if main_facts else None) or main_ip
        env = {
            "AWS_BATCH_JOB_NODE_INDEX": str(index),
            "AWS_BATCH_JOB_NUM_NODES": str(parent.num_nodes),
            "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(parent.main_node),
            "HPCBATCH_SLOTS_PER_NODE": str(self._slots_per_node(parent)),
            # The fabric address is what ranks and torchrun use; the management one keeps its own name.
            "HPCBATCH_MAIN_NODE_MANAGEMENT_ADDRESS": main_ip,
            "MASTER_ADDR": fabric_ip,
            "MASTER_PORT": MASTER_PORT,
            "NNODES": str(parent.num_nodes),
            "NODE_RANK": str(index),
        }
        if index != parent.main_node:  # AWS sets it on the other nodes only
            env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = fabric_ip
        return env

    def _slots_per_node(self, parent: JobRecord) -> int:
        """MPI slots per host in the hostfile: the vCPUs each node gives the job; a job that names
        none holds its nodes whole, so the smallest node's vCPUs (one number serves every host)."""
        if names_resource(parent.container, "VCPU") or not parent.hosts:
            return max(1, int(parent.resources.vcpus))
        sizes = [facts.vcpus for h in parent.hosts if (facts := self._host.registry.facts(h)) is not None]
        return max(1, min(sizes, default=int(parent.resources.vcpus)))

    # ------------------------------------------------------------------ ending
    def kill(self, parent: JobRecord, reason: str, *, grace_s: float | None = None,
             warning_signal: str | None = None) -> None:
        """Stop every node of the current try that still runs (the try is ending; ``grace_s``
        and ``warning_signal``: a preemption's, hpcbatch.head.preempting)."""
        for child in self.children(parent):
            attempt = child.current_attempt
            if attempt is None:
                continue
            node = self._host.registry.get(attempt.node)
            if node is None or not node.up:
                self.child_ended(child, AttemptEnd(None, None, reason))
            else:
                self._host.kill(attempt.node, attempt.attempt_id, reason, grace_s=grace_s,
                                warning_signal=warning_signal)
        self._host.commits.request_step()

    def terminate(self, parent: JobRecord, reason: str) -> None:
        """TerminateJob on a placed multi-node job: every node is killed, the try is not retried."""
        parent.stop_reason = reason
        self._host.touch(parent)
        if parent.ending is None:
            parent.ending = GangEnding(status_reason=reason, stopped_at=self._host.now_ms())
        self.kill(parent, reason)
        self.maybe_finish(parent)

    def child_ended(self, child: JobRecord, end: AttemptEnd, *, stopped_at: int | None = None,
                    lost: bool = False) -> None:
        """One node of a multi-node job ended; the main node's end (or a lost node) ends the try."""
        attempt = child.current_attempt
        if attempt is None:
            return
        attempt.stopped_at = stopped_at or self._host.now_ms()
        attempt.exit_code, attempt.reason = end.exit_code, end.reason
        attempt.timed_out, attempt.lost = end.timed_out, lost
        attempt.status_reason = end.status_reason or (EXITED_REASON if end.exit_code is not None else end.reason)
        self._host.release(attempt.node, child.job_id)
        self._host.touch(child)
        parent = self._host.jobs.get(child.parent_id or "")
        if parent is None:
            return
        if parent.ending is None and child.node_index != parent.main_node and not lost:
            # A child node ended on its own: the job goes on, and this node job shows its own
            # SUCCEEDED or FAILED (JobRecord.shown), recorded in its history as AWS would.
            attempt.alone = True
            status, reason, at = child.shown
            self._host.commits.record(child.job_id, at or self._host.now_ms(), status.value, reason)
        elif parent.ending is None:  # the main node's end, or a lost node, ends the try
            parent.ending = GangEnding(
                exit_code=end.exit_code if not lost else None, reason=end.reason,
                status_reason=attempt.status_reason, stopped_at=attempt.stopped_at, timed_out=end.timed_out,
                lost=lost, lost_attempt=FenceHold(node=attempt.node, attempt_id=attempt.attempt_id) if lost else None,
            )
            self._host.touch(parent)
            self.kill(parent, MAIN_NODE_EXITED if not lost else attempt.status_reason or "Node lost")
        self.maybe_finish(parent)

    def maybe_finish(self, parent: JobRecord) -> None:
        """When every node of an ending try has stopped: decide the job (success, retry, fail)."""
        host = self._host
        ending = parent.ending
        if ending is None or any(c.current_attempt is not None for c in self.children(parent)):
            return
        attempt = parent.current_attempt
        if attempt is None:
            return
        preempted_by, preempt_reason = preempted(parent)
        status_reason = parent.stop_reason or preempt_reason or ending.status_reason
        attempt.preempted_by = preempted_by
        attempt.stopped_at = ending.stopped_at or host.now_ms()
        attempt.exit_code, attempt.reason, attempt.status_reason = ending.exit_code, ending.reason, status_reason
        attempt.timed_out, attempt.lost, attempt.terminated = ending.timed_out, ending.lost, parent.is_terminated
        parent.ending = None
        host.feed(AttemptEnded(host.event_id(), parent.job_id, run_s=attempt_run_s(attempt)))
        for child in self.children(parent):  # holds re-created per node after a head restart
            host.feed(AttemptEnded(host.event_id(), child.job_id))
        held = host.registry.pop_gang_hold(parent.job_id)
        end = AttemptEnd(ending.exit_code, ending.reason, status_reason, timed_out=ending.timed_out,
                         terminated=parent.stop_reason is not None, preempted_by=preempted_by)
        verdict = attempt_verdict(parent, end)
        if verdict is Verdict.SUCCEEDED:
            host.move(parent, JobEvent.SUCCEEDED, EXITED_REASON)
            return
        attempt.status_reason = self._failure(parent, ending, status_reason)
        if verdict is Verdict.FAILED:
            parent.stopped_at = attempt.stopped_at
            host.move(parent, JobEvent.ATTEMPT_FAILED_FINAL, attempt.status_reason)
            return
        parent.started_at = None
        host.move(parent, JobEvent.ATTEMPT_FAILED_RETRY, attempt.status_reason)
        self._retry(parent, ending, held)

    def _retry(self, parent: JobRecord, ending: GangEnding, held: float | None) -> None:
        """Queue the next try, or hold it while a lost node may still run its part of this one."""
        host = self._host
        hold_s = 0.0
        if ending.lost_attempt is not None:
            # Its deadline, or (the head restarted meanwhile) a whole fence from now.
            hold_s = held - host.mono() if held is not None else host.registry.fence_hold_s(ending.lost_attempt.node)
        if ending.lost_attempt is not None and hold_s > 0:
            host.hold_for_fence(parent, ending.lost_attempt, hold_s)
        else:
            host.requeue(parent)

    def _failure(self, parent: JobRecord, ending: GangEnding, status_reason: str | None) -> str | None:
        """A failed try's statusReason naming the node that failed and how (model.multinode);
        a terminate, timeout or lost node keeps its own words."""
        if parent.stop_reason is not None or ending.timed_out or ending.lost or parent.attempts[-1].preempted_by:
            return status_reason
        ends = [
            NodeEnd(child.node_index or 0, a.node, a.exit_code, a.reason, a.stopped_at)
            for child in self.children(parent)
            if child.node_index is not None and (a := child.attempts[-1] if child.attempts else None) is not None
        ]
        return gang_failure_reason(parent.main_node, ends, status_reason)

    # ------------------------------------------------------- MPI launcher bridge
    def launch_request(self, node: str, msg: p.LaunchRequest) -> None:
        """mpirun on ``node`` wants a daemon on ``msg.target``: only inside the job's own gang."""
        target_attempt, error = self._launch_target(node, msg)
        if error is not None or target_attempt is None:
            log.warning("launch %s refused: %s", msg.launch_id, error)
            self._host.commits.send(node, p.LaunchDone(launch_id=msg.launch_id, exit_code=None, error=error))
        else:
            start = p.StartTask(
                launch_id=msg.launch_id, job_id=msg.job_id, attempt_id=target_attempt.attempt_id,
                command=msg.command, origin=node,
            )
            self._host.commits.send(target_attempt.node, start)
        self._host.commits.request_step()

    def _launch_target(self, node: str, msg: p.LaunchRequest) -> tuple[Attempt | None, str | None]:
        """The attempt a launch runs in, or why it may not."""
        parent = self._host.jobs.get(msg.job_id)
        if parent is None or not parent.is_gang or not parent.status.is_active or parent.ending is not None:
            return None, f"job {msg.job_id} is not a running multi-node job"
        children = self.children(parent)
        asking = [c for c in children if (a := c.current_attempt) and a.attempt_id == msg.attempt_id and a.node == node]
        if not asking:
            return None, f"attempt {msg.attempt_id} on {node} is not part of job {msg.job_id}"
        if msg.target not in parent.hosts:
            return None, f"job {msg.job_id} does not hold node {msg.target} (it holds {', '.join(parent.hosts)})"
        target = children[parent.hosts.index(msg.target)] if len(children) == parent.num_nodes else None
        target_attempt = target.current_attempt if target is not None else None
        if target_attempt is None:
            return None, f"node {msg.target} of job {msg.job_id} is not running"
        return target_attempt, None
