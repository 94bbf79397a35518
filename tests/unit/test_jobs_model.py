"""The pure job rules: retry decisions, overrides, resources, parameters, AWS JSON shapes."""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

import botocore.session
import pytest
from botocore.model import StructureShape
from botocore.validate import ParamValidator
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.model.jobs import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_VCPUS,
    Attempt,
    JobRecord,
    ResourceRequest,
    job_detail,
    job_summary,
    merge_container,
    resource_request,
    should_retry,
    substitute_parameters,
)
from hpcbatch.model.lifecycle import JobStatus

BATCH = botocore.session.get_session().get_service_model("batch")
EXTENSIONS = {"owner", "nodeName"}  # hpcbatch's additions to JobDetail
SUMMARY_EXTENSIONS = EXTENSIONS | {"jobQueue"}  # ListJobs may span queues, so summaries name theirs
REGION, ACCOUNT = "eu-west-1", "123456789012"


def attempt(n: int = 1, *, stopped: bool = True, exit_code: int | None = 1, **kw: Any) -> Attempt:
    return Attempt(
        attempt_id=f"att-{n}",
        node=kw.pop("node", f"node{n:02d}"),
        compute_environment="cpu",
        log_stream_name=f"train/default/att-{n}",
        started_at=1_700_000_000_000 + n,
        stopped_at=1_700_000_100_000 + n if stopped else None,
        exit_code=exit_code if stopped else None,
        **kw,
    )


def record(**kw: Any) -> JobRecord:
    base: dict[str, Any] = dict(
        job_id="0f1e2d3c-0000-4000-8000-000000000001",
        job_name="train-1",
        job_queue="gpu",
        job_queue_arn=f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/gpu",
        job_definition=f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/train:3",
        owner="alice",
        status=JobStatus.RUNNABLE,
        created_at=1_700_000_000_000,
        command=["python", "train.py"],
        environment={"SEED": "1"},
        image="busybox",
        resources=ResourceRequest(2, 4096, 1),
        container={
            "image": "busybox",
            "command": ["python", "train.py"],
            "environment": [{"name": "SEED", "value": "1"}],
            "resourceRequirements": [
                {"type": "VCPU", "value": "2"},
                {"type": "MEMORY", "value": "4096"},
                {"type": "GPU", "value": "1"},
            ],
        },
    )
    base.update(kw)
    return JobRecord(**base)


# ------------------------------------------------------------------ should_retry
def retry(
    job: JobRecord,
    exit_code: int | None = 1,
    reason: str | None = None,
    status_reason: str | None = None,
    timed_out: bool = False,
) -> bool:
    return should_retry(job, exit_code, reason, status_reason, timed_out=timed_out)


def test_failed_attempt_is_retried_when_no_rule_is_given_and_attempts_remain() -> None:
    assert retry(record(retry_attempts=3, attempts=[attempt(1)]))


def test_default_single_attempt_is_never_retried() -> None:
    assert not retry(record(attempts=[attempt(1)]))


@pytest.mark.parametrize(
    ("attempts_made", "expected"), [(1, True), (2, True), (3, False), (4, False)]
)
def test_retry_attempts_caps_the_number_of_attempts(attempts_made: int, expected: bool) -> None:
    # The attempt that just ended is already in job.attempts when the head asks.
    job = record(retry_attempts=3, attempts=[attempt(i) for i in range(1, attempts_made + 1)])
    assert retry(job) is expected


def test_no_matching_rule_means_retry() -> None:
    job = record(
        retry_attempts=2,
        attempts=[attempt()],
        evaluate_on_exit=[
            {"action": "EXIT", "onExitCode": "2"},
            {"action": "EXIT", "onReason": "OutOfMemory*"},
        ],
    )
    assert retry(job, exit_code=1, reason="Essential container exited")


def test_first_matching_rule_wins() -> None:
    rules = [{"action": "EXIT", "onExitCode": "1"}, {"action": "RETRY", "onExitCode": "*"}]
    job = record(retry_attempts=2, attempts=[attempt()], evaluate_on_exit=rules)
    assert not retry(job, exit_code=1)
    assert retry(job, exit_code=2)
    flipped = record(retry_attempts=2, attempts=[attempt()], evaluate_on_exit=rules[::-1])
    assert retry(flipped, exit_code=1)


