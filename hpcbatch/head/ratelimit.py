"""Per-caller rate limits: one token bucket per (caller, operation class), as AWS throttles.

Rules / theory of operation:

- A caller is an access key (SigV4) or a local user (the Unix socket's peer uid, by name):
  one runaway script of one person is throttled, everyone else is served.
- Operations fall into classes (``submit``, ``read``, ``write``); each class has a rate
  (tokens per second) and a burst (bucket size). AWS Batch throttles SubmitJob at 50 TPS;
  that is the default here, configurable in the head config (``[rate_limits]``).
- A refused call costs nothing beyond the bucket look-up: it is answered HTTP 429
  ``TooManyRequestsException`` (boto3 retries it with backoff) before the body is parsed,
  and it is neither audited nor stored, so a flood cannot fill the disk or the audit log.
- Memory is bounded: at most ``max_callers`` buckets are kept, least recently used first
  out. A forgotten bucket comes back full, which only ever errs towards serving.
- Pure apart from the injected clock (monotonic seconds), so tests drive it directly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from hpcbatch.auth.policy import READ_ONLY, Caller
from hpcbatch.errors import HpcbatchError

CLASSES = ("submit", "read", "write")
MAX_CALLERS = 10_000


class TooManyRequests(HpcbatchError):
    """The caller exceeded its rate for this kind of call (AWS: HTTP 429)."""

    aws_code = "TooManyRequestsException"
    http_status = 429


@dataclass(frozen=True)
class Rate:
    """``per_second`` tokens flow in; at most ``burst`` are saved up."""

    per_second: float
    burst: float


DEFAULT_RATES: dict[str, Rate] = {
    "submit": Rate(per_second=50.0, burst=100.0),  # AWS Batch SubmitJob: 50 TPS
    "read": Rate(per_second=100.0, burst=200.0),
    "write": Rate(per_second=20.0, burst=40.0),
}


def operation_class(operation: str) -> str:
    """The rate class of an operation: SubmitJob, reads, or any other change."""
    if operation == "SubmitJob":
        return "submit"
    return "read" if operation in READ_ONLY else "write"


def caller_key(caller: Caller) -> str:
    """Who is throttled: the access key when signed, else the local user."""
    return f"key:{caller.access_key_id}" if caller.access_key_id else f"user:{caller.user}"


class RateLimiter:
    """Token buckets per (caller, class); ``check`` raises ``TooManyRequests`` when empty."""

    def __init__(self, rates: Mapping[str, Rate], exempt: Collection[str], clock: Callable[[], float],
                 max_callers: int = MAX_CALLERS) -> None:
        self._rates = dict(rates)
        # "alice", an access key id, or "role:admin"
        self._exempt = frozenset(exempt)
        self._clock = clock
        self._max = max_callers
        self._buckets: OrderedDict[tuple[str, str], list[float]] = OrderedDict()  # -> [tokens, at]

    def exempt(self, caller: Caller) -> bool:
        return bool({caller.user, f"role:{caller.role}", caller.access_key_id or ""} & self._exempt)

    def check(self, caller: Caller, operation: str) -> None:
        kind = operation_class(operation)
        rate = self._rates.get(kind)
        if rate is None or rate.per_second <= 0 or self.exempt(caller):
            return
        key = (caller_key(caller), kind)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [rate.burst, now]
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(rate.burst, bucket[0] + (now - bucket[1]) * rate.per_second)
            bucket[1] = now
        if bucket[0] < 1.0:
            raise TooManyRequests(
                f"Rate exceeded: {caller.user} may make {rate.per_second:g} {kind} calls per second "
                f"(bursts of {rate.burst:g}); retry with backoff"
            )
        bucket[0] -= 1.0

    @property
    def callers(self) -> int:
        """How many buckets are held (bounded by ``max_callers``)."""
        return len(self._buckets)
