"""The runner's start path: whatever a start set up is undone when the start fails.

Each test reproduces a leak found while splitting ``node_agent/runner.py`` into steps with
one cleanup path; a fake ``podman`` (a shell script) stands in where an image is needed.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from hpcbatch.protocol import ContainerDevice, ContainerOptions
from node_agent import cgroups
from node_agent.containers import Podman
from node_agent.runner import AttemptResult, AttemptSpec, Runner
from tests import prereq
from tests.unit.test_runner import _NO_CGROUP


def _fake_podman(tmp_path: Path, pull_gate: Path | None = None) -> Path:
    """A ``podman`` that succeeds at everything; ``image exists`` says no, so the runner
    pulls, and the pull waits until ``pull_gate`` exists (when given)."""
    script = tmp_path / "podman"
    wait = f"while [ ! -e {pull_gate} ]; do sleep 0.02; done; " if pull_gate else ""
    script.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" image exists "*) exit 1;; esac\n'
        f'case " $* " in *" pull "*) {wait}exit 0;; esac\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return script


def _eventfds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]":
                found.append(fd)
        except OSError:
            continue
    return found


@prereq.skipif(_NO_CGROUP is not None, "cgroup", f"cgroup mode unavailable here: {_NO_CGROUP}")
def test_a_container_refused_after_its_cgroup_was_made_leaves_no_cgroup_and_no_descriptor(tmp_path: Path) -> None:
    podman = Podman(str(_fake_podman(tmp_path)))
    # A device the job was granted no GPU for: container_launch refuses it after the cgroup is made.
    options = ContainerOptions(devices=[ContainerDevice(host_path="/dev/nvidia0")])
    spec = AttemptSpec("c1", "job", 1, ["true"], {}, 1, 64, image="img", container=options)

    async def body() -> None:
        runner = Runner(tmp_path / "state", on_exit=lambda r: None, memory_enforcement="cgroup",
                        container_runtime="podman", containers=podman)
        try:
            before = _eventfds()
            result = await runner.start(spec)
            assert isinstance(result, AttemptResult) and result.reason is not None
            assert "linuxParameters.devices names /dev/nvidia0" in result.reason
            assert _eventfds() == before  # v1's OOM eventfd (ContainerCgroup) was closed
            assert runner._cgroups is not None
            assert not (runner._cgroups.parent / "c1").exists()
        finally:
            await runner.shutdown(kill=True)

    asyncio.run(body())


def test_an_image_pulled_after_shutdown_is_not_started(tmp_path: Path) -> None:
    gate = tmp_path / "pulled"
    podman = Podman(str(_fake_podman(tmp_path, gate)))
    spec = AttemptSpec("p1", "job", 1, ["sleep", "30"], {"PATH": "/usr/bin:/bin"}, 1, 64, image="img",
                       container=ContainerOptions())
    ended: list[AttemptResult] = []

    async def body() -> None:
        runner = Runner(tmp_path / "state", on_exit=ended.append, memory_enforcement="rss",
                        container_runtime="podman", containers=podman)
        start = asyncio.ensure_future(runner.start(spec))
        try:
            async with asyncio.timeout(10):
                while not runner.is_pulling("p1"):
                    await asyncio.sleep(0.02)
            await runner.shutdown(kill=True)
            gate.touch()
            async with asyncio.timeout(10):
                result = await start
            assert isinstance(result, AttemptResult), result  # not a job nobody watches
            assert result.reason is not None and "shutting down" in result.reason
            assert runner.running() == []
        finally:
            gate.touch()
            if not start.done():
                start.cancel()

    asyncio.run(body())


@prereq.skipif(_NO_CGROUP is not None, "cgroup", f"cgroup mode unavailable here: {_NO_CGROUP}")
def test_a_memory_limit_the_kernel_refuses_leaves_no_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cgroup was made, then its limit refused: the start fails and the cgroup goes too."""
    real_write = cgroups.write_text

    def refuse_limits(path: str | Path, text: str) -> None:
        if Path(path).name in ("memory.limit_in_bytes", "memory.max"):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        real_write(path, text)

    async def body() -> None:
        runner = Runner(tmp_path / "state", on_exit=lambda r: None, memory_enforcement="cgroup")
        try:
            monkeypatch.setattr(cgroups, "write_text", refuse_limits)  # the kernel's answer, after the probe
            spec = AttemptSpec("m1", "job", 1, ["true"], {"PATH": "/usr/bin:/bin"}, 1, 64)
            result = await runner.start(spec)
            assert isinstance(result, AttemptResult) and result.reason is not None
            assert result.reason.startswith("CannotStartContainerError: memory cgroup: [Errno 22] Invalid argument")
            assert runner._cgroups is not None and not (runner._cgroups.parent / "m1").exists()
        finally:
            monkeypatch.undo()
            await runner.shutdown(kill=True)

    asyncio.run(body())