@pytest.mark.parametrize(
    ("pattern", "exit_code", "matches"),
    [
        ("13*", 137, True),
        ("13*", 13, True),
        ("13*", 113, False),
        ("1", 1, True),
        ("1", 10, False),
        ("*", 0, True),
        ("*", 255, True),
    ],
)
def test_on_exit_code_is_a_glob_with_a_trailing_star(
    pattern: str, exit_code: int, matches: bool
) -> None:
    job = record(
        retry_attempts=2,
        attempts=[attempt()],
        evaluate_on_exit=[{"action": "EXIT", "onExitCode": pattern}],
    )
    assert retry(job, exit_code=exit_code) is not matches


@pytest.mark.parametrize(
    ("pattern", "reason", "matches"),
    [
        ("CannotPull*", "CannotPullContainerError: no such image", True),
        ("CannotPull*", "Essential container exited", False),
        ("OutOfMemoryError", "OutOfMemoryError", True),
        ("OutOfMemoryError", "OutOfMemoryError: killed", False),
    ],
)
def test_on_reason_is_a_glob_with_a_trailing_star(pattern: str, reason: str, matches: bool) -> None:
    job = record(
        retry_attempts=2,
        attempts=[attempt()],
        evaluate_on_exit=[{"action": "EXIT", "onReason": pattern}],
    )
    assert retry(job, exit_code=None, reason=reason) is not matches


@pytest.mark.parametrize(
    ("pattern", "status_reason", "matches"),
    [
        ("Host EC2*", "Host EC2 (instance i-0abc) terminated.", True),
        ("Host EC2*", "Essential container in task exited", False),
        ("Node * lost*", "Node node03 lost: no heartbeat for 30 s", True),
    ],
)
def test_on_status_reason_is_a_glob_with_a_trailing_star(
    pattern: str, status_reason: str, matches: bool
) -> None:
    job = record(
        retry_attempts=2,
        attempts=[attempt()],
        evaluate_on_exit=[
            {"action": "RETRY", "onStatusReason": pattern},
            {"action": "EXIT", "onStatusReason": "*"},
        ],
    )
    assert retry(job, exit_code=None, status_reason=status_reason) is matches


def test_every_condition_of_a_rule_must_match() -> None:
    rules = [
        {"action": "EXIT", "onExitCode": "137", "onReason": "OutOfMemory*"},
        {"action": "RETRY", "onExitCode": "*"},
    ]
    job = record(retry_attempts=2, attempts=[attempt()], evaluate_on_exit=rules)
    assert not retry(job, exit_code=137, reason="OutOfMemoryError: container killed")
    assert retry(job, exit_code=137, reason="Killed by signal")
    assert retry(job, exit_code=1, reason="OutOfMemoryError")


@pytest.mark.parametrize("action", ["exit", "Exit", "EXIT"])
def test_rule_action_exit_is_case_insensitive(action: str) -> None:
    job = record(
        retry_attempts=2,
        attempts=[attempt()],
        evaluate_on_exit=[{"action": action, "onExitCode": "*"}],
    )
    assert not retry(job)


@pytest.mark.parametrize("action", ["retry", "Retry", "RETRY"])
def test_rule_action_retry_is_case_insensitive(action: str) -> None:
    job = record(
        retry_attempts=2,
        attempts=[attempt()],
        evaluate_on_exit=[{"action": action, "onExitCode": "*"}],
    )
    assert retry(job)


@pytest.mark.parametrize(
    "job_kw",
    [{"is_cancelled": True}, {"is_terminated": True}],
    ids=["cancelled", "terminated"],
)
def test_cancelled_or_terminated_job_is_never_retried(job_kw: dict[str, Any]) -> None:
    job = record(
        retry_attempts=10,
        attempts=[attempt()],
        evaluate_on_exit=[{"action": "RETRY", "onExitCode": "*"}],
        **job_kw,
    )
    assert not retry(job)


