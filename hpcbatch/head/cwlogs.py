"""CloudWatch Logs on the head: what `aws logs`, boto3's ``logs`` client and every AWS tool
that shows a Batch job's output call, answered from the head's log store.

Theory of operation. AWS Batch sends a job's output to CloudWatch Logs, group
``/aws/batch/job`` (or the job definition's ``logConfiguration`` ``awslogs-group``), one
stream per attempt, named as DescribeJobs' ``logStreamName``. Here the stream is the
attempt's output file in hpcbatch.head.logs; an *event* is one line of it (the newline cut
off, as the awslogs driver does; empty lines are no event; a line longer than
``MAX_EVENT`` is cut every ``MAX_EVENT`` bytes from its start), stamped with the time the
agent read the chunk that ends it. While the attempt runs, a last line without its newline
is held back; once it stopped, it is an event too.

Positions are byte offsets, always at an event boundary, so the tokens are AWS's shapes
with an offset inside: ``f/<offset>`` and ``b/<offset>`` (56 digits). Reading forward from
the end answers the token it was given, unchanged: that is how clients know they are at the
end (AWS: "If you have reached the end of the stream, it returns the same token you passed
in"). FilterLogEvents merges the streams by (timestamp, stream, offset), and its token is
that key of the last event given.

The protocol is AWS's JSON 1.1 (``POST /``, ``X-Amz-Target: Logs_20140328.<Operation>``),
signed with SigV4 for service ``logs``; requests are checked against botocore's ``logs``
service model (types, bounds, patterns: hpcbatch.head.cwrequests), and errors come back in AWS's shape and codes
(``InvalidParameterException``, ``ResourceNotFoundException``, ``UnknownOperationException``).

Who sees what: as GetJobLogs (logs are never shared): a stream is its job owner's, or any
admin's. Under ``private_data`` another user's stream is answered exactly as a missing one;
otherwise reading it is AccessDeniedException, as GetJobLogs answers.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hpcbatch.auth.policy import Caller, authorize
from hpcbatch.errors import HpcbatchError
from hpcbatch.head.cwrequests import FilterPattern, LogsError, invalid, not_found, validate
from hpcbatch.head.logs import LogStore, Stamp

log = logging.getLogger("hpcbatch.cwlogs")

TARGET_PREFIX = "Logs_20140328."
DEFAULT_GROUP = "/aws/batch/job"
MAX_EVENT = 256 * 1024  # CloudWatch Logs' largest event
PAGE_BYTES = 1 << 20  # a page holds up to 1 MB of events (each counted with 26 bytes more)
PAGE_EVENTS = 10_000
EVENT_OVERHEAD = 26
_TOKEN = re.compile(r"([fb])/(\d{1,56})\Z", re.ASCII)
_LINE_SCAN = 8 << 20  # how far back a line's start is looked for; past it, lines are cut there
OPERATIONS = ("GetLogEvents", "FilterLogEvents", "DescribeLogStreams", "DescribeLogGroups")


# ------------------------------------------------------------------ streams and events
@dataclass(frozen=True)
class Event:
    """One line of output: bytes ``[start, end)``, its message and its times."""

    start: int
    end: int
    message: str
    timestamp: int
    ingestion_time: int


class StreamReader:
    """One attempt's output as CloudWatch events (see the module docstring)."""

    def __init__(self, logs: LogStore, attempt_id: str, *, finished: bool, fallback_ms: int) -> None:
        self._logs = logs
        self._attempt = attempt_id
        self.size = logs.size(attempt_id)
        self.stamps: list[Stamp] = logs.stamps(attempt_id)
        self._starts = [s.start for s in self.stamps]
        self._read_at = [s.read_at_ms for s in self.stamps]
        self._fallback = fallback_ms
        self.end = self.size if finished else self.boundary_before(self.size)

    def _read(self, offset: int, n: int) -> bytes:
        return self._logs.read(self._attempt, offset, n) if n > 0 else b""

    def boundary_before(self, p: int) -> int:
        """The last event boundary at or before byte ``p``."""
        pos = p
        start = None
        while pos > 0 and p - pos < _LINE_SCAN:
            lo = max(0, pos - 65536)
            i = self._read(lo, pos - lo).rfind(b"\n")
            if i >= 0:
                start = lo + i + 1
                break
            pos = lo
        if start is None:
            start = pos  # 0, or (a line longer than _LINE_SCAN) where the search stopped
        return start + (p - start) // MAX_EVENT * MAX_EVENT

    def _stamp(self, offset: int) -> Stamp | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        return self.stamps[i] if i >= 0 else None

    def position_at(self, at_ms: int | None, default: int) -> int:
        """The boundary before the first event stamped ``at_ms`` or later (stamps rise with
        the offset); ``default`` without a time."""
        if at_ms is None or not self.stamps:
            return default
        i = bisect.bisect_left(self._read_at, at_ms)
        if i == len(self.stamps):
            return self.end
        return min(self.end, self.boundary_before(self.stamps[i].start))

    def scan(self, p: int, stop: int, *, max_bytes: int = PAGE_BYTES,
             keep: Callable[[bytes], bool] | None = None) -> tuple[list[Event], int]:
        """Events from boundary ``p`` up to boundary ``stop``, about ``max_bytes`` of them (only
        those whose bytes ``keep`` accepts, if given); and the boundary where the scan stopped."""
        stop = min(stop, self.end)
        if p >= stop:
            return [], p
        buf = self._read(p, min(stop - p, max_bytes + MAX_EVENT))
        events: list[Event] = []
        i, taken = 0, 0
        while i < len(buf) and taken < max_bytes:
            nl = buf.find(b"\n", i, i + MAX_EVENT)
            if nl >= 0:
                j, body = nl + 1, buf[i:nl]
            elif i + MAX_EVENT <= len(buf):
                j = i + MAX_EVENT
                body = buf[i:j]
            elif p + len(buf) == stop:
                j, body = len(buf), buf[i:]
            else:
                break  # the line goes on past what was read: the next page has it
            if body and (keep is None or keep(body)):
                stamp = self._stamp(p + j - 1)
                ts = stamp.read_at_ms if stamp else self._fallback
                events.append(Event(p + i, p + j, body.decode(errors="replace"), ts,
                                    stamp.stored_at_ms if stamp else self._fallback))
                taken += len(body) + EVENT_OVERHEAD
            i = j
        return events, p + i

    def events(self, lo: int, hi: int, keep: Callable[[bytes], bool] | None = None) -> Iterator[Event]:
        """Every event between the boundaries ``lo`` and ``hi`` (that ``keep`` accepts), in order."""
        pos = lo
        while pos < min(hi, self.end):
            batch, after = self.scan(pos, hi, keep=keep)
            yield from batch
            if after <= pos:
                return
            pos = after


