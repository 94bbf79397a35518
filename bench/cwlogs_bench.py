"""CloudWatch Logs over the head's log store, figures as ``name=value`` lines.

* ``cwlogs_write_chunk_us`` / ``cwlogs_write_chunk_stamped_us``: the head keeping one 256 KiB
  chunk of output, without and with its timestamp record (median of 200).
* ``cwlogs_get_page_forward_ms``: GetLogEvents' scan of one full page (1 MB, ~9,000 lines of
  ~100 bytes) from the middle of a ``--mib`` MiB stream, median of 10.
* ``cwlogs_get_page_backward_ms``: the newest page of the same stream (no token), median of 10.
* ``cwlogs_filter_every_line_mib_per_s`` / ``cwlogs_filter_rare_phrase_mib_per_s``:
  FilterLogEvents' scan of the whole stream with a pattern every line matches, and with a
  phrase a few lines match (lines that cannot match are never decoded).

    python -m bench.cwlogs_bench [--mib N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hpcbatch.head.cwlogs import CloudWatchLogs, FilterPattern, StreamReader
from hpcbatch.head.logs import LogStore

ATTEMPT = "0123456789abcdef0123456789abcdef"
CHUNK = 256 * 1024


def _median_ms(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logs = LogStore(Path(tmp) / "logs")
        line = b"".join(b"step %08d loss=0.%06d lr=0.001 throughput=1234.5 samples/s node=node17 rank=3 ok\n"
                        % (i, i) for i in range(4000))
        data = (line * (args.mib * 2**20 // len(line) + 1))[: args.mib * 2**20]
        data = data[: data.rfind(b"\n") + 1]
        chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        plain = [0]

        def write_plain() -> None:
            logs.write("f" * 32, plain[0] * CHUNK, chunks[plain[0] % len(chunks)])
            plain[0] += 1

        stamped = [0]

        def write_stamped() -> None:
            i = stamped[0]
            logs.write(ATTEMPT, i * CHUNK, chunks[i], read_at_ms=1_000 + i, stored_at_ms=1_001 + i, job_id="job")
            stamped[0] += 1

        print(f"cwlogs_write_chunk_us={_median_ms(write_plain, 200) * 1000:.0f}")
        print(f"cwlogs_write_chunk_stamped_us={_median_ms(write_stamped, min(200, len(chunks))) * 1000:.0f}")
        while stamped[0] < len(chunks):
            write_stamped()
        reader = StreamReader(logs, ATTEMPT, finished=True, fallback_ms=0)
        middle = reader.boundary_before(reader.end // 2)
        forward = CloudWatchLogs._forward
        backward = CloudWatchLogs._backward
        print(f"cwlogs_get_page_forward_ms={_median_ms(lambda: forward(reader, middle, reader.end, 10_000, None, None), 10):.1f}")
        print(f"cwlogs_get_page_backward_ms="
              f"{_median_ms(lambda: backward(reader, reader.end, 0, 10_000, None, None), 10):.1f}")
        for name, text in (("every_line", 'loss "rank=3"'), ("rare_phrase", '"step 00001234"')):
            pattern = FilterPattern.parse(text)
            t = time.perf_counter()
            matched = sum(1 for e in reader.events(0, reader.end, pattern.bytes_test()) if pattern.matches(e.message))
            elapsed = time.perf_counter() - t
            assert matched > 0
            print(f"cwlogs_filter_{name}_mib_per_s={args.mib / elapsed:.0f}")


if __name__ == "__main__":
    main()
