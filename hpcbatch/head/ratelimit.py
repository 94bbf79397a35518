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
- Requests that fail authentication (unsigned, badly signed, unknown key) have no caller:
  they are counted per source address (class ``unauthenticated``); past its rate an address
  is answered 429 instead of 403. ``RefusalLog`` keeps such a flood out of the head's log:
  the first refusal from an address is logged, the rest are summed up once a window.
- Pure apart from the injected clock (monotonic seconds), so tests drive it directly.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from hpcbatch.auth.policy import READ_ONLY, Caller
from hpcbatch.errors import HpcbatchError

CLASSES = ("submit", "read", "write", "unauthenticated")
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
    # Per source address, for requests that fail authentication: a client with a wrong
    # secret (and boto3's retries) gets its 403s; a flood gets 429s.
    "unauthenticated": Rate(per_second=2.0, burst=20.0),
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
        if not self._take((caller_key(caller), kind), rate):
            raise TooManyRequests(
                f"Rate exceeded: {caller.user} may make {rate.per_second:g} {kind} calls per second "
                f"(bursts of {rate.burst:g}); retry with backoff"
            )

    def unauthenticated(self, address: str) -> TooManyRequests | None:
        """Count a request from ``address`` that failed authentication; the error to answer
        instead of the 403 when that address is over its rate."""
        rate = self._rates.get("unauthenticated")
        if rate is None or rate.per_second <= 0 or self._take((f"addr:{address}", "unauthenticated"), rate):
            return None
        return TooManyRequests(
            f"Rate exceeded: {rate.per_second:g} unauthenticated requests per second from {address} "
            f"(bursts of {rate.burst:g}); sign requests with a valid access key"
        )

    def _take(self, key: tuple[str, str], rate: Rate) -> bool:
        """Take one token from ``key``'s bucket; False (nothing taken) when it is empty."""
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
            return False
        bucket[0] -= 1.0
        return True

    @property
    def callers(self) -> int:
        """How many buckets are held (bounded by ``max_callers``)."""
        return len(self._buckets)


class RefusalLog:
    """Log lines for refused unauthenticated requests: a few per window, whatever the flood.

    The first refusal from each address in a window is logged as it happens (up to
    ``max_addresses`` of them); every other one is only counted, and the next refusal after
    the window has passed logs one summary line for them. Memory is bounded the same way.
    """

    def __init__(self, clock: Callable[[], float], window_s: float = 60.0, max_addresses: int = 100) -> None:
        self._clock = clock
        self._window = window_s
        self._max = max_addresses
        self._start = clock()
        self._seen: set[str] = set()
        self._counts: Counter[str] = Counter()
        self._suppressed = 0

    def note(self, address: str, what: str) -> list[str]:
        """Record one refusal (``what``: operation and error); the lines to log now."""
        now = self._clock()
        lines = []
        if now - self._start >= self._window:
            if self._suppressed:
                top, count = self._counts.most_common(1)[0] if self._counts else ("?", 0)
                lines.append(
                    f"refused {self._suppressed} more unauthenticated request(s) in the last {now - self._start:.0f} s "
                    f"from {len(self._counts)}{'+' if len(self._counts) >= self._max else ''} address(es); "
                    f"most from {top} ({count})"
                )
            self._start, self._suppressed = now, 0
            self._seen.clear()
            self._counts.clear()
        if address not in self._seen and len(self._seen) < self._max:
            self._seen.add(address)
            lines.append(f"{what} (from {address}; further refusals are summed up every {self._window:g} s)")
        else:
            self._suppressed += 1
            if address in self._counts or len(self._counts) < self._max:
                self._counts[address] += 1
        return lines
