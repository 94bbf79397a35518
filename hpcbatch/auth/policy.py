"""Who may do what: the roles, the operations each may call, and ownership of jobs.

Rules (the issue's, after Slurm's and AWS IAM's habits):

* **admin**: everything, including nodes, node keys, access keys and the audit log.
* **developer**: compute environments, job queues, job definitions, and their own jobs.
* **user**: submit, and see, cancel, terminate and read the logs of their own jobs.
* Everyone may read compute environments, queues, job definitions and nodes.
* Only an admin makes a job queue preempting (``hpcbatch:preempts=true``): its jobs stop
  other users' running jobs, which a developer's own powers never reach (Slurm keeps
  PreemptMode to slurm.conf). A developer may turn it off, or mark a queue preemptible.
* Whether users see other users' jobs (DescribeJobs, ListJobs) is the head's
  ``private_data`` setting (Slurm's PrivateData); logs and scripts are never shared.

Pure: values in, a decision (or ``AccessDenied``) out. The API layer identifies the caller
and calls these; the service calls the job-level checks where it holds the job.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbatch.errors import HpcbatchError
from hpcbatch.operations import OPERATIONS

ROLES = ("admin", "developer", "user")
_RANK = {"user": 0, "developer": 1, "admin": 2}

# The least role an operation needs, and the operations that change nothing: both read from
# the one operations table (hpcbatch.operations). Anything absent needs admin (fail closed).
REQUIRED_ROLE: dict[str, str] = {op.name: op.role for op in OPERATIONS}

READ_ONLY = frozenset(op.name for op in OPERATIONS if not op.write)


class AccessDenied(HpcbatchError):
    """The caller is known but may not do this (AWS: AccessDeniedException, HTTP 403)."""

    aws_code = "AccessDeniedException"
    http_status = 403


@dataclass(frozen=True)
class Caller:
    """An authenticated identity: a Unix user name and a role."""

    user: str
    role: str
    via: str  # "socket" (kernel peer credentials) or "sigv4" (an access key)
    access_key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def authorize(caller: Caller, operation: str) -> None:
    """Raise AccessDenied unless ``caller``'s role may call ``operation`` at all."""
    need = REQUIRED_ROLE.get(operation, "admin")
    if _RANK.get(caller.role, -1) < _RANK[need]:
        raise AccessDenied(f"user {caller.user} (role {caller.role}) may not call {operation}: it needs role {need}")


def check_job_access(caller: Caller, action: str, job_id: str, owner: str) -> None:
    """Raise AccessDenied unless ``caller`` may ``action`` (cancel, terminate, read the logs of) the job."""
    if caller.is_admin or caller.user == owner:
        return
    raise AccessDenied(f"user {caller.user} may not {action} job {job_id} owned by {owner}")


def may_see_job(caller: Caller, owner: str, private_data: bool) -> bool:
    """DescribeJobs/ListJobs visibility under the ``private_data`` setting."""
    return not private_data or caller.is_admin or caller.user == owner


def check_preempting_queue(caller: Caller, queue: str, old: dict[str, str] | None, new: dict[str, str]) -> None:
    """Refuse a non-admin who turns a job queue's ``hpcbatch:preempts`` on (tags ``old`` -> ``new``)."""
    from hpcbatch.model.interrupts import PREEMPTS_TAG, queue_flag

    if caller.is_admin or not queue_flag(new, PREEMPTS_TAG) or queue_flag(old, PREEMPTS_TAG):
        return
    raise AccessDenied(
        f"user {caller.user} (role {caller.role}) may not make job queue {queue} preempting "
        f"(tags[\"{PREEMPTS_TAG}\"]): its jobs would stop other users' running jobs; it needs role admin"
    )