def test_timeout_is_not_retried() -> None:
    job = record(
        retry_attempts=10,
        attempts=[attempt()],
        evaluate_on_exit=[{"action": "RETRY", "onStatusReason": "*"}],
    )
    assert not retry(job, exit_code=None, reason=None, status_reason="Job attempt duration exceeded timeout",
                     timed_out=True)


def test_timeout_is_not_retried_even_without_rules() -> None:
    job = record(retry_attempts=10, attempts=[attempt()])
    assert not retry(job, exit_code=137, timed_out=True)


def test_the_timeout_is_a_field_not_a_sentence() -> None:
    # The reason is for people: the same words without the flag are an ordinary failure.
    job = record(retry_attempts=10, attempts=[attempt()])
    assert retry(job, exit_code=None, status_reason="Job attempt duration exceeded timeout")
    assert not retry(job, exit_code=None, status_reason="anything at all", timed_out=True)


# --------------------------------------------------------------- merge_container
def test_no_overrides_gives_an_equal_copy() -> None:
    base = {"image": "busybox", "command": ["true"]}
    for overrides in (None, {}):
        merged = merge_container(base, overrides)
        assert merged == base and merged is not base


def test_override_command_replaces_the_definition_command() -> None:
    merged = merge_container({"command": ["python", "a.py", "--x"]}, {"command": ["b.sh"]})
    assert merged["command"] == ["b.sh"]


def test_override_environment_merges_by_name_and_override_wins() -> None:
    base = {"environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    merged = merge_container(
        base, {"environment": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]}
    )
    assert merged["environment"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]


def test_override_environment_without_a_value_sets_it_empty() -> None:
    merged = merge_container({}, {"environment": [{"name": "FLAG"}]})
    assert merged["environment"] == [{"name": "FLAG", "value": ""}]


def test_override_resource_requirements_merge_by_type() -> None:
    base = {
        "resourceRequirements": [
            {"type": "VCPU", "value": "2"},
            {"type": "MEMORY", "value": "2048"},
        ]
    }
    merged = merge_container(
        base,
        {
            "resourceRequirements": [
                {"type": "MEMORY", "value": "8192"},
                {"type": "GPU", "value": "1"},
            ]
        },
    )
    assert sorted((r["type"], r["value"]) for r in merged["resourceRequirements"]) == [
        ("GPU", "1"),
        ("MEMORY", "8192"),
        ("VCPU", "2"),
    ]
    assert resource_request(merged) == ResourceRequest(2, 8192, 1)


def test_override_resource_requirements_supersede_legacy_vcpus_and_memory() -> None:
    base = {"vcpus": 2, "memory": 2048}
    merged = merge_container(base, {"resourceRequirements": [{"type": "VCPU", "value": "4"}]})
    assert "vcpus" not in merged
    assert merged["memory"] == 2048  # no MEMORY requirement: the legacy key still counts
    assert resource_request(merged) == ResourceRequest(4, 2048, 0)
    merged = merge_container(base, {"resourceRequirements": [{"type": "MEMORY", "value": "4096"}]})
    assert "memory" not in merged and merged["vcpus"] == 2
    assert resource_request(merged) == ResourceRequest(2, 4096, 0)


def test_override_legacy_vcpus_replaces_legacy_vcpus() -> None:
    merged = merge_container({"vcpus": 2, "memory": 2048}, {"vcpus": 8, "memory": 16384})
    assert resource_request(merged) == ResourceRequest(8, 16384, 0)


def test_override_legacy_vcpus_does_not_beat_definition_resource_requirements() -> None:
    # AWS (containerOverrides.vcpus): it "doesn't override any vCPU requirement specified in
    # the resourceRequirements structure in the job definition".
    base = {"resourceRequirements": [{"type": "VCPU", "value": "2"}]}
    assert resource_request(merge_container(base, {"vcpus": 8})).vcpus == 2


def test_override_instance_type_replaces() -> None:
    assert merge_container({"instanceType": "a"}, {"instanceType": "b"})["instanceType"] == "b"


