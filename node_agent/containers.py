"""The container adapter: podman (as root, runtime runc) behind a few calls the runner makes.

Theory of operation:

* The agent (root) runs ``podman``; the job inside runs as its owner: ``--user uid:gid``
  plus ``--group-add`` for every supplementary group, never root unless the node allows
  root jobs.
* No way up (docs/security.md, "Containers"): ``--security-opt no-new-privileges`` (a
  setuid file in the image changes no id), ``--cap-drop all`` (plus only the capabilities
  the head's ``container_capabilities`` lists, ``ContainerOptions.capabilities``), and a user
  namespace (``--uidmap``/``--gidmap``, ``id_maps``): container ids 0-65535 are the owner's
  subordinate ids (``/etc/subuid``, or a range derived from ``container_subid_base``), except
  the owner's own uid and groups, which stay themselves, so the owner's files on mounted
  host paths are theirs as on the bare node, and container root is an unprivileged host id.
  Every bind mount is ``nosuid,nodev``, and so is every tmpfs whatever its options say.
  A job owned by root (a node with ``allow_root_jobs``) gets no user namespace, still no
  capabilities. ``privileged`` (only where the head's admin allowed it) is podman's, whole.
* podman 4.3 cannot mount an image through idmapped layers with a non-contiguous map (the
  overlay mount fails with EACCES): ``no_idmapped_layers`` records in podman's runroot that
  they are unsupported (containers/storage's own feature record; newer podman reads
  ``_CONTAINERS_OVERLAY_DISABLE_IDMAP=yes``, which is set too), so podman makes one chowned
  copy of an image per owner on first use (seconds, once) and reuses it.
* ``podman --runtime runc``: crun refuses the hybrid cgroup layout of some nodes. Explicit
  ``--ulimit nofile=1024:1024 --ulimit nproc=4096:4096``: podman's defaults are the
  agent's own hard limits, which a node without CAP_SYS_RESOURCE head-room cannot grant.
  A job's ``ulimits`` replace these by name.
* Host network and UTS namespaces: a container sees the node's interfaces (the fabric), its
  hostname and its address, as a bare job does. Its own PID namespace, with an init as pid
  1 (podman's catatonit: reaps, forwards signals, so the job is not pid 1), except a
  multi-node job's (``host_pid``): PMIx and MPI daemons started through the launcher bridge
  use robust mutexes and pids across processes and must see the node's pids (as with
  Apptainer and Enroot); it still has no capabilities. The fabric devices
  (``/dev/infiniband``, EFA's) and the job's GPUs are passed in as devices; a job that was
  granted no GPU gets no ``/dev/nvidia*`` node, not even one its definition names.
* The attempt's work dir (TMPDIR, hostfile and MPI launcher) is mounted at the same path,
  and at ``CONTAINER_WORK_DIR`` (the job's working directory, the same on every node), and so is the launcher bridge's socket: ``mpirun`` inside the image calls the
  launcher, the agent on the target node ``exec``s the daemon in that node's container.
* Pull is separate from run, so STARTING covers the pull, as on AWS; a pull failure is
  AWS's ``CannotPullContainerError``. The run says ``--pull missing`` only as a safety net
  for an image removed from the cache after the agent saw it there. Images stay in the node's storage
  (the cache); ``images`` lists it for the head.
* A container is named ``hpcb-<attempt id>``; ``remove`` (``rm --force --time 0``) is how
  a kill, a timeout or an orphan after an agent restart is made to leave nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcbatch import protocol as p
from node_agent.container_cgroup import ContainerCgroup

log = logging.getLogger(__name__)

CANNOT_PULL = "CannotPullContainerError"
CANNOT_START = "CannotStartContainerError"
NAME_PREFIX = "hpcb-"
DEFAULT_ULIMITS = {"nofile": (1024, 1024), "nproc": (4096, 4096)}
PULL_TIMEOUT_S = 900.0
# The work dir is also here, the same path on every node: mpirun starts remote ranks in its
# own working directory, which must exist in every node's container.
CONTAINER_WORK_DIR = "/hpcbatch/work"
EXEC_WAIT_S = 60.0  # how long a launched daemon waits for its node's container to come up
_EFA_DEVICE_GLOB = "uverbs*"  # EFA and InfiniBand both expose /dev/infiniband/uverbsN
_NVIDIA_SHARED = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
SUBID_COUNT = 65536  # container ids 0..65535 (an image's files, nobody's 65534) are mapped
DEFAULT_SUBID_BASE = 1 << 31  # owners without /etc/subuid ranges: base + 65536 x (uid mod SUBID_SLOTS)
SUBID_SLOTS = 32767  # so the highest id stays below 2^32 - 1 (the kernel's "no id")
_NO_SUID = "nosuid,nodev"
# containers/storage's record of "idmapped lower layers work here" (podman 4.3), in the runroot.
_IDMAP_RECORD = "overlay/idmapped-lower-dir"


def container_name(attempt_id: str) -> str:
    """The podman name of an attempt's container."""
    return f"{NAME_PREFIX}{attempt_id}"


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom the container's processes run as (the job's owner on this node)."""

    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ContainerRun:
    """What ``Podman.run_argv`` builds a ``podman run`` from: one attempt's container.

    ``subids`` (host uid, host gid where container id 0 lands) put the container in a user
    namespace (``id_maps``); ``host_pid`` keeps the node's PID namespace (multi-node MPI).
    """

    attempt_id: str
    image: str
    command: Sequence[str]
    environment: Mapping[str, str]
    identity: Identity | None
    options: p.ContainerOptions
    work_dir: str
    cwd: str
    memory_mib: int
    gpu_devices: Sequence[str] = ()
    gpu_indices: Sequence[str] = ()
    fabric: bool = False
    extra_mounts: Sequence[str] = ()
    cpus: Sequence[int] = ()
    cgroup_parent: str | None = None
    subids: tuple[int, int] | None = None
    host_pid: bool = False


class Podman:
    """One node's podman: storage, registries it may reach over plain HTTP, devices to pass."""

    def __init__(
        self,
        binary: str,
        *,
        storage: str = "",
        insecure_registries: Sequence[str] = (),
        dev_root: str = "/dev",
        auth_file: str = "",
        subid_base: int = DEFAULT_SUBID_BASE,
    ) -> None:
        self.binary = binary
        self._global = [binary, "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        self._global += storage_arguments(storage)
        self.subid_base = subid_base
        self._runroot = storage_arguments(storage)[3] if storage else ""  # "": the system's, asked once
        self._insecure = tuple(insecure_registries)
        self._auth = ["--authfile", auth_file] if auth_file else []  # registries' credentials (the node's)
        self._dev = Path(dev_root)
        self._pulls: dict[str, asyncio.Future[str | None]] = {}  # image -> pull in flight
        # Images this agent found or pulled into the cache: their next jobs skip ``image exists``
        # (a podman process, about 15% of a short container job's CPU). One removed behind our
        # back is pulled by ``run --pull missing`` instead.
        self._present: set[str] = set()
        self._cdi = shutil.which("nvidia-ctk") is not None
        self.pulls = 0  # images actually pulled so far: the cache changed when this moves

    # ------------------------------------------------------------------ images
    async def pull(self, image: str) -> str | None:
        """Make ``image`` present in the node's cache; None, or AWS's reason why not.

        Concurrent pulls of one image (a multi-node gang, an array) share one podman pull.
        """
        pending = self._pulls.get(image)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pulls[image] = future
        try:
            result = await self._pull(image)
        except Exception as exc:  # never leave waiters hanging
            result = f"{CANNOT_PULL}: {image}: {exc}"
        finally:
            self._pulls.pop(image, None)
        future.set_result(result)
        return result

    async def _pull(self, image: str) -> str | None:
        if image in self._present:
            return None
        code, _ = await self._run(["image", "exists", image], timeout=60)
        if code == 0:
            self._present.add(image)
            return None
        code, out = await self._run(["pull", "--quiet", *self._registry_arguments(image), image], timeout=PULL_TIMEOUT_S)
        if code == 0:
            self.pulls += 1
            self._present.add(image)
            return None
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"podman pull exited with {code}"
        detail = detail.removeprefix("Error: ")
        return f"{CANNOT_PULL}: {detail}"[:1024]

    def _registry_arguments(self, image: str) -> list[str]:
        """How podman reaches ``image``'s registry: plain HTTP where allowed, the node's credentials."""
        return [*self._auth, *(["--tls-verify=false"] if _registry(image) in self._insecure else [])]

    async def images(self) -> list[str]:
        """Names (repository:tag) of the images in this node's cache, sorted."""
        code, out = await self._run(["images", "--format", "json"], timeout=60)
        if code != 0:
            return []
        try:
            docs = json.loads(out or "[]")
        except ValueError:
            return []
        names = {n for d in docs for n in (d.get("Names") or []) if not n.startswith("<none>")}
        self._present &= names  # an image named otherwise (a short name) is checked again: harmless
        return sorted(names)

    async def _run(self, args: list[str], timeout: float) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *self._global, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, f"timed out after {timeout:.0f} s"
        return proc.returncode or 0, out.decode(errors="replace")

    def no_idmapped_layers(self) -> None:
        """Make podman copy an image per id map instead of idmapped overlay layers (module doc).

        Writes containers/storage's cached feature record in the runroot (a tmpfs: podman
        would probe again after a reboot, so this is checked before every run; a stat).
        """
        if not self._runroot:
            out = subprocess.run([*self._global, "info", "--format", "{{.Store.RunRoot}}"],
                                 capture_output=True, text=True, check=False, timeout=60).stdout.strip()
            self._runroot = out or "/run/containers/storage"
        record = Path(self._runroot, _IDMAP_RECORD)
        off = record.with_name(record.name + "-false")
        if off.exists():
            return
        record.parent.mkdir(parents=True, exist_ok=True)
        record.with_name(record.name + "-true").unlink(missing_ok=True)
        off.write_text("hpcbatch: id maps with holes need chowned copies (node_agent/containers.py)")

    # ------------------------------------------------------------------ run, exec, remove
    def run_argv(self, run: ContainerRun) -> list[str]:
        """The ``podman run`` command line for one attempt (attached: its output is the job's)."""
        options = run.options
        argv = [
            *self._global, "run", "--rm", "--pull", "missing", *self._registry_arguments(run.image),
            "--name", container_name(run.attempt_id), "--network", "host", "--uts", "host",
            # The container's stdout and stderr are the job's output.log itself: no relay by
            # conmon, nothing kept by podman.
            "--log-driver", "passthrough",
            "--security-opt", "label=disable",
        ]
        argv += _privilege_arguments(options)
        argv += _identity_arguments(run.identity, run.subids)
        argv += _limit_arguments(run)
        argv += _mount_arguments(run)
        argv += self._device_arguments(run)
        if options.shm_size_mib:
            argv.append(f"--shm-size={options.shm_size_mib}m")
        argv += _tmpfs_arguments(options)
        # A private PID namespace with an init as pid 1; a multi-node job keeps the host's
        # (PMIx and MPI daemons use robust mutexes and pids across processes).
        argv += ["--pid", "host"] if run.host_pid and not options.init else ["--init"]
        if options.privileged:
            argv.append("--privileged")
        for key, value in run.environment.items():
            argv += ["--env", f"{key}={value}"]
        argv += ["--workdir", CONTAINER_WORK_DIR if run.cwd == run.work_dir else run.cwd, "--", run.image, *run.command]
        return argv

    def _device_arguments(self, run: ContainerRun) -> list[str]:
        """The devices its definition names, the fabric's, and exactly its GPUs."""
        argv = []
        for d in run.options.devices:
            if not run.gpu_devices and _is_gpu_node(d.host_path):
                continue  # container_launch refuses these first; never a GPU the job was not granted
            argv += ["--device", f"{d.host_path}:{d.container_path or d.host_path}:{d.permissions or 'rwm'}"]
        if run.fabric:
            argv += [f"--device={dev}" for dev in self.fabric_devices()]
        argv += self.gpu_arguments(run.gpu_devices, run.gpu_indices)
        if run.cpus:  # a GPU job: its GPUs' NUMA CPUs (a bare job gets taskset, node_agent.cpu_binding)
            argv.append(f"--cpuset-cpus={','.join(map(str, run.cpus))}")
        return argv

    def exec_argv(
        self, attempt_id: str, command: str, environment: Mapping[str, str], identity: Identity | None, cwd: str
    ) -> list[str]:
        """``podman exec`` of ``/bin/sh -c command`` in a running attempt's container (an MPI daemon).

        The container may still be starting (``podman run`` takes a fraction of a second):
        the exec first waits, up to ``EXEC_WAIT_S``, until it exists and runs.
        """
        name = container_name(attempt_id)
        exists = shlex.join([*self._global, "container", "exists", name])
        running = shlex.join([*self._global, "wait", "--condition", "running", name])
        wait = (
            f"i=0; until {exists}; do i=$((i+1)); [ $i -gt {int(EXEC_WAIT_S * 10)} ] && break; sleep 0.1; done; "
            f"{running} >/dev/null 2>&1; "
        )
        argv = ["/bin/sh", "-c", wait + 'exec "$@"', "sh", *self._global, "exec"]
        if identity is not None:
            argv += ["--user", f"{identity.uid}:{identity.gid}"]
        for key, value in environment.items():
            argv += ["--env", f"{key}={value}"]
        return [*argv, "--workdir", cwd, container_name(attempt_id), "/bin/sh", "-c", command]

    def remove(self, attempt_id: str) -> subprocess.Popen[bytes]:
        """Start ``podman rm --force --time 0`` (kills what runs inside); returns the process."""
        return subprocess.Popen(
            [*self._global, "rm", "--force", "--ignore", "--time", "0", container_name(attempt_id)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def containers(self) -> list[str]:
        """Names of this node's hpcbatch containers (running or not), for cleanup."""
        out = subprocess.run(
            [*self._global, "ps", "--all", "--format", "{{.Names}}", "--filter", f"name=^{NAME_PREFIX}"],
            capture_output=True, text=True, check=False, timeout=60,
        ).stdout
        return [n for n in out.split() if n.startswith(NAME_PREFIX)]

    # ------------------------------------------------------------------ devices
    def fabric_devices(self) -> list[str]:
        """The RDMA devices of the node (InfiniBand, RoCE, EFA): ``/dev/infiniband/*``."""
        ib = self._dev / "infiniband"
        try:
            return sorted(str(ib / name) for name in os.listdir(ib))
        except OSError:
            return []

    def gpu_arguments(self, gpu_ids: Sequence[str], indices: Sequence[str] = ()) -> list[str]:
        """Exactly the job's GPUs: CDI names where the NVIDIA toolkit is, else device nodes.

        ``gpu_ids`` are what the head assigned (UUIDs, or names of declared GPUs), as in
        NVIDIA_VISIBLE_DEVICES; ``indices`` their positions on this node (CUDA_VISIBLE_DEVICES):
        the device nodes are ``/dev/nvidiaN`` for those, plus the shared control nodes.
        """
        if not gpu_ids:
            return []
        if self._cdi:
            return [f"--device=nvidia.com/gpu={g}" for g in gpu_ids]
        argv = []
        for g in indices:
            path = self._dev / f"nvidia{g}"
            if g.isdigit() and path.exists():
                argv.append(f"--device={path}")
        argv += [f"--device={d}" for d in _NVIDIA_SHARED if os.path.exists(d)]
        return argv


def storage_arguments(storage: str | Path) -> list[str]:
    """podman's ``--root``/``--runroot`` for a node's own image cache ([] for the system's).

    Several test "hosts" share one machine, so each can have its own cache. podman wants a
    runroot under 50 characters: it goes in /run, named by a hash of the storage path.
    """
    if not storage:
        return []
    tag = hashlib.sha1(os.fsencode(Path(storage).resolve())).hexdigest()[:16]
    return ["--root", str(Path(storage) / "root"), "--runroot", f"/run/hpcbatch-podman/{tag}"]


def id_maps(keep: Sequence[int], base: int) -> list[str]:
    """podman ``--uidmap``/``--gidmap`` values (``container:host:count``) for a job's user namespace.

    Container ids 0..65535 land on host ids ``base``..``base+65535`` (unprivileged: container
    root is not host root), except the ids in ``keep`` (the owner's uid, or gid and groups),
    which map to themselves, also above 65535. A kept id inside the host range leaves a hole
    there (no host id is mapped twice: the kernel refuses that).

    >>> id_maps([1001], 200000)
    ['0:200000:1001', '1001:1001:1', '1002:201002:64534']
    """
    kept = sorted(set(keep))
    holes = {k for k in kept if k < SUBID_COUNT} | {k - base for k in kept if base <= k < base + SUBID_COUNT}
    argv, start = [f"{k}:{k}:1" for k in kept], 0
    for h in sorted(holes):
        if h > start:
            argv.append(f"{start}:{base + start}:{h - start}")
        start = h + 1
    if start < SUBID_COUNT:
        argv.append(f"{start}:{base + start}:{SUBID_COUNT - start}")
    return sorted(argv, key=lambda m: int(m.split(":", 1)[0]))


def subordinate_ids(user: str, uid: int, base: int = DEFAULT_SUBID_BASE, etc: str = "/etc") -> tuple[int, int]:
    """Where a job's container ids land on the host: (uid base, gid base).

    The owner's own subordinate ranges (``/etc/subuid``, ``/etc/subgid``: lines
    ``name-or-uid:start:count``, as rootless podman would use them) where they hold 65536
    ids; else ``base + 65536 x (uid mod 32767)``: disjoint for uids less than 32767 apart,
    never below ``base``.
    """
    return (_subid(Path(etc, "subuid"), user, uid, base), _subid(Path(etc, "subgid"), user, uid, base))


def _subid(path: Path, user: str, own: int, base: int) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        name, _, rest = line.strip().partition(":")
        start, _, count = rest.partition(":")
        if (name in (user, str(own)) and start.isdigit() and count.isdigit() and int(start) >= SUBID_COUNT
                and int(count) >= SUBID_COUNT):
            return int(start)
    return base + SUBID_COUNT * (own % SUBID_SLOTS)


def _privilege_arguments(options: p.ContainerOptions) -> list[str]:
    if options.privileged:  # the admin's explicit escape hatch keeps podman's meaning
        return []
    return ["--security-opt", "no-new-privileges", "--cap-drop", "all", *(f"--cap-add={c}" for c in options.capabilities)]


def _identity_arguments(identity: Identity | None, subids: tuple[int, int] | None) -> list[str]:
    """The owner (uid, gid, supplementary groups) and, with ``subids``, its user namespace."""
    if identity is None:
        return []
    argv = ["--user", f"{identity.uid}:{identity.gid}"]
    argv += [f"--group-add={g}" for g in identity.groups if g != identity.gid]
    if subids is not None:
        argv += [f"--uidmap={m}" for m in id_maps((identity.uid,), subids[0])]
        argv += [f"--gidmap={m}" for m in id_maps((identity.gid, *identity.groups), subids[1])]
    return argv


def _limit_arguments(run: ContainerRun) -> list[str]:
    """ulimits (the job's replace the defaults by name), memory, the cgroup parent."""
    limits = dict(DEFAULT_ULIMITS)
    for u in run.options.ulimits:
        limits[u.name] = (u.soft, u.hard)
    argv = [f"--ulimit={name}={soft}:{hard}" for name, (soft, hard) in limits.items()]
    if run.memory_mib > 0:
        argv += [f"--memory={run.memory_mib}m", f"--memory-swap={run.memory_mib}m"]
    if run.cgroup_parent:  # the attempt's memory cgroup (node_agent.container_cgroup); conmon stays out
        argv += ["--cgroup-parent", run.cgroup_parent, "--cgroups=no-conmon"]
    return argv


def _mount_arguments(run: ContainerRun) -> list[str]:
    """The work dir (twice), the bridge's socket, the job's volumes: all nosuid,nodev."""
    argv = []
    for mount in (run.work_dir, *run.extra_mounts):
        argv += ["--volume", f"{mount}:{mount}:{_NO_SUID}"]
    argv += ["--volume", f"{run.work_dir}:{CONTAINER_WORK_DIR}:{_NO_SUID}"]
    for m in run.options.mounts:
        argv += ["--volume", f"{m.source}:{m.target}:{'ro,' if m.read_only else ''}{_NO_SUID}"]
    if run.options.read_only_root:
        argv.append("--read-only")
    return argv


def _tmpfs_arguments(options: p.ContainerOptions) -> list[str]:
    argv = []
    for t in options.tmpfs:
        # AWS's mountOptions may say "suid" or "dev": a tmpfs is nosuid,nodev whatever they say.
        kept = [o for o in t.options if o not in ("suid", "dev", "nosuid", "nodev")]
        opts = ",".join([f"size={t.size_mib}m", *kept, _NO_SUID])
        argv += ["--tmpfs", f"{t.path}:{opts}"]
    return argv


def _is_gpu_node(path: str) -> bool:
    return os.path.basename(path).startswith("nvidia")


def _registry(image: str) -> str:
    """The registry host[:port] an image reference names ("docker.io" when none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# ---------------------------------------------------------------------- the runner's hooks
class _OwnerLike(Protocol):
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


# _CONTAINERS_OVERLAY_DISABLE_IDMAP: newer podman's switch for what no_idmapped_layers does.
_PODMAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "_CONTAINERS_OVERLAY_DISABLE_IDMAP": "yes"}


def _identity(owner: _OwnerLike | None) -> Identity:
    if owner is None:  # the agent's own jobs (an unprivileged agent, or tests)
        return Identity(os.geteuid(), os.getegid(), ())
    return Identity(owner.uid, owner.gid, owner.groups)


def _subids(podman: Podman, owner: _OwnerLike | None, identity: Identity) -> tuple[int, int] | None:
    """Where the job's container ids land on the host; None for a root job (no user namespace)."""
    if identity.uid == 0 or os.geteuid() != 0:  # root's job; or a rootless agent: podman's own userns
        return None
    name = owner.name if owner is not None else _user_name(identity.uid)
    return subordinate_ids(name, identity.uid, podman.subid_base)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True, slots=True)
class ContainerJob:
    """The job's process as the runner built it: what ``container_launch`` puts in the container."""

    command: list[str]
    environment: dict[str, str]
    owner: _OwnerLike | None
    work_dir: str  # the owner's private work dir (absent for the agent's own jobs)
    cwd: str


def container_launch(
    podman: Podman, spec: AttemptSpecLike, job: ContainerJob, cgroup: ContainerCgroup | None = None
) -> tuple[list[str], dict[str, str], None] | str:
    """(argv, env, preexec) for Popen: ``podman run`` of the attempt; or why it cannot start."""
    options = spec.container or p.ContainerOptions()
    env = job.environment
    # The GPUs the head granted (the agent set these variables from them); none when it
    # granted none, whatever the job's own environment says.
    gpus = env.get("NVIDIA_VISIBLE_DEVICES", "") if spec.gpus > 0 else ""
    gpu_devices = [g for g in gpus.split(",") if g and gpus != "void"]
    if not gpu_devices:  # NVIDIA's OCI hook, where installed, reads this: no GPU for the job's "all"
        env = {**env, "NVIDIA_VISIBLE_DEVICES": "void"}
    if not gpu_devices and not options.privileged:
        named = [d.host_path for d in options.devices if _is_gpu_node(d.host_path)]
        if named:
            return f"{CANNOT_START}: linuxParameters.devices names {named[0]}, but the job was granted no GPU"
    identity = _identity(job.owner)
    subids = _subids(podman, job.owner, identity)
    if subids is not None:
        try:
            podman.no_idmapped_layers()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{CANNOT_START}: podman's runroot: {exc}"
    socket = env.get("HPCBATCH_LAUNCH_SOCKET")
    run = ContainerRun(
        attempt_id=spec.attempt_id,
        image=spec.image or "",
        command=job.command,
        environment=env,
        identity=identity,
        options=options,
        work_dir=job.work_dir if os.path.isdir(job.work_dir) else job.cwd,  # no owner: its attempt directory
        cwd=job.cwd,
        # v1: the limit is the attempt cgroup's alone, where its OOM can be seen
        memory_mib=spec.memory_mib if cgroup is None or cgroup.version == 2 else 0,
        cgroup_parent=cgroup.parent_arg if cgroup is not None else None,
        gpu_devices=gpu_devices,
        gpu_indices=[g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g] if gpu_devices else [],
        fabric=True,
        extra_mounts=[socket] if socket and os.path.exists(socket) else [],
        cpus=spec.cpus,
        subids=subids,
        host_pid=bool(env.get("HPCBATCH_NODES")),  # a multi-node job: MPI through the launcher bridge
    )
    return podman.run_argv(run), dict(_PODMAN_ENV), None


def exec_launch(
    podman: Podman, attempt_id: str, command: str, env: dict[str, str], owner: _OwnerLike | None, cwd: str
) -> tuple[list[str], dict[str, str], None]:
    """(argv, env, preexec) for Popen: a launched task (an MPI daemon) inside the attempt's container."""
    return podman.exec_argv(attempt_id, command, env, _identity(owner), cwd), dict(_PODMAN_ENV), None


class AttemptSpecLike(Protocol):
    attempt_id: str
    gpus: int
    image: str | None
    container: p.ContainerOptions | None
    memory_mib: int
    hold: bool
    cpus: tuple[int, ...]
