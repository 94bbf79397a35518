"""Container jobs without podman: the scheduler's runtime constraint, AWS containerProperties
-> ContainerOptions, and the podman command lines the agent runs (pure, milliseconds)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.head.containers import check_container, container_options
from hpcbatch.model.jobs import ResourceRequest, resource_request
from hpcbatch.protocol import ContainerDevice, ContainerOptions, GpuFacts
from hpcbatch.scheduler.core import (
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
)
from node_agent.config import ConfigError, load_agent_config
from node_agent.containers import (
    CONTAINER_WORK_DIR,
    ContainerJob,
    ContainerRun,
    Identity,
    Podman,
    container_name,
    id_maps,
    storage_arguments,
    subordinate_ids,
)
from node_agent.cpu_binding import gpu_local_cpus
from node_agent.runner import AttemptResult, AttemptSpec, Runner

CONTAINER = frozenset({"container"})


def _scheduler(*nodes: NodeUp) -> Scheduler:
    s = Scheduler()
    s.handle(JobQueueChanged("q", "q", True, 1, ("ce",)), *nodes)
    return s


def test_a_job_with_an_image_requires_a_container_runtime() -> None:
    assert resource_request({"image": "x", "vcpus": 1, "memory": 64}).requires == CONTAINER
    assert resource_request({"vcpus": 1, "memory": 64}).requires == frozenset()


def test_container_jobs_go_only_to_nodes_with_a_runtime() -> None:
    s = _scheduler(NodeUp("n1", "bare", "ce", 8, 8192, 0), NodeUp("n2", "box", "ce", 2, 8192, 0, features=CONTAINER))
    image_job = ResourceRequest(vcpus=1, memory_mib=64, requires=CONTAINER)
    actions = s.handle(JobRunnable("j1", "a", "q", image_job, 1), JobRunnable("j2", "b", "q", image_job, 2),
                       JobRunnable("j3", "c", "q", image_job, 3))
    placed = {a.job_id: a.node for a in actions if isinstance(a, StartAttempt)}
    assert placed == {"a": "box", "b": "box"}  # best fit would pick "bare": it has no runtime
    assert [a.reason for a in actions if isinstance(a, SetWaitReason) and a.job_id == "c"]


def test_the_wait_reason_says_no_node_has_a_runtime() -> None:
    s = _scheduler(NodeUp("n1", "bare", "ce", 8, 8192, 0))
    actions = s.handle(JobRunnable("j", "a", "q", ResourceRequest(vcpus=1, memory_mib=64, requires=CONTAINER), 1))
    (reason,) = [a.reason for a in actions if isinstance(a, SetWaitReason)]
    assert "container runtime" in reason


def test_a_gang_with_an_image_explains_the_missing_runtime() -> None:
    s = _scheduler(NodeUp("n1", "a", "ce", 2, 8192, 0), NodeUp("n2", "b", "ce", 2, 8192, 0))
    actions = s.handle(JobRunnable("j", "g", "q", ResourceRequest(vcpus=1, memory_mib=64, requires=CONTAINER), 1,
                                   num_nodes=2))
    (reason,) = [a.reason for a in actions if isinstance(a, SetWaitReason)]
    assert "container runtime" in reason


AWS = {
    "image": "reg:5000/app:1",
    "volumes": [{"name": "data", "host": {"sourcePath": "/srv/data"}}, {"name": "scratch", "host": {"sourcePath": "/scratch"}}],
    "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": True},
                    {"sourceVolume": "scratch", "containerPath": "/scratch"}],
    "readonlyRootFilesystem": True,
    "ulimits": [{"name": "nofile", "softLimit": 512, "hardLimit": 1000}],
    "linuxParameters": {
        "devices": [{"hostPath": "/dev/fuse", "permissions": ["READ", "WRITE"]}],
        "sharedMemorySize": 256, "initProcessEnabled": True,
        "tmpfs": [{"containerPath": "/run/x", "size": 64, "mountOptions": ["noexec"]}],
    },
}


def test_aws_container_properties_become_options() -> None:
    check_container(AWS, "alice", "containerProperties", allow_privileged=False)
    o = container_options(AWS)
    assert [(m.source, m.target, m.read_only) for m in o.mounts] == [("/srv/data", "/data", True), ("/scratch", "/scratch", False)]
    assert o.read_only_root and o.init and o.shm_size_mib == 256
    assert [(d.host_path, d.permissions) for d in o.devices] == [("/dev/fuse", "rw")]
    assert [(t.path, t.size_mib, t.options) for t in o.tmpfs] == [("/run/x", 64, ["noexec"])]
    assert [(u.name, u.soft, u.hard) for u in o.ulimits] == [("nofile", 512, 1000)]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"privileged": True}, "containerProperties.privileged"),
        ({"user": "root"}, "containerProperties.user"),
        ({"mountPoints": [{"sourceVolume": "nope", "containerPath": "/x"}]}, "containerProperties.mountPoints[0].sourceVolume"),
        ({"volumes": [{"name": "v", "host": {"sourcePath": "rel/path"}}]}, "containerProperties.volumes[0].host.sourcePath"),
    ],
)
def test_what_a_node_must_not_run_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ClientError, match=field.replace("[", r"\[").replace("]", r"\]")):
        check_container({**AWS, **change}, "alice", "containerProperties", allow_privileged=False)


def test_privileged_passes_where_the_cluster_allows_it() -> None:
    check_container({**AWS, "privileged": True}, "alice", "containerProperties", allow_privileged=True)
    assert container_options({**AWS, "privileged": True}).privileged


def _run(podman: Podman, options: ContainerOptions, **extra: object) -> list[str]:
    kwargs: dict = dict(
        attempt_id="a1", image="reg:5000/app:1", command=["python3", "x.py"], environment={"K": "v=1"},
        identity=Identity(1001, 1001, (1001, 27)), options=options, work_dir="/s/a1/work", cwd="/s/a1/work",
        memory_mib=512,
    )
    kwargs.update(extra)
    return podman.run_argv(ContainerRun(**kwargs))


def test_run_argv_runs_the_owner_on_the_host_network_with_explicit_ulimits() -> None:
    argv = _run(Podman("podman"), container_options(AWS))
    joined = " ".join(argv)
    assert argv[:3] == ["podman", "--runtime", "runc"]
    assert "--user 1001:1001" in joined and "--group-add=27" in joined and "--group-add=1001" not in joined
    assert "--network host" in joined and "--uts host" in joined and "--pull missing" in joined
    assert "--ulimit=nofile=512:1000" in argv and "--ulimit=nproc=4096:4096" in argv
    assert "--volume /srv/data:/data:ro" in joined and "--volume /scratch:/scratch" in joined
    assert f"--volume /s/a1/work:{CONTAINER_WORK_DIR}" in joined and "--volume /s/a1/work:/s/a1/work" in joined
    assert "--read-only" in argv and "--init" in argv and "--pid" not in argv  # init: private pid namespace
    assert "--device /dev/fuse:/dev/fuse:rw" in joined and "--shm-size=256m" in argv
    assert "--tmpfs /run/x:size=64m,noexec" in joined and "--memory=512m" in argv
    assert "--env K=v=1" in joined and "--privileged" not in argv
    assert argv[argv.index("--name") + 1] == container_name("a1")
    assert argv[-4:] == ["--", "reg:5000/app:1", "python3", "x.py"]
    assert argv[argv.index("--workdir") + 1] == CONTAINER_WORK_DIR


def test_only_a_multinode_job_shares_the_host_pid_namespace() -> None:
    argv = _run(Podman("podman"), ContainerOptions())
    assert "--init" in argv and "--pid" not in argv  # its own, with catatonit as pid 1
    argv = _run(Podman("podman"), ContainerOptions(), host_pid=True)
    assert argv[argv.index("--pid") + 1] == "host" and "--init" not in argv
    assert "--cap-drop" in argv  # MPI through the bridge: the node's pids, still no capabilities


def test_every_container_has_no_new_privileges_no_capabilities_and_nosuid_mounts() -> None:
    options = container_options({**AWS, "linuxParameters": {"tmpfs": [
        {"containerPath": "/t", "size": 8, "mountOptions": ["suid", "dev", "exec"]}]}}, ["CAP_SYS_NICE"])
    argv = _run(Podman("podman"), options, extra_mounts=["/s/launch.sock"])
    joined = " ".join(argv)
    assert "--security-opt no-new-privileges" in joined and argv[argv.index("--cap-drop") + 1] == "all"
    assert [a for a in argv if a.startswith("--cap-add")] == ["--cap-add=CAP_SYS_NICE"]
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert volumes and all(v.endswith("nosuid,nodev") for v in volumes), volumes
    assert "/srv/data:/data:ro,nosuid,nodev" in volumes and "/s/launch.sock:/s/launch.sock:nosuid,nodev" in volumes
    assert argv[argv.index("--tmpfs") + 1] == "/t:size=8m,exec,nosuid,nodev"


def test_the_owner_keeps_its_ids_and_container_root_lands_on_subordinate_ids() -> None:
    argv = _run(Podman("podman"), ContainerOptions(), subids=(300000, 400000))
    assert [a for a in argv if a.startswith("--uidmap")] == [
        "--uidmap=0:300000:1001", "--uidmap=1001:1001:1", "--uidmap=1002:301002:64534"]
    assert [a for a in argv if a.startswith("--gidmap")] == [
        "--gidmap=0:400000:27", "--gidmap=27:27:1", "--gidmap=28:400028:973", "--gidmap=1001:1001:1",
        "--gidmap=1002:401002:64534"]
    assert "--uidmap" not in " ".join(_run(Podman("podman"), ContainerOptions()))  # subids=None: a root job


def test_id_maps_cover_65536_container_ids_and_keep_high_ids_as_themselves() -> None:
    maps = [tuple(map(int, m.split(":"))) for m in id_maps([5, 70000, 0], 1 << 31)]
    assert maps == [(0, 0, 1), (1, (1 << 31) + 1, 4), (5, 5, 1), (6, (1 << 31) + 6, 65530), (70000, 70000, 1)]
    assert sum(n for c, _, n in maps if c < 65536) == 65536
    # A kept id inside the subordinate range (a large LDAP group): that host id is not mapped twice.
    maps = [tuple(map(int, m.split(":"))) for m in id_maps([1001, 100500], 100000)]
    hosts = [h + i for _, h, n in maps for i in range(n)]
    assert len(hosts) == len(set(hosts)) and (100500, 100500, 1) in maps and (1001, 1001, 1) in maps
    assert sorted(c for c, _, n in maps for _ in range(n) if c < 65536) != list(range(65536))  # 500 is a hole


def test_subordinate_ids_come_from_etc_subuid_or_the_base(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("alice:100000:65536\nsmall:200000:1000\n1002:500000:65536\n")
    (tmp_path / "subgid").write_text("alice:100000:65536\n")
    assert subordinate_ids("alice", 1001, etc=str(tmp_path)) == (100000, 100000)
    assert subordinate_ids("bob", 1002, base=1 << 30, etc=str(tmp_path)) == (500000, (1 << 30) + 65536 * 1002)
    assert subordinate_ids("small", 7, base=1 << 30, etc=str(tmp_path))[0] == (1 << 30) + 65536 * 7  # too few ids
    top = subordinate_ids("x", 2**32 - 2)[0] + 65535
    assert top < 2**32 - 1


def test_a_job_without_gpus_gets_no_nvidia_device_even_one_its_definition_names(tmp_path: Path) -> None:
    from node_agent.containers import container_launch
    from node_agent.runner import AttemptSpec

    (tmp_path / "nvidia0").touch()
    podman = Podman("podman", dev_root=str(tmp_path))
    podman._cdi = False
    argv = _run(podman, ContainerOptions())
    assert not [a for a in argv if "nvidia" in a]
    named = ContainerOptions(devices=[ContainerDevice(host_path="/dev/nvidia0")])
    spec = AttemptSpec("a1", "j", 1, ["true"], {}, 1, 64, image="img", container=named)
    out = container_launch(podman, spec, ContainerJob(["true"], {"NVIDIA_VISIBLE_DEVICES": "void"}, None, str(tmp_path), str(tmp_path)))
    assert isinstance(out, str) and out.startswith("CannotStartContainerError: linuxParameters.devices names /dev/nvidia0")
    # The job's own NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES (a node whose GPUs the agent
    # does not know sets none) open nothing: only a grant from the head does.
    spec = AttemptSpec("a2", "j", 1, ["true"], {}, 1, 64, image="img", container=ContainerOptions())
    for env in ({"NVIDIA_VISIBLE_DEVICES": "all"}, {"NVIDIA_VISIBLE_DEVICES": "GPU-0", "CUDA_VISIBLE_DEVICES": "0"}):
        for cdi in (False, True):
            podman._cdi = cdi
            out = container_launch(podman, spec, ContainerJob(["true"], env, None, str(tmp_path), str(tmp_path)))
            assert not isinstance(out, str) and not [a for a in out[0] if "nvidia" in a and "--device" in a], out
            assert "NVIDIA_VISIBLE_DEVICES=void" in out[0], out  # NVIDIA's OCI hook injects nothing either


def test_container_capabilities_in_the_head_config_are_checked() -> None:
    from hpcbatch.head.containers import check_capabilities

    assert check_capabilities(["sys_nice", "CAP_IPC_LOCK"], "f") == ["CAP_SYS_NICE", "CAP_IPC_LOCK"]
    with pytest.raises(ClientError, match="container_capabilities: 'CAP_ROOT' is not a Linux capability"):
        check_capabilities(["CAP_ROOT"], "head config x: container_capabilities")


def test_fabric_and_gpu_devices_are_passed_in(tmp_path: Path) -> None:
    (tmp_path / "infiniband").mkdir()
    for name in ("uverbs0", "rdma_cm"):
        (tmp_path / "infiniband" / name).touch()
    for name in ("nvidia0", "nvidia1", "nvidia2"):
        (tmp_path / name).touch()
    podman = Podman("podman", dev_root=str(tmp_path))
    podman._cdi = False  # no NVIDIA container toolkit: device nodes
    argv = _run(podman, ContainerOptions(), fabric=True, gpu_devices=["GPU-b", "GPU-c"], gpu_indices=["1", "2"])
    devices = [a.split("=", 1)[1] for a in argv if a.startswith("--device=")]
    assert f"{tmp_path}/infiniband/uverbs0" in devices and f"{tmp_path}/infiniband/rdma_cm" in devices
    assert f"{tmp_path}/nvidia1" in devices and f"{tmp_path}/nvidia2" in devices
    assert f"{tmp_path}/nvidia0" not in devices  # not this job's GPU
    podman._cdi = True
    assert podman.gpu_arguments(["GPU-b"], ["1"]) == ["--device=nvidia.com/gpu=GPU-b"]


def test_exec_waits_for_the_container_then_runs_the_command_as_the_owner() -> None:
    argv = Podman("podman").exec_argv("a1", "prted --x", {"A": "1"}, Identity(1001, 1001, ()), "/s/a1/work")
    assert argv[:2] == ["/bin/sh", "-c"] and "wait --condition running hpcb-a1" in argv[2]
    rest = argv[argv.index("exec"):]
    assert rest[:3] == ["exec", "--user", "1001:1001"]
    assert rest[-4:] == ["hpcb-a1", "/bin/sh", "-c", "prted --x"]


def test_a_node_cache_runroot_stays_short() -> None:
    args = storage_arguments("/a/very/long/path/" + "x" * 80 + "/containers")
    assert len(args[3]) < 50 and args[1].endswith("/containers/root")
    assert storage_arguments("") == []


# ------------------------------------------------------------------ the runner's podman calls, with a fake podman
def _fake_podman(tmp_path: Path) -> tuple[Path, Path]:
    """A ``podman`` that records each call (NUL-separated argv, one call a line) and succeeds,
    except ``image exists`` (the image is not cached, so the runner pulls it)."""
    calls = tmp_path / "podman-calls"
    script = tmp_path / "podman"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\0' \"$@\" >>{calls}; echo >>{calls}\n"
        'case " $* " in *" image exists "*) exit 1;; esac\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return script, calls


def _calls(calls: Path) -> list[list[str]]:
    return [line.rstrip("\0").split("\0") for line in calls.read_text().splitlines() if line]


def _run_one(tmp_path: Path, podman: Podman, spec: AttemptSpec) -> AttemptResult:
    ended: list[AttemptResult] = []

    async def body() -> None:
        runner = Runner(tmp_path / "state", on_exit=ended.append, container_runtime="podman", containers=podman,
                        memory_enforcement="rss")
        started = await runner.start(spec)
        assert isinstance(started, int), started
        async with asyncio.timeout(30):
            while not ended:
                await asyncio.sleep(0.02)
        await runner.shutdown(kill=True)

    asyncio.run(body())
    return ended[0]


def test_pulls_use_the_nodes_auth_file_for_registries_that_need_credentials(tmp_path: Path) -> None:
    binary, calls = _fake_podman(tmp_path)
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    podman = Podman(str(binary), auth_file=str(auth))
    spec = AttemptSpec("a1", "job", 1, ["true"], {}, 1, 64, image="reg.example:5000/team/app:1",
                       container=ContainerOptions())
    assert _run_one(tmp_path, podman, spec).exit_code == 0
    (pull,) = [c for c in _calls(calls) if "pull" in c]
    assert pull[pull.index("--authfile") + 1] == str(auth) and pull[-1] == "reg.example:5000/team/app:1"
    (run,) = [c for c in _calls(calls) if "run" in c]
    assert run[run.index("--authfile") + 1] == str(auth)  # --pull missing: an image removed meanwhile
    assert "--authfile" not in " ".join(_run(Podman("podman"), ContainerOptions()))  # none configured: none passed


def test_the_agent_config_names_the_auth_file_and_refuses_a_missing_one(tmp_path: Path) -> None:
    key = tmp_path / "head.key"
    key.write_text("k")
    config = tmp_path / "agent.toml"
    base = f'name = "n1"\nhead = "tcp://h:1"\nstate_dir = "{tmp_path}"\nhead_public_key = "{key}"\n'
    config.write_text(base + f'container_auth_file = "{tmp_path}/auth.json"\n')
    with pytest.raises(ConfigError, match="container_auth_file .*auth.json does not exist"):
        load_agent_config(config)
    (tmp_path / "auth.json").write_text("{}")
    assert load_agent_config(config).container_auth_file == f"{tmp_path}/auth.json"


def test_a_gpu_container_job_is_bound_to_its_gpus_cpus_with_cpuset(tmp_path: Path) -> None:
    """The binding a bare GPU job gets (taskset) is --cpuset-cpus for a container: the host's
    taskset is not in the image, and the image's programs are not on the host's PATH."""
    gpus = [GpuFacts(uuid="GPU-0", cpus=[0, 1, 2, 3]), GpuFacts(uuid="GPU-1", cpus=[4, 5, 6, 7])]
    cpus = tuple(gpu_local_cpus(["GPU-1"], gpus, set(range(8))))
    binary, calls = _fake_podman(tmp_path)
    spec = AttemptSpec("g1", "job", 1, ["python3", "train.py"], {"NVIDIA_VISIBLE_DEVICES": "GPU-1",
                       "CUDA_VISIBLE_DEVICES": "1"}, 1, 64, gpus=1, image="reg.example:5000/team/app:1",
                       container=ContainerOptions(), cpus=cpus)
    assert _run_one(tmp_path, Podman(str(binary)), spec).exit_code == 0
    (run,) = [c for c in _calls(calls) if "run" in c]
    assert "--cpuset-cpus=4,5,6,7" in run
    assert run[-3:] == ["reg.example:5000/team/app:1", "python3", "train.py"]  # no taskset in front
    assert not any("taskset" in a for a in run)
    unbound = _run(Podman("podman"), ContainerOptions())
    assert not any(a.startswith("--cpuset-cpus") for a in unbound)


def test_head_config_container_capabilities_as_docs_containers_md_writes_them(tmp_path: Path) -> None:
    from hpcbatch.head.config import load_head_config

    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\nallow_privileged_containers = false\n'
                    'container_capabilities = ["CAP_NET_BIND_SERVICE"]\n')
    assert load_head_config(path).container_capabilities == ["CAP_NET_BIND_SERVICE"]
    path.write_text(f'state_dir = "{tmp_path}"\ncontainer_capabilities = ["CAP_EVERYTHING"]\n')
    with pytest.raises(ClientError, match="container_capabilities: 'CAP_EVERYTHING' is not a Linux capability"):
        load_head_config(path)
    path.write_text(f'state_dir = "{tmp_path}"\n')
    assert load_head_config(path).container_capabilities == []
    opts = container_options(AWS, load_head_config(path).container_capabilities)
    assert opts.capabilities == [] and "--cap-add" not in " ".join(_run(Podman("podman"), opts))


def test_the_agent_config_bounds_container_subid_base(tmp_path: Path) -> None:
    key = tmp_path / "head.key"
    key.write_text("k")
    config = tmp_path / "agent.toml"
    base = f'name = "n1"\nhead = "tcp://h:1"\nstate_dir = "{tmp_path}"\nhead_public_key = "{key}"\n'
    config.write_text(base + "container_subid_base = 2147483648\n")
    assert load_agent_config(config).container_subid_base == 1 << 31
    config.write_text(base + "container_subid_base = 0\n")  # container root would be host root
    with pytest.raises(ConfigError, match="container_subid_base must be between 65536 and 2147483648"):
        load_agent_config(config)