def test_merge_leaves_the_definition_untouched() -> None:
    base = {
        "command": ["a"],
        "vcpus": 2,
        "environment": [{"name": "A", "value": "1"}],
        "resourceRequirements": [{"type": "VCPU", "value": "2"}],
    }
    before = copy.deepcopy(base)
    merge_container(
        base,
        {
            "command": ["b"],
            "environment": [{"name": "A", "value": "9"}],
            "resourceRequirements": [{"type": "VCPU", "value": "4"}],
        },
    )
    assert base == before


# -------------------------------------------------------------- resource_request
def test_resource_request_defaults_when_nothing_is_asked() -> None:
    assert resource_request({}) == ResourceRequest(DEFAULT_VCPUS, DEFAULT_MEMORY_MIB, 0)


def test_resource_request_reads_legacy_keys() -> None:
    assert resource_request({"vcpus": 4, "memory": 2000}) == ResourceRequest(4.0, 2000, 0)


def test_resource_request_reads_resource_requirements() -> None:
    container = {
        "resourceRequirements": [
            {"type": "VCPU", "value": "0.25"},
            {"type": "MEMORY", "value": "512"},
            {"type": "GPU", "value": "2"},
        ]
    }
    assert resource_request(container) == ResourceRequest(0.25, 512, 2)


def test_resource_requirements_win_over_legacy_keys() -> None:
    container = {
        "vcpus": 1,
        "memory": 1024,
        "resourceRequirements": [
            {"type": "VCPU", "value": "8"},
            {"type": "MEMORY", "value": "32768"},
        ],
    }
    assert resource_request(container) == ResourceRequest(8.0, 32768, 0)


def test_resource_request_types_are_numbers() -> None:
    r = resource_request(
        {
            "resourceRequirements": [
                {"type": "VCPU", "value": "2"},
                {"type": "MEMORY", "value": "100"},
            ]
        }
    )
    assert isinstance(r.vcpus, float) and isinstance(r.memory_mib, int) and isinstance(r.gpus, int)


# ---------------------------------------------------------- substitute_parameters
def test_ref_placeholders_are_replaced_by_parameters() -> None:
    cmd = ["train.py", "--epochs", "Ref::epochs", "--out=Ref::out_dir/model"]
    assert substitute_parameters(cmd, {"epochs": "10", "out_dir": "/scratch"}) == [
        "train.py",
        "--epochs",
        "10",
        "--out=/scratch/model",
    ]


def test_unknown_ref_placeholder_is_left_as_written() -> None:
    assert substitute_parameters(["Ref::missing", "Ref::a"], {"a": "1"}) == ["Ref::missing", "1"]


def test_no_parameters_returns_the_command_unchanged_as_a_copy() -> None:
    cmd = ["echo", "Ref::x"]
    out = substitute_parameters(cmd, {})
    assert out == cmd and out is not cmd


def test_several_placeholders_in_one_argument() -> None:
    assert substitute_parameters(["Ref::a,Ref::b/Ref::a"], {"a": "x", "b": "y"}) == ["x,y/x"]


def test_parameter_names_may_hold_dashes_and_underscores() -> None:
    assert substitute_parameters(["Ref::in-file_2"], {"in-file_2": "a.txt", "in": "no"}) == [
        "a.txt"
    ]


def test_substituted_values_are_not_substituted_again() -> None:
    assert substitute_parameters(["Ref::a"], {"a": "Ref::b", "b": "no"}) == ["Ref::b"]


def test_substitution_does_not_modify_the_input() -> None:
    cmd = ["Ref::a"]
    substitute_parameters(cmd, {"a": "1"})
    assert cmd == ["Ref::a"]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters=":"), max_size=20), max_size=6))
def test_command_without_placeholders_is_unchanged(cmd: list[str]) -> None:
    assert substitute_parameters(cmd, {"a": "1"}) == cmd