def in_time(event: Event, start: int | None, end: int | None) -> bool:
    return (start is None or event.timestamp >= start) and (end is None or event.timestamp < end)


@dataclass(frozen=True)
class TimeWindow:
    """GetLogEvents' startTime and endTime: events stamped in ``[start_ms, end_ms)``, None open."""

    start_ms: int | None = None
    end_ms: int | None = None

    def __contains__(self, event: Event) -> bool:
        return in_time(event, self.start_ms, self.end_ms)


def _token(direction: str, offset: int) -> str:
    return f"{direction}/{offset:056d}"


# ------------------------------------------------------------------ the operations
@dataclass(frozen=True)
class StreamInfo:
    """A stream the caller may read: its name, group, attempt, owner and job."""

    name: str
    group: str
    attempt_id: str
    job_id: str
    owner: str
    finished: bool
    started_at: int


def _group_of(container: Any) -> str:
    """The awslogs group a job's containerProperties name (AWS Batch's default otherwise)."""
    conf = container.get("logConfiguration") if isinstance(container, dict) else None
    if isinstance(conf, dict) and conf.get("logDriver", "awslogs") == "awslogs":
        group = (conf.get("options") or {}).get("awslogs-group")
        if isinstance(group, str) and group:
            return group
    return DEFAULT_GROUP


