"""The pure scheduler: events in, placement actions out; no I/O, no clock reads."""

from hpcbatch.scheduler.core import (
    Action,
    AttemptEnded,
    CancelRunnable,
    ComputeEnvironmentChanged,
    ComputeEnvironmentRemoved,
    Event,
    JobQueueChanged,
    JobQueueRemoved,
    JobRunnable,
    JobWithdrawn,
    NodeGone,
    NodePowerChanged,
    NodeUp,
    PreemptAttempt,
    RunTimesLearned,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    StateTimeLimit,
    Tick,
)
from hpcbatch.scheduler.decisions import Cause, Decision
from hpcbatch.scheduler.fairshare import FairSharePolicy
from hpcbatch.scheduler.gang import Reservation
from hpcbatch.scheduler.predict import Predictor, RunKey

__all__ = [
    "Action",
    "AttemptEnded",
    "CancelRunnable",
    "Cause",
    "ComputeEnvironmentChanged",
    "ComputeEnvironmentRemoved",
    "Decision",
    "Event",
    "FairSharePolicy",
    "JobQueueChanged",
    "JobQueueRemoved",
    "JobRunnable",
    "JobWithdrawn",
    "NodeGone",
    "NodePowerChanged",
    "NodeUp",
    "PreemptAttempt",
    "Predictor",
    "Reservation",
    "RunKey",
    "RunTimesLearned",
    "Scheduler",
    "SetWaitReason",
    "StartAttempt",
    "StartGang",
    "StateTimeLimit",
    "Tick",
]