# ------------------------------------------------------- AWS JSON: botocore shapes
def _check_against_shape(value: Any, shape: Any, path: str, ignore: Collection[str] = ()) -> None:
    """Every key in ``value`` is a member of ``shape``, recursively through structures and lists."""
    if isinstance(shape, StructureShape):
        assert isinstance(value, dict), f"{path}: {shape.name} must be an object"
        unknown = set(value) - set(shape.members) - set(ignore)
        assert not unknown, f"{path}: not members of {shape.name}: {sorted(unknown)}"
        for key, item in value.items():
            if key in shape.members:
                _check_against_shape(item, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list":
        assert isinstance(value, list), f"{path}: must be a list"
        for i, item in enumerate(value):
            _check_against_shape(item, shape.member, f"{path}[{i}]")


def _validate_types(
    value: dict[str, Any], shape_name: str, *, optional: Collection[str] = ()
) -> None:
    """botocore's own validator on the document, minus hpcbatch's extensions."""
    shape = BATCH.shape_for(shape_name)
    doc = {k: v for k, v in value.items() if k not in EXTENSIONS}
    report = ParamValidator().validate(doc, shape).generate_report()
    problems = [
        line
        for line in report.splitlines()
        if not any(f'Missing required parameter in input: "{k}"' in line for k in optional)
    ]
    assert not problems, report


def _finished_job() -> JobRecord:
    return record(
        status=JobStatus.FAILED,
        status_reason="Essential container in task exited",
        started_at=1_700_000_000_002,
        stopped_at=1_700_000_100_002,
        retry_attempts=2,
        evaluate_on_exit=[{"action": "RETRY", "onExitCode": "13*"}],
        timeout_s=600,
        tags={"team": "ml"},
        parameters={"epochs": "10"},
        depends_on=[{"jobId": "abc", "type": "SEQUENTIAL"}],
        propagate_tags=True,
        attempts=[
            attempt(
                1,
                exit_code=137,
                reason="OutOfMemoryError: killed",
                status_reason="Essential container in task exited",
            ),
            attempt(2, exit_code=1, status_reason="Essential container in task exited"),
        ],
    )


def _running_job() -> JobRecord:
    return record(
        status=JobStatus.RUNNING, started_at=1_700_000_000_001, attempts=[attempt(1, stopped=False)]
    )


JOBS = {
    "runnable": lambda: record(),
    "running": _running_job,
    "failed-after-retries": _finished_job,
    "cancelled": lambda: record(
        status=JobStatus.FAILED,
        status_reason="Cancelled by alice",
        is_cancelled=True,
        stopped_at=1_700_000_000_500,
    ),
}


@pytest.mark.parametrize("make", list(JOBS.values()), ids=list(JOBS))
def test_job_detail_emits_only_botocore_job_detail_members(make: Any) -> None:
    detail = job_detail(make(), REGION, ACCOUNT)
    _check_against_shape(detail, BATCH.shape_for("JobDetail"), "JobDetail", ignore=EXTENSIONS)
    # AWS marks startedAt required but omits it until the job starts; so do we.
    _validate_types(detail, "JobDetail", optional={"startedAt"})


@pytest.mark.parametrize("make", list(JOBS.values()), ids=list(JOBS))
def test_job_summary_emits_only_botocore_job_summary_members(make: Any) -> None:
    summary = job_summary(make(), REGION, ACCOUNT)
    _check_against_shape(summary, BATCH.shape_for("JobSummary"), "JobSummary", ignore=SUMMARY_EXTENSIONS)


@pytest.mark.parametrize("make", list(JOBS.values()), ids=list(JOBS))
def test_job_summary_values_have_botocore_types(make: Any) -> None:
    summary = job_summary(make(), REGION, ACCOUNT)
    summary.pop("jobQueue", None)  # judged by the test above
    _check_against_shape(summary, BATCH.shape_for("JobSummary"), "JobSummary", ignore=SUMMARY_EXTENSIONS)
    _validate_types(summary, "JobSummary")


def test_job_detail_carries_the_job_identity_and_state() -> None:
    job = _finished_job()
    detail = job_detail(job, REGION, ACCOUNT)
    assert detail["jobArn"] == f"arn:aws:batch:{REGION}:{ACCOUNT}:job/{job.job_id}"
    assert detail["jobId"] == job.job_id
    assert detail["jobName"] == "train-1"
    assert detail["jobQueue"] == job.job_queue_arn
    assert detail["jobDefinition"] == job.job_definition
    assert detail["status"] == "FAILED"
    assert detail["statusReason"] == "Essential container in task exited"
    assert (detail["createdAt"], detail["startedAt"], detail["stoppedAt"]) == (
        job.created_at,
        job.started_at,
        job.stopped_at,
    )
    assert detail["retryStrategy"] == {
        "attempts": 2,
        "evaluateOnExit": [{"action": "RETRY", "onExitCode": "13*"}],
    }
    assert detail["timeout"] == {"attemptDurationSeconds": 600}
    assert detail["tags"] == {"team": "ml"} and detail["propagateTags"] is True
    assert detail["parameters"] == {"epochs": "10"}
    assert detail["dependsOn"] == [{"jobId": "abc", "type": "SEQUENTIAL"}]
    assert detail["owner"] == "alice"


def test_job_detail_lists_finished_attempts_and_the_last_one_fills_container() -> None:
    detail = job_detail(_finished_job(), REGION, ACCOUNT)
    assert [a["container"]["exitCode"] for a in detail["attempts"]] == [137, 1]
    assert detail["attempts"][0]["container"]["reason"] == "OutOfMemoryError: killed"
    assert detail["attempts"][1]["container"]["logStreamName"] == "train/default/att-2"
    assert detail["container"]["exitCode"] == 1
    assert detail["container"]["logStreamName"] == "train/default/att-2"
    assert detail["container"]["image"] == "busybox"
    assert detail["nodeName"] == "node02"


def test_job_detail_of_a_running_job_lists_no_attempt_yet_but_names_its_node() -> None:
    detail = job_detail(_running_job(), REGION, ACCOUNT)
    assert detail["attempts"] == []
    assert detail["nodeName"] == "node01"
    assert "exitCode" not in detail["container"]
    assert "stoppedAt" not in detail


def test_job_detail_of_a_waiting_job_omits_what_has_not_happened() -> None:
    detail = job_detail(record(), REGION, ACCOUNT)
    for key in ("statusReason", "startedAt", "stoppedAt", "timeout", "nodeName"):
        assert key not in detail
    assert detail["retryStrategy"] == {"attempts": 1}
    assert detail["isCancelled"] is False and detail["isTerminated"] is False


def test_job_detail_does_not_modify_the_record_container() -> None:
    job = _finished_job()
    before = copy.deepcopy(job.container)
    job_detail(job, REGION, ACCOUNT)
    assert job.container == before


def test_job_summary_carries_the_last_attempt_outcome() -> None:
    job = _finished_job()
    summary = job_summary(job, REGION, ACCOUNT)
    assert summary["jobArn"].endswith(f":job/{job.job_id}")
    assert summary["status"] == "FAILED"
    assert summary["container"] == {"exitCode": 1}
    assert summary["nodeName"] == "node02"
    assert summary["owner"] == "alice"
    assert summary["stoppedAt"] == job.stopped_at


def test_job_summary_of_a_waiting_job_has_no_container_or_times() -> None:
    summary = job_summary(record(), REGION, ACCOUNT)
    for key in ("container", "nodeName", "startedAt", "stoppedAt", "statusReason"):
        assert key not in summary


def test_current_attempt_is_the_unstopped_last_one() -> None:
    assert _running_job().current_attempt is not None
    assert _finished_job().current_attempt is None
    assert record().current_attempt is None


# ------------------------------------------------------------------ gangs of any size
def test_a_one_node_multinode_job_is_a_gang_and_its_node_is_not() -> None:
    nodes = {"numNodes": 1, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0", "container": {}}]}
    assert record(node_properties=nodes, num_nodes=1, gang=True).is_gang  # TorchX's single-replica app
    assert record(num_nodes=3, node_properties={**nodes, "numNodes": 3}, gang=True).is_gang
    assert record(num_nodes=3).is_gang  # stored before ``gang`` existed
    assert not record(node_properties=nodes, num_nodes=1).is_gang  # a one-node job an older head ran plain
    assert not record().is_gang  # a plain container job
    assert not record(parent_id="p", node_index=0, num_nodes=1).is_gang  # JOBID#0 is a node, not a gang