def _encode(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def _decode(token: str, check: Callable[[Any], bool]) -> Any:
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        key = None
    if key is None or not check(key):
        raise invalid("The specified nextToken is invalid.")
    return key


def _event_id(attempt_id: str, offset: int) -> str:
    """A stable id, digits as AWS's: the stream's hash and the line's offset."""
    digest = int.from_bytes(hashlib.sha256(attempt_id.encode()).digest()[:8], "big")
    return f"{digest:020d}{offset:020d}"


class CloudWatchLogs:
    """The four operations over the service's jobs and the engine's log store."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._jobs_of: dict[str, str] = {}  # attempt -> job (from the log store's .job files)
        self._ended: dict[str, StreamInfo] = {}  # a stopped attempt's stream never changes owner or name

    @property
    def _logs(self) -> LogStore:
        return self.service.engine.logs

    # -- what exists and who may see it
    def _job(self, job_id: str) -> Any:
        return self.service.engine.job(job_id) or self.service.store.get_job(job_id)

    def _info(self, job: Any, attempt_id: str) -> StreamInfo | None:
        for attempt in job.attempts:
            if attempt.attempt_id == attempt_id:
                return StreamInfo(attempt.log_stream_name, _group_of(job.container), attempt_id, job.job_id,
                                  job.owner, attempt.stopped_at is not None, attempt.started_at or job.created_at)
        return None

    def _visible(self, caller: Caller, owner: str) -> bool:
        return caller.is_admin or caller.user == owner

    def streams(self, caller: Caller, group: str | None = None) -> list[StreamInfo]:
        """Every stream with output that the caller may read (in ``group``, if named)."""
        attempts = self._logs.attempts()
        out = [info for info in self._ended_streams(attempts) if self._shown(caller, group, info)]
        wanted = self._live_attempts_by_job(attempts)
        if len(self._jobs_of) + len(self._ended) > 2 * len(attempts) + 1000:  # pruned jobs: forget them
            present = set(attempts)
            self._jobs_of = {a: j for a, j in self._jobs_of.items() if a in present}
            self._ended = {a: i for a, i in self._ended.items() if a in present}
        engine = self.service.engine
        found = {j: live for j in wanted if (live := engine.job(j)) is not None}
        missing = [j for j in wanted if j not in found]
        if missing:
            found.update((j.job_id, j) for j in self.service.store.get_jobs(missing))
        for job_id, attempt_ids in wanted.items():
            job = found.get(job_id)
            if job is None:
                continue
            out.extend(info for info in self._learn(job, attempt_ids) if self._shown(caller, group, info))
        return out

    def _shown(self, caller: Caller, group: str | None, info: StreamInfo) -> bool:
        """The caller may read the stream and it is in ``group`` (any, if None)."""
        return self._visible(caller, info.owner) and (group is None or info.group == group)

    def _ended_streams(self, attempts: list[str]) -> list[StreamInfo]:
        """The streams of stopped attempts already known (they never change)."""
        return [self._ended[a] for a in attempts if a in self._ended]

    def _live_attempts_by_job(self, attempts: list[str]) -> dict[str, list[str]]:
        """The attempts not yet known to have stopped, by job (from the log store's .job files)."""
        wanted: dict[str, list[str]] = {}
        for attempt_id in attempts:
            if attempt_id in self._ended:
                continue
            job_id = self._jobs_of.get(attempt_id)
            if job_id is None:
                job_id = self._logs.job_of(attempt_id)
                if job_id is None:
                    continue
                self._jobs_of[attempt_id] = job_id
            wanted.setdefault(job_id, []).append(attempt_id)
        return wanted

    def _learn(self, job: Any, attempt_ids: list[str]) -> list[StreamInfo]:
        """The job's streams among ``attempt_ids``; a stopped one is remembered for good."""
        infos = []
        for attempt_id in attempt_ids:
            info = self._info(job, attempt_id)
            if info is None:
                continue
            if info.finished:
                self._ended[attempt_id] = info
            infos.append(info)
        return infos

    def groups(self) -> list[str]:
        names = {DEFAULT_GROUP}
        for doc in self.service.store.list_resources("jobdef"):  # INACTIVE too: its jobs' streams stay
            names.add(_group_of(doc.get("containerProperties")))
            for node_range in (doc.get("nodeProperties") or {}).get("nodeRangeProperties") or []:
                names.add(_group_of((node_range or {}).get("container")))
        return sorted(names)

    def _group_name(self, body: dict[str, Any], *, required: bool = True) -> str | None:
        name, ident = body.get("logGroupName"), body.get("logGroupIdentifier")
        if name is not None and ident is not None:
            raise invalid("LogGroup name and LogGroup ARN are mutually exclusive parameters.")
        if ident is not None:  # a name or an ARN: arn:aws:logs:REGION:ACCOUNT:log-group:NAME[:*]
            if ident.startswith("arn:"):
                parts = ident.split(":")
                if len(parts) < 7 or parts[5] != "log-group":
                    raise invalid(f"logGroupIdentifier {ident!r} is not a log group ARN")
                ident = parts[6]
            name = ident
        if name is None:
            if required:
                raise invalid("Either logGroupName or logGroupIdentifier must be given.")
            return None
        if name != DEFAULT_GROUP and name not in self.groups():
            raise not_found("The specified log group does not exist.")
        return name

    def _stream(self, caller: Caller, group: str, name: str) -> StreamInfo:
        attempt_id = name.rsplit("/", 1)[-1]
        missing = not_found("The specified log stream does not exist.")
        if not re.fullmatch(r"[0-9a-f]{8,64}", attempt_id):
            raise missing
        job_id = self._jobs_of.get(attempt_id) or self._logs.job_of(attempt_id)
        job = self._job(job_id) if job_id else None
        if job is None:  # started, no output yet: only the engine knows it
            job = self.service.engine.job_with_attempt(attempt_id)
        info = self._info(job, attempt_id) if job is not None else None
        if info is None or info.name != name or info.group != group:
            raise missing
        if not self._visible(caller, info.owner):
            if self.service.private_data:
                raise missing  # another user's stream is answered as a missing one
            from hpcbatch.auth.policy import AccessDenied

            raise AccessDenied(f"user {caller.user} may not read the logs of job {info.job_id} owned by {info.owner}")
        return info

    def _reader(self, info: StreamInfo) -> StreamReader:
        return StreamReader(self._logs, info.attempt_id, finished=info.finished, fallback_ms=info.started_at)

    # -- GetLogEvents
    def GetLogEvents(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        group = self._group_name(body)
        assert group is not None
        reader = self._reader(self._stream(caller, group, body["logStreamName"]))
        start_ms, end_ms = body.get("startTime"), body.get("endTime")
        limit = body.get("limit", PAGE_EVENTS)
        lo = reader.position_at(start_ms, 0)
        hi = reader.position_at(end_ms, reader.end)
        token = body.get("nextToken")
        if token is not None:
            m = _TOKEN.match(token)
            if m is None:
                raise invalid("The specified nextToken is invalid.")
            direction, at = m.group(1), min(int(m.group(2)), reader.end)
            at = reader.boundary_before(at)  # a token from another stream stays on a boundary
        else:
            direction = "f" if body.get("startFromHead", False) else "b"
            at = lo if direction == "f" else hi
        if direction == "f":
            events, after = self._forward(reader, max(at, lo), hi, limit, TimeWindow(start_ms, end_ms))
            forward = _token("f", max(after, at))
            backward = _token("b", events[0].start if events else max(at, lo))
        else:
            events, before = self._backward(reader, min(at, hi), lo, limit, TimeWindow(start_ms, end_ms))
            backward = _token("b", min(before, at))
            forward = _token("f", events[-1].end if events else min(at, hi))
        if token is not None and events == []:  # AWS: the end of the stream answers the token given
            forward = token if direction == "f" else forward
            backward = token if direction == "b" else backward
        return {
            "events": [{"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_time}
                       for e in events],
            "nextForwardToken": forward,
            "nextBackwardToken": backward,
        }

    @staticmethod
    def _forward(reader: StreamReader, p: int, hi: int, limit: int, window: TimeWindow) -> tuple[list[Event], int]:
        out: list[Event] = []
        taken = 0
        while p < min(hi, reader.end):
            batch, after = reader.scan(p, hi)
            for e in batch:
                if len(out) >= limit or taken + len(e.message) + EVENT_OVERHEAD > PAGE_BYTES:
                    return out, e.start
                if e in window:
                    out.append(e)
                    taken += len(e.message.encode()) + EVENT_OVERHEAD
            if after <= p:
                break
            p = after
        return out, p

    @staticmethod
    def _backward(reader: StreamReader, x: int, lo: int, limit: int, window: TimeWindow) -> tuple[list[Event], int]:
        if x <= lo:
            return [], x
        w = max(lo, reader.boundary_before(max(lo, x - PAGE_BYTES - MAX_EVENT)))
        scanned = [e for e in reader.events(w, x)]
        out: list[Event] = []
        taken = 0
        before = w
        for e in reversed(scanned):
            if len(out) >= limit or taken + len(e.message) + EVENT_OVERHEAD > PAGE_BYTES:
                before = e.end
                break
            if e in window:
                out.append(e)
                taken += len(e.message.encode()) + EVENT_OVERHEAD
        out.reverse()
        return out, before

    # -- FilterLogEvents
    def FilterLogEvents(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        group = self._group_name(body)
        query = _FilterQuery.parse(body)
        streams = [s for s in self.streams(caller, group) if query.wants_stream(s.name)]
        found: list[_Found] = []
        for info in streams:
            found.extend(self._filter_stream(info, query))
        found.sort(key=lambda f: f[0], reverse=not query.ascending)
        return _filter_page(found, query)

    def _filter_stream(self, info: StreamInfo, query: _FilterQuery) -> list[_Found]:
        """One stream's events that match, after the token's key, at most ``limit + 1``."""
        reader = self._reader(info)
        start_ms, end_ms, after, ascending = query.start_ms, query.end_ms, query.after, query.ascending
        lo_ms = start_ms
        if after is not None and ascending:
            lo_ms = max(lo_ms or 0, after[0])
        lo = reader.position_at(lo_ms, 0)
        hi = reader.position_at(end_ms, reader.end)
        hi_ms = end_ms
        if after is not None and not ascending:
            hi_ms = min(hi_ms if hi_ms is not None else after[0] + 1, after[0] + 1)
            hi = min(hi, reader.position_at(hi_ms, reader.end))
        mine: list[_Found] = []
        for e in reader.events(lo, hi, query.keep):
            if not in_time(e, start_ms, end_ms) or not query.pattern.matches(e.message):
                continue
            key = (e.timestamp, info.name, e.start)
            if after is not None and (key <= after if ascending else key >= after):
                continue
            mine.append((key, info, e))
            if ascending and len(mine) > query.limit:
                break
        return mine if ascending else mine[-(query.limit + 1):]

    # -- DescribeLogStreams
    def DescribeLogStreams(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        group = self._group_name(body)
        order = body.get("orderBy", "LogStreamName")
        prefix = body.get("logStreamNamePrefix")
        if order == "LastEventTime" and prefix is not None:
            raise invalid("Cannot order by LastEventTime with a logStreamNamePrefix.")
        descending = body.get("descending", False)
        limit = body.get("limit", 50)
        region, account = self.service.region, self.service.account
        rows = []
        for info in self.streams(caller, group):
            if prefix is not None and not info.name.startswith(prefix):
                continue
            stamps = self._logs.stamps(info.attempt_id)
            row: dict[str, Any] = {
                "logStreamName": info.name,
                "creationTime": stamps[0].stored_at_ms if stamps else info.started_at,
                "arn": f"arn:aws:logs:{region}:{account}:log-group:{info.group}:log-stream:{info.name}",
                "storedBytes": 0,  # AWS: deprecated, always 0
            }
            if stamps:
                row.update(firstEventTimestamp=stamps[0].read_at_ms, lastEventTimestamp=stamps[-1].read_at_ms,
                           lastIngestionTime=stamps[-1].stored_at_ms)
            rows.append(row)

        def sort_key(row: dict[str, Any]) -> list[Any]:
            if order == "LastEventTime":
                return [row.get("lastEventTimestamp", 0), row["logStreamName"]]
            return [row["logStreamName"]]

        rows.sort(key=sort_key, reverse=descending)
        if body.get("nextToken") is not None:
            shape = (int, str) if order == "LastEventTime" else (str,)
            after = _decode(body["nextToken"], lambda k: isinstance(k, list) and len(k) == len(shape)
                            and all(isinstance(v, t) for v, t in zip(k, shape, strict=True)))
            rows = [r for r in rows if (sort_key(r) < after if descending else sort_key(r) > after)]
        result: dict[str, Any] = {"logStreams": rows[:limit]}
        if len(rows) > limit:
            result["nextToken"] = _encode(sort_key(rows[limit - 1]))
        return result

    # -- DescribeLogGroups
    def DescribeLogGroups(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix, pattern = body.get("logGroupNamePrefix"), body.get("logGroupNamePattern")
        if prefix is not None and pattern is not None:
            raise invalid("logGroupNamePrefix and logGroupNamePattern are mutually exclusive parameters.")
        wanted = body.get("logGroupIdentifiers")
        limit = body.get("limit", 50)
        region, account = self.service.region, self.service.account
        names = [n for n in self.groups()
                 if (prefix is None or n.startswith(prefix)) and (pattern is None or pattern in n)]
        if wanted is not None:
            names = [n for n in names
                     if n in wanted or f"arn:aws:logs:{region}:{account}:log-group:{n}" in wanted]
        if body.get("nextToken") is not None:
            after = _decode(body["nextToken"], lambda k: isinstance(k, str))
            names = [n for n in names if n > after]
        result: dict[str, Any] = {
            "logGroups": [
                {
                    "logGroupName": n,
                    "creationTime": 0,
                    "metricFilterCount": 0,
                    "arn": f"arn:aws:logs:{region}:{account}:log-group:{n}:*",
                    "logGroupArn": f"arn:aws:logs:{region}:{account}:log-group:{n}",
                    "storedBytes": 0,
                    "logGroupClass": "STANDARD",
                }
                for n in names[:limit]
            ]
        }
        if len(names) > limit:
            result["nextToken"] = _encode(names[limit - 1])
        return result


_Found = tuple[tuple[int, str, int], StreamInfo, Event]  # (timestamp, stream, offset), stream, event


@dataclass(frozen=True)
class _FilterQuery:
    """A FilterLogEvents request, checked: which streams, which events, from where."""

    names: list[str] | None
    prefix: str | None
    pattern: FilterPattern
    keep: Callable[[bytes], bool] | None
    start_ms: int | None
    end_ms: int | None  # exclusive
    limit: int
    ascending: bool
    after: tuple[int, str, int] | None  # the token's key: the last event given

    @classmethod
    def parse(cls, body: dict[str, Any]) -> _FilterQuery:
        names, prefix = body.get("logStreamNames"), body.get("logStreamNamePrefix")
        if names is not None and prefix is not None:
            raise invalid("logStreamNames and logStreamNamePrefix are mutually exclusive parameters.")
        pattern = FilterPattern.parse(body.get("filterPattern", ""))
        end_ms = body.get("endTime")
        if end_ms is not None:
            end_ms += 1  # FilterLogEvents' endTime is inclusive ("later than this time are not returned")
        ascending = body.get("startFromHead", True)
        after: tuple[int, str, int] | None = None
        if body.get("nextToken") is not None:
            key = _decode(body["nextToken"], _filter_token_ok)
            ascending = key[0] == "f"
            after = (key[1], key[2], key[3])
        return cls(names=names, prefix=prefix, pattern=pattern, keep=pattern.bytes_test(),
                   start_ms=body.get("startTime"), end_ms=end_ms, limit=body.get("limit", PAGE_EVENTS),
                   ascending=ascending, after=after)

    def wants_stream(self, name: str) -> bool:
        return (self.names is None or name in self.names) and (self.prefix is None or name.startswith(self.prefix))


def _filter_token_ok(k: Any) -> bool:
    return (isinstance(k, list) and len(k) == 4 and k[0] in ("f", "b") and isinstance(k[1], int)
            and isinstance(k[2], str) and isinstance(k[3], int))


def _filter_page(found: list[_Found], query: _FilterQuery) -> dict[str, Any]:
    """The sorted matches cut to one page (``limit`` events, 1 MB), with a token if more remain."""
    page: list[dict[str, Any]] = []
    taken = 0
    more = False
    last = None
    for key, info, e in found:
        size = len(e.message.encode()) + EVENT_OVERHEAD
        if len(page) >= query.limit or taken + size > PAGE_BYTES:
            more = True
            break
        page.append({"logStreamName": info.name, "timestamp": e.timestamp, "message": e.message,
                     "ingestionTime": e.ingestion_time, "eventId": _event_id(info.attempt_id, e.start)})
        taken += size
        last = key
    result: dict[str, Any] = {"events": page, "searchedLogStreams": []}
    if more and last is not None:
        result["nextToken"] = _encode(["f" if query.ascending else "b", *last])
    return result


# ------------------------------------------------------------------ HTTP
def _error(exc: HpcbatchError) -> web.Response:
    code = exc.aws_code
    status = exc.http_status
    if code == "ClientException":  # our generic client mistake, in the logs service's words
        code = "InvalidParameterException"
    return web.Response(
        status=status,
        body=json.dumps({"__type": code, "message": exc.message}),
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-ErrorType": code},
    )


def mount_logs(app: web.Application, service: Any, identifier: Any, *, region: str | None,
               limiter: Any = None) -> None:
    """Answer the CloudWatch Logs JSON protocol at ``POST /`` on the head's API."""
    logs = CloudWatchLogs(service)

    def identify(request: web.Request, raw: bytes) -> Caller:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and sock.family == socket.AF_UNIX:
            return identifier.identify(request, raw)  # the kernel names local callers
        from hpcbatch.auth.keys import AccessKey
        from hpcbatch.auth.sigv4 import SignedRequest, verify

        def lookup(access_key_id: str) -> AccessKey | None:
            doc = service.store.get_access_key(access_key_id)
            return None if doc is None else AccessKey(**doc)

        signed = SignedRequest(request.method, request.rel_url.raw_path,
                               request.rel_url.raw_query_string, request.headers, raw)
        key = verify(signed, time.time(), lookup, region=region, service="logs")
        return Caller(user=key.user, role=key.role, via="sigv4", access_key_id=key.access_key_id)

    async def handle(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        operation = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise invalid("the request body is over the head's size limit") from None
            if operation not in OPERATIONS:
                shown = target[:100] or "(no X-Amz-Target header)"
                raise LogsError("UnknownOperationException",
                                f"{shown} is not an operation hpcbatch answers; it answers "
                                f"{', '.join(TARGET_PREFIX + o for o in OPERATIONS)}")
            caller = identify(request, raw)
            if limiter is not None:
                limiter.check(caller, "GetJobLogs")
            authorize(caller, "GetJobLogs")  # who may read logs at all: as GetJobLogs
            try:
                body = json.loads(raw) if raw else {}
            except ValueError as exc:
                raise LogsError("SerializationException", f"the request body is not valid JSON: {exc}") from None
            result = getattr(logs, operation)(validate(operation, body), caller)
        except HpcbatchError as exc:
            if exc.http_status >= 500:
                log.warning("%s refused: %s: %s", operation or "logs", exc.aws_code, exc.message)
            return _error(exc)
        except Exception:
            log.exception("logs %s failed", operation)
            return _error(HpcbatchError(f"{operation} failed on the head; see the head's log"))
        return web.Response(body=json.dumps(result), content_type="application/x-amz-json-1.1")

    app.router.add_post("/", handle)
