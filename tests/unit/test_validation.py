"""Tests for hpcbatch.validation: AWS Batch request bodies checked once, at the edge."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.errors import ClientError
from hpcbatch.validation import (
    NAME_PATTERN,
    OPERATIONS,
    TAG_OPERATIONS,
    ecs_container,
    rest_routes,
    route_table,
    validate_request,
)

SUBMIT: dict[str, Any] = {
    "jobName": "train-resnet_1",
    "jobQueue": "gpu",
    "jobDefinition": "mpi-train:3",
    "parameters": {"epochs": "10"},
    "arrayProperties": {"size": 4},
    "dependsOn": [{"jobId": "0f1e", "type": "N_TO_N"}],
    "containerOverrides": {
        "command": ["python", "train.py", "Ref::epochs"],
        "environment": [{"name": "OMP_NUM_THREADS", "value": "8"}, {"name": "SEED", "value": "1"}],
        "resourceRequirements": [
            {"type": "VCPU", "value": "0.5"},
            {"type": "MEMORY", "value": "8192"},
            {"type": "GPU", "value": "1"},
        ],
    },
    "nodeOverrides": {
        "nodePropertyOverrides": [
            {"targetNodes": "0:", "containerOverrides": {"environment": [{"name": "X"}]}}
        ]
    },
    "retryStrategy": {
        "attempts": 3,
        "evaluateOnExit": [
            {"action": "retry", "onExitCode": "13*"},
            {"action": "EXIT", "onStatusReason": "Host EC2*", "onReason": "*"},
        ],
    },
    "timeout": {"attemptDurationSeconds": 60},
    "propagateTags": True,
    "tags": {"team": "ml"},
    "schedulingPriorityOverride": 5,
}

REGISTER_CONTAINER: dict[str, Any] = {
    "jobDefinitionName": "mpi-train",
    "type": "container",
    "parameters": {"epochs": "5"},
    "containerProperties": {
        "command": ["true"],
        "vcpus": 1,
        "memory": 4,
        "environment": [{"name": "A", "value": "1"}],
        "resourceRequirements": [{"type": "GPU", "value": "0"}],
    },
    "retryStrategy": {"attempts": 10},
    "timeout": {"attemptDurationSeconds": 3600},
    "tags": {"owner": "hpc"},
}

REGISTER_MULTINODE: dict[str, Any] = {
    "jobDefinitionName": "gang",
    "type": "multinode",
    "nodeProperties": {
        "numNodes": 4,
        "mainNode": 3,
        "nodeRangeProperties": [
            {"targetNodes": "0:3", "container": {"command": ["mpirun", "a.out"],
                                                 "environment": [{"name": "B", "value": ""}]}}
        ],
    },
}

CREATE_CE: dict[str, Any] = {
    "computeEnvironmentName": "rack1",
    "type": "MANAGED",
    "state": "ENABLED",
    "computeResources": {"minvCpus": 0, "maxvCpus": 256},
    "tags": {"site": "basement"},
}

CREATE_QUEUE: dict[str, Any] = {
    "jobQueueName": "gpu",
    "state": "ENABLED",
    "priority": 10,
    "computeEnvironmentOrder": [
        {"order": 1, "computeEnvironment": "rack1"},
        {"order": 2, "computeEnvironment": "rack2"},
    ],
}

VALID: dict[str, dict[str, Any]] = {
    "SubmitJob": SUBMIT,
    "DescribeJobs": {"jobs": ["a", "b"]},
    "ListJobs": {"jobQueue": "gpu", "jobStatus": "RUNNING", "maxResults": 1000},
    "CancelJob": {"jobId": "a", "reason": "user asked"},
    "TerminateJob": {"jobId": "a", "reason": "user asked"},
    "CreateComputeEnvironment": CREATE_CE,
    "UpdateComputeEnvironment": {"computeEnvironment": "rack1", "state": "DISABLED",
                                 "computeResources": {"maxvCpus": 128}},
    "DescribeComputeEnvironments": {"computeEnvironments": ["rack1"], "maxResults": 100},
    "DeleteComputeEnvironment": {"computeEnvironment": "rack1"},
    "CreateJobQueue": CREATE_QUEUE,
    "UpdateJobQueue": {"jobQueue": "gpu", "priority": 1000,
                       "computeEnvironmentOrder": [{"order": 0, "computeEnvironment": "rack1"}]},
    "DescribeJobQueues": {},
    "DeleteJobQueue": {"jobQueue": "gpu"},
    "RegisterJobDefinition": REGISTER_CONTAINER,
    "DescribeJobDefinitions": {"jobDefinitionName": "mpi-train", "status": "ACTIVE"},
    "DeregisterJobDefinition": {"jobDefinition": "mpi-train:1"},
    "GetJobQueueSnapshot": {"jobQueue": "gpu"},
    "CreateSchedulingPolicy": {"name": "teams", "fairsharePolicy": {
        "shareDecaySeconds": 3600, "computeReservation": 50,
        "shareDistribution": [{"shareIdentifier": "A", "weightFactor": 0.5}, {"shareIdentifier": "lab*"}]}},
    "UpdateSchedulingPolicy": {"arn": "arn:aws:batch:local:000000000000:scheduling-policy/teams",
                               "fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "B"}]}},
    "DescribeSchedulingPolicies": {"arns": ["arn:aws:batch:local:000000000000:scheduling-policy/teams"]},
    "DeleteSchedulingPolicy": {"arn": "arn:aws:batch:local:000000000000:scheduling-policy/teams"},
    "ListSchedulingPolicies": {"maxResults": 10},
    "TagResource": {"resourceArn": "arn:aws:batch:local:000000000000:job-queue/gpu",
                    "tags": {"team": "ml", "cost center": "a/b+c=d@e.f_g:h-i", "empty": ""}},
    "UntagResource": {"resourceArn": "arn:aws:batch:local:000000000000:job-queue/gpu", "tagKeys": ["team"]},
    "ListTagsForResource": {"resourceArn": "arn:aws:batch:local:000000000000:job/1234"},
}
ECS_DEF: dict[str, Any] = {
    "jobDefinitionName": "ecs", "type": "container",
    "ecsProperties": {"taskProperties": [{
        "containers": [{"image": "busybox", "command": ["echo", "hi"], "essential": True,
                        "environment": [{"name": "A", "value": "1"}],
                        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}],
                        "mountPoints": [{"sourceVolume": "d", "containerPath": "/data"}]}],
        "volumes": [{"name": "d", "host": {"sourcePath": "/srv/data"}}],
        "taskRoleArn": "arn:aws:iam::000000000000:role/r",
    }]},
}


def with_(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of body with the dotted path (list indexes as digits) set, or deleted if value is ...."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return out


def rejects(operation: str, body: Any, message: str, **kw: Any) -> None:
    with pytest.raises(ClientError) as info:
        validate_request(operation, body, **kw)
    assert info.value.message == message


# --- the public surface ----------------------------------------------------------------------


def test_valid_tables_cover_every_operation() -> None:
    assert set(VALID) == OPERATIONS


@pytest.mark.parametrize("operation", sorted(VALID))
def test_valid_body_passes_and_is_returned(operation: str) -> None:
    body = copy.deepcopy(VALID[operation])
    assert validate_request(operation, body) is body


@pytest.mark.parametrize("body", [REGISTER_MULTINODE, with_(CREATE_CE, "type", "UNMANAGED")])
def test_other_valid_shapes_pass(body: dict[str, Any]) -> None:
    op = "RegisterJobDefinition" if "jobDefinitionName" in body else "CreateComputeEnvironment"
    validate_request(op, copy.deepcopy(body))


def test_route_table_maps_http_paths_to_operations() -> None:
    table = route_table()
    assert table["/v1/submitjob"] == "SubmitJob"
    assert table["/v1/describejobqueues"] == "DescribeJobQueues"
    assert set(table.values()) == OPERATIONS - TAG_OPERATIONS


def test_tagging_routes_are_aws_rest_paths() -> None:
    assert sorted(rest_routes()) == [
        ("DELETE", "/v1/tags/{resourceArn:.+}", "UntagResource"),
        ("GET", "/v1/tags/{resourceArn:.+}", "ListTagsForResource"),
        ("POST", "/v1/tags/{resourceArn:.+}", "TagResource"),
    ]


def test_ecs_properties_map_onto_the_container_model() -> None:
    body = validate_request("RegisterJobDefinition", copy.deepcopy(ECS_DEF))
    container = ecs_container(body["ecsProperties"])
    assert container == {
        "image": "busybox", "command": ["echo", "hi"], "environment": [{"name": "A", "value": "1"}],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}],
        "mountPoints": [{"sourceVolume": "d", "containerPath": "/data"}],
        "volumes": [{"name": "d", "host": {"sourcePath": "/srv/data"}}],
        "jobRoleArn": "arn:aws:iam::000000000000:role/r",
    }


def test_ecs_properties_in_a_node_range_map_too() -> None:
    ecs = ECS_DEF["ecsProperties"]
    body = {"jobDefinitionName": "m", "type": "multinode", "nodeProperties": {
        "numNodes": 1, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0", "ecsProperties": ecs}]}}
    validate_request("RegisterJobDefinition", copy.deepcopy(body))


def test_registering_over_24_kib_is_refused() -> None:
    body = with_(REGISTER_CONTAINER, "parameters", {"p": "x" * (25 * 1024)})
    raw = len(json.dumps(body))
    rejects("RegisterJobDefinition", body,
            f"RegisterJobDefinition request is {raw} bytes; a job definition is at most 24 KiB (AWS Batch's quota)",
            raw_size=raw)


def test_name_pattern_is_anchored() -> None:
    assert NAME_PATTERN.match("a" * 128)
    assert not NAME_PATTERN.match("a" * 129)
    assert not NAME_PATTERN.match("job\n")
    assert not NAME_PATTERN.match("-job")


def test_unsupported_operation_is_a_client_error() -> None:
    rejects("CreateServiceEnvironment", {}, "Unsupported operation 'CreateServiceEnvironment'")


def test_null_member_is_treated_as_absent() -> None:
    body = validate_request("SubmitJob", with_(SUBMIT, "timeout", None))
    assert "timeout" not in body
    rejects("SubmitJob", with_(SUBMIT, "jobName", None), "Missing required field jobName")


def test_retry_action_is_case_insensitive_and_stored_upper() -> None:
    body = validate_request("SubmitJob", copy.deepcopy(SUBMIT))
    assert body["retryStrategy"]["evaluateOnExit"][0]["action"] == "RETRY"


def test_compute_resources_need_no_ec2_fields_on_bare_metal() -> None:
    body = with_(CREATE_CE, "computeResources", {"maxvCpus": 8, "ec2Configuration": [{}]})
    validate_request("CreateComputeEnvironment", body)


# --- every rule names its field --------------------------------------------------------------

CE_RES = "computeResources"
ENV = "containerOverrides.environment"
RR = "containerOverrides.resourceRequirements"
EOE = "retryStrategy.evaluateOnExit"
REJECTED: list[tuple[str, dict[str, Any], str]] = [
    # shape: required, unknown, types, enums, min/max from the model
    ("SubmitJob", with_(SUBMIT, "jobQueue", ...), "Missing required field jobQueue"),
    ("SubmitJob", with_(SUBMIT, "jobNmae", "x"),
     "Unknown field 'jobNmae' in SubmitJob request (did you mean 'jobName'?)"),
    ("SubmitJob", with_(SUBMIT, "containerOverrides.cmd", ["x"]),
     "Unknown field 'containerOverrides.cmd' in SubmitJob request (did you mean 'command'?)"),
    ("SubmitJob", with_(SUBMIT, "x\ny", 1), "Unknown field 'x\\ny' in SubmitJob request"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.1.value", ...),
     "Missing required field containerOverrides.resourceRequirements[1].value"),
    ("SubmitJob", with_(SUBMIT, "jobName", 7), "jobName must be a string (got number)"),
    ("SubmitJob", with_(SUBMIT, "retryStrategy.attempts", True),
     "retryStrategy.attempts must be an integer (got boolean)"),
    ("SubmitJob", with_(SUBMIT, "retryStrategy.attempts", 1.5),
     "retryStrategy.attempts must be an integer (got number)"),
    ("SubmitJob", with_(SUBMIT, "propagateTags", "yes"),
     "propagateTags must be true or false (got string)"),
    ("SubmitJob", with_(SUBMIT, "dependsOn", {}), "dependsOn must be an array (got object)"),
    ("SubmitJob", with_(SUBMIT, "timeout", []), "timeout must be an object (got array)"),
    ("SubmitJob", with_(SUBMIT, "containerOverrides.command.1", None),
     "containerOverrides.command[1] must be a string (got null)"),
    ("SubmitJob", with_(SUBMIT, "dependsOn.0.type", "ALL"),
     "dependsOn[0].type must be one of N_TO_N, SEQUENTIAL (got 'ALL')"),
    ("SubmitJob", with_(SUBMIT, "timeout.attemptDurationSeconds", 2**40),
     "timeout.attemptDurationSeconds must be between -2147483648 and 2147483647 (got 1099511627776)"),
    ("SubmitJob", with_(SUBMIT, "tags", {"k" * 129: "v"}),
     f'tags["{"k" * 64}..."] key must be at most 128 characters (got 129)'),
    ("SubmitJob", with_(SUBMIT, "parameters.epochs", 10),
     'parameters["epochs"] must be a string (got number)'),
    ("SubmitJob", [], "SubmitJob request body must be a JSON object (got array)"),
    # names
    ("SubmitJob", with_(SUBMIT, "jobName", "my job"),
     "jobName must start with a letter or digit and contain only letters, digits, hyphens and "
     "underscores (got 'my job')"),
    ("SubmitJob", with_(SUBMIT, "jobName", "_x"),
     "jobName must start with a letter or digit and contain only letters, digits, hyphens and "
     "underscores (got '_x')"),
    ("SubmitJob", with_(SUBMIT, "jobName", "a" * 129),
     "jobName must be at most 128 characters (got 129)"),
    ("SubmitJob", with_(SUBMIT, "jobName", ""), "jobName must not be empty"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "jobQueueName", "q.1"),
     "jobQueueName must start with a letter or digit and contain only letters, digits, hyphens "
     "and underscores (got 'q.1')"),
    ("CreateComputeEnvironment", with_(CREATE_CE, "computeEnvironmentName", "ce/1"),
     "computeEnvironmentName must start with a letter or digit and contain only letters, "
     "digits, hyphens and underscores (got 'ce/1')"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "jobDefinitionName", "d:1"),
     "jobDefinitionName must start with a letter or digit and contain only letters, digits, "
     "hyphens and underscores (got 'd:1')"),
    # retry strategy
    ("SubmitJob", with_(SUBMIT, "retryStrategy.attempts", 11),
     "retryStrategy.attempts must be between 1 and 10 (got 11)"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "retryStrategy.attempts", 0),
     "retryStrategy.attempts must be between 1 and 10 (got 0)"),
    ("SubmitJob", with_(SUBMIT, EOE, [{"action": "EXIT"}] * 6),
     "retryStrategy.evaluateOnExit must have at most 5 entries (got 6)"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.0.action", ...),
     "Missing required field retryStrategy.evaluateOnExit[0].action"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.0.action", "again"),
     "retryStrategy.evaluateOnExit[0].action must be one of RETRY, EXIT (got 'again')"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.0.onExitCode", "1-3"),
     "retryStrategy.evaluateOnExit[0].onExitCode must be digits with an optional trailing * "
     "(got '1-3')"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.0.onExitCode", "1*2"),
     "retryStrategy.evaluateOnExit[0].onExitCode must be digits with an optional trailing * "
     "(got '1*2')"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.0.onExitCode", "1" * 513),
     "retryStrategy.evaluateOnExit[0].onExitCode must be at most 512 characters (got 513)"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.1.onReason", "OOM (killed)"),
     "retryStrategy.evaluateOnExit[1].onReason may contain only letters, digits, periods, colons "
     "and white space, with an optional trailing * (got 'OOM (killed)')"),
    ("SubmitJob", with_(SUBMIT, f"{EOE}.1.onStatusReason", "a" * 513),
     "retryStrategy.evaluateOnExit[1].onStatusReason must be at most 512 characters (got 513)"),
    # timeout, dependsOn, arrays, size
    ("SubmitJob", with_(SUBMIT, "timeout.attemptDurationSeconds", 59),
     "timeout.attemptDurationSeconds must be at least 60 (got 59)"),
    ("SubmitJob", with_(SUBMIT, "dependsOn", [{"jobId": "x"}] * 21),
     "dependsOn must have at most 20 entries (got 21)"),
    ("SubmitJob", with_(SUBMIT, "arrayProperties.size", 1),
     "arrayProperties.size must be between 2 and 10000 (got 1)"),
    ("SubmitJob", with_(SUBMIT, "arrayProperties.size", 10_001),
     "arrayProperties.size must be between 2 and 10000 (got 10001)"),
    ("SubmitJob", with_(SUBMIT, "schedulingPriorityOverride", 10_000),
     "schedulingPriorityOverride must be between 0 and 9999 (got 10000)"),
    # environment
    ("SubmitJob", with_(SUBMIT, f"{ENV}.1.name", "AWS_BATCH_JOB_ID"),
     "containerOverrides.environment[1].name: AWS_BATCH_ is a reserved prefix "
     "(got 'AWS_BATCH_JOB_ID')"),
    ("SubmitJob", with_(SUBMIT, f"{ENV}.0.name", ""),
     "containerOverrides.environment[0].name must not be empty"),
    ("SubmitJob", with_(SUBMIT, f"{ENV}.0.name", ...),
     "containerOverrides.environment[0].name must not be empty"),
    ("SubmitJob", with_(SUBMIT, "nodeOverrides.nodePropertyOverrides.0.containerOverrides."
                                "environment.0.name", "AWS_BATCH_X"),
     "nodeOverrides.nodePropertyOverrides[0].containerOverrides.environment[0].name: "
     "AWS_BATCH_ is a reserved prefix (got 'AWS_BATCH_X')"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "containerProperties.environment.0.name",
                                    "AWS_BATCH_CE_NAME"),
     "containerProperties.environment[0].name: AWS_BATCH_ is a reserved prefix "
     "(got 'AWS_BATCH_CE_NAME')"),
    ("RegisterJobDefinition", with_(REGISTER_MULTINODE, "nodeProperties.nodeRangeProperties.0."
                                    "container.environment.0.name", "AWS_BATCH_Y"),
     "nodeProperties.nodeRangeProperties[0].container.environment[0].name: AWS_BATCH_ is a "
     "reserved prefix (got 'AWS_BATCH_Y')"),
    # resource requirements
    ("SubmitJob", with_(SUBMIT, f"{RR}.0.value", "0"),
     "containerOverrides.resourceRequirements[0].value must be a number greater than 0 for VCPU "
     "(got '0')"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.0.value", "nan"),
     "containerOverrides.resourceRequirements[0].value must be a number greater than 0 for VCPU "
     "(got 'nan')"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.1.value", "3"),
     "containerOverrides.resourceRequirements[1].value must be a whole number of MiB, at least "
     "4, for MEMORY (got '3')"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.1.value", "4.5"),
     "containerOverrides.resourceRequirements[1].value must be a whole number of MiB, at least "
     "4, for MEMORY (got '4.5')"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.2.value", "-1"),
     "containerOverrides.resourceRequirements[2].value must be a whole number of GPUs, 0 or more "
     "(got '-1')"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.2.type", "VCPU"),
     "containerOverrides.resourceRequirements[2].type: VCPU is given twice; give each type "
     "once"),
    ("SubmitJob", with_(SUBMIT, f"{RR}.2.type", "TPU"),
     "containerOverrides.resourceRequirements[2].type must be one of GPU, VCPU, MEMORY "
     "(got 'TPU')"),
    ("SubmitJob", with_(SUBMIT, "containerOverrides.vcpus", 0),
     "containerOverrides.vcpus must be at least 1 (got 0)"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "containerProperties.memory", 3),
     "containerProperties.memory must be at least 4 (got 3)"),
    # job queues
    ("CreateJobQueue", with_(CREATE_QUEUE, "priority", 1001),
     "priority must be between 0 and 1000 (got 1001)"),
    ("UpdateJobQueue", {"jobQueue": "q", "priority": -1},
     "priority must be between 0 and 1000 (got -1)"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "computeEnvironmentOrder", []),
     "computeEnvironmentOrder must have at least 1 entry (got 0)"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "computeEnvironmentOrder", ...),
     "Missing required field computeEnvironmentOrder"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "computeEnvironmentOrder",
                             [{"order": i, "computeEnvironment": "c"} for i in range(4)]),
     "computeEnvironmentOrder must have at most 3 entries (got 4)"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "computeEnvironmentOrder.1.order", 1),
     "computeEnvironmentOrder[1].order must be unique (1 is also used by entry 0)"),
    ("UpdateJobQueue", {"jobQueue": "q", "computeEnvironmentOrder":
                        [{"order": -1, "computeEnvironment": "c"}]},
     "computeEnvironmentOrder[0].order must be at least 0 (got -1)"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "computeEnvironmentOrder.0.computeEnvironment", ...),
     "Missing required field computeEnvironmentOrder[0].computeEnvironment"),
    # compute environments
    ("CreateComputeEnvironment", with_(CREATE_CE, "type", "EC2"),
     "type must be one of MANAGED, UNMANAGED (got 'EC2')"),
    ("CreateComputeEnvironment", with_(CREATE_CE, "state", "ON"),
     "state must be one of ENABLED, DISABLED (got 'ON')"),
    ("CreateComputeEnvironment", with_(CREATE_CE, f"{CE_RES}.maxvCpus", ...),
     "Missing required field computeResources.maxvCpus"),
    ("CreateComputeEnvironment", with_(CREATE_CE, f"{CE_RES}.maxvCpus", -1),
     "computeResources.maxvCpus must be at least 0 (got -1)"),
    ("UpdateComputeEnvironment", {"computeEnvironment": "c", "computeResources": {"maxvCpus": -2}},
     "computeResources.maxvCpus must be at least 0 (got -2)"),
    ("CreateComputeEnvironment", with_(CREATE_CE, f"{CE_RES}.minvCpus", 512),
     "computeResources.minvCpus must not exceed maxvCpus (256) (got 512)"),
    # tags
    ("SubmitJob", with_(SUBMIT, "tags", {f"k{i}": "v" for i in range(51)}),
     "tags must have at most 50 entries (got 51)"),
    ("CreateJobQueue", with_(CREATE_QUEUE, "tags", {"AWS:owner": "me"}),
     'tags["AWS:owner"]: tag keys starting with aws: are reserved for AWS'),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "tags", {"k": "v" * 257}),
     'tags["k"] must be at most 256 characters (got 257)'),
    ("CreateComputeEnvironment", with_(CREATE_CE, "tags", {"": "v"}),
     'tags[""] key must not be empty'),
    ("CreateComputeEnvironment", with_(CREATE_CE, f"{CE_RES}.tags", {"aws:x": "v"}),
     'computeResources.tags["aws:x"]: tag keys starting with aws: are reserved for AWS'),
    # job definitions
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "containerProperties", ...),
     "containerProperties (or ecsProperties) is required when type is container"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "nodeProperties",
                                    REGISTER_MULTINODE["nodeProperties"]),
     "nodeProperties is only for type multinode; remove it or set type to multinode"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "type", "multinode"),
     "nodeProperties is required when type is multinode"),
    ("RegisterJobDefinition", with_(REGISTER_CONTAINER, "type", "batch"),
     "type must be one of container, multinode (got 'batch')"),
    ("RegisterJobDefinition", with_(REGISTER_MULTINODE, "containerProperties", {}),
     "containerProperties is only for type container; put the container in "
     "nodeProperties.nodeRangeProperties"),
    ("RegisterJobDefinition", with_(REGISTER_MULTINODE, "nodeProperties.numNodes", 0),
     "nodeProperties.numNodes must be at least 1 (got 0)"),
    ("RegisterJobDefinition", with_(REGISTER_MULTINODE, "nodeProperties.mainNode", 4),
     "nodeProperties.mainNode must be between 0 and 3 (got 4)"),
    # list / describe / cancel
    ("ListJobs", {"maxResults": 0}, "maxResults must be between 1 and 1000 (got 0)"),
    ("ListJobs", {"maxResults": 1001}, "maxResults must be between 1 and 1000 (got 1001)"),
    ("ListJobs", {"jobStatus": "running"},
     "jobStatus must be one of SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, "
     "FAILED (got 'running')"),
    ("DescribeJobQueues", {"maxResults": 101}, "maxResults must be between 1 and 100 (got 101)"),
    ("DescribeJobs", {"jobs": []}, "jobs must have at least 1 entry (got 0)"),
    ("DescribeJobs", {"jobs": ["j"] * 101}, "jobs must have at most 100 entries (got 101)"),
    ("CancelJob", {"jobId": "j"}, "Missing required field reason"),
    ("CancelJob", {"jobId": "j", "reason": ""}, "reason must not be empty"),
    ("TerminateJob", {"jobId": "j", "reason": ""}, "reason must not be empty"),
    ("TerminateJob", {"reason": "r"}, "Missing required field jobId"),
    # tagging (AWS Batch's tag restrictions)
    ("TagResource", {"resourceArn": "a", "tags": {}}, "tags must have at least 1 entry (got 0)"),
    ("TagResource", {"resourceArn": "a", "tags": {f"k{i}": "v" for i in range(51)}},
     "tags must have at most 50 entries (got 51)"),
    ("TagResource", {"resourceArn": "a", "tags": {"aws:x": "v"}},
     'tags["aws:x"]: tag keys starting with aws: are reserved for AWS'),
    ("TagResource", {"resourceArn": "a", "tags": {"k": "v" * 257}},
     'tags["k"] must be at most 256 characters (got 257)'),
    ("TagResource", {"resourceArn": "a", "tags": {"k" * 129: "v"}},
     f'tags["{"k" * 64}..."] key must be at most 128 characters (got 129)'),
    ("TagResource", {"resourceArn": "a", "tags": {"a#b": "v"}},
     "tags[\"a#b\"] key may hold only letters, numbers, spaces and + - = . _ : / @ (got 'a#b')"),
    ("TagResource", {"resourceArn": "a", "tags": {"k": "v;rm"}},
     "tags[\"k\"] value may hold only letters, numbers, spaces and + - = . _ : / @ (got 'v;rm')"),
    ("TagResource", {"tags": {"k": "v"}}, "Missing required field resourceArn"),
    ("TagResource", {"resourceArn": "", "tags": {"k": "v"}}, "resourceArn must not be empty"),
    ("UntagResource", {"resourceArn": "a", "tagKeys": []}, "tagKeys must have at least 1 entry (got 0)"),
    ("UntagResource", {"resourceArn": "a", "tagKeys": ["AWS:owner"]},
     "tagKeys[0]: tag keys starting with aws: are reserved for AWS (got 'AWS:owner')"),
    ("UntagResource", {"resourceArn": "a", "tagKeys": ["k" * 129]}, "tagKeys[0] must be at most 128 characters (got 129)"),
    # ecsProperties / eksProperties
    ("RegisterJobDefinition", {"jobDefinitionName": "e", "type": "container",
                               "eksProperties": {"podProperties": {"containers": [{"image": "x"}]}}},
     "eksProperties: hpcbatch runs jobs on its own nodes; eksProperties is not supported"),
    ("RegisterJobDefinition", {"jobDefinitionName": "e", "type": "container"},
     "containerProperties (or ecsProperties) is required when type is container"),
    ("RegisterJobDefinition", with_(ECS_DEF, "containerProperties", {"image": "x"}),
     "ecsProperties: give containerProperties or ecsProperties, not both"),
    ("RegisterJobDefinition", with_(ECS_DEF, "ecsProperties.taskProperties.0.containers",
                                    [{"image": "main"}, {"image": "sidecar"}]),
     "ecsProperties.taskProperties[0].containers must hold exactly one essential container: hpcbatch runs one "
     "container per job (got 2, 2 essential)"),
    ("RegisterJobDefinition", with_(ECS_DEF, "ecsProperties.taskProperties.0.containers.0.essential", False),
     "ecsProperties.taskProperties[0].containers must hold exactly one essential container: hpcbatch runs one "
     "container per job (got 1, 0 essential)"),
    ("RegisterJobDefinition", with_(ECS_DEF, "ecsProperties.taskProperties.0.pidMode", "host"),
     "ecsProperties.taskProperties[0].pidMode cannot be honoured: hpcbatch runs one container per job on its "
     "own nodes; remove it"),
    ("RegisterJobDefinition", with_(ECS_DEF, "ecsProperties.taskProperties.0.containers.0.firelensConfiguration",
                                    {"type": "fluentd"}),
     "ecsProperties.taskProperties[0].containers[0].firelensConfiguration cannot be honoured: hpcbatch runs one "
     "container per job; remove it"),
    ("RegisterJobDefinition", with_(ECS_DEF, "ecsProperties.taskProperties.0.containers.0.image", "-v/:/h"),
     "ecsProperties.taskProperties[0].containers[0].image must name an image and must not begin with '-' "
     "(got '-v/:/h')"),
    ("RegisterJobDefinition", with_(ECS_DEF, "ecsProperties.taskProperties.0.containers.0.environment",
                                    [{"name": "AWS_BATCH_JOB_ID", "value": "x"}]),
     "ecsProperties.taskProperties[0].containers[0].environment[0].name: AWS_BATCH_ is a reserved prefix "
     "(got 'AWS_BATCH_JOB_ID')"),
    ("RegisterJobDefinition", with_(ECS_DEF, "type", "multinode"),
     "ecsProperties is for type container; a multinode definition gives ecsProperties per node range "
     "(nodeProperties.nodeRangeProperties[].ecsProperties)"),
    ("RegisterJobDefinition", with_(REGISTER_MULTINODE, "nodeProperties.nodeRangeProperties.0.eksProperties", {}),
     "nodeProperties.nodeRangeProperties[0].eksProperties: hpcbatch runs jobs on its own nodes; eksProperties "
     "is not supported"),
    ("SubmitJob", with_(SUBMIT, "eksPropertiesOverride", {}),
     "eksPropertiesOverride: hpcbatch runs jobs on its own nodes; eksPropertiesOverride is not supported"),
    ("SubmitJob", with_(SUBMIT, "ecsPropertiesOverride", {}),
     "ecsPropertiesOverride: hpcbatch runs jobs on its own nodes; ecsPropertiesOverride is not supported; "
     "use containerOverrides"),
]


@pytest.mark.parametrize(("operation", "body", "message"), REJECTED,
                         ids=[m[:60] for _, _, m in REJECTED])
def test_rule_rejects_with_message_naming_the_field(operation: str, body: Any, message: str) -> None:
    rejects(operation, body, message)


def test_submit_job_over_30_kib_is_rejected_before_parsing_rules() -> None:
    rejects("SubmitJob", SUBMIT, "SubmitJob request is 30721 bytes; the limit is 30 KiB",
            raw_size=30721)
    validate_request("SubmitJob", copy.deepcopy(SUBMIT), raw_size=30720)


# --- junk never escapes as anything but ClientError ------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside node (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out += paths(v, (*prefix, k))
    return out


def survives(operation: str, body: Any) -> None:
    try:
        result = validate_request(operation, body)
    except ClientError as e:
        assert e.message and "\n" not in e.message.strip()
    else:
        assert isinstance(result, dict)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(OPERATIONS)), JSON)
def test_random_json_raises_only_client_error(operation: str, body: Any) -> None:
    survives(operation, body)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID) + ["RegisterMultinode"]), st.data())
def test_valid_body_with_one_value_replaced_raises_only_client_error(op: str, data: Any) -> None:
    body = copy.deepcopy(REGISTER_MULTINODE if op == "RegisterMultinode" else VALID[op])
    op = "RegisterJobDefinition" if op == "RegisterMultinode" else op
    candidates = paths(body)
    if candidates:
        *parents, last = data.draw(st.sampled_from(candidates))
        node = body
        for part in parents:
            node = node[part]
        node[last] = data.draw(JSON | st.integers(min_value=-(2**70), max_value=2**70)
                               | st.text(alphabet="0123456789.*:AWS_BATCH- ", max_size=8))
    else:
        body = data.draw(st.dictionaries(st.text(max_size=12), JSON, max_size=3))
    survives(op, body)


@given(st.text(max_size=140))
def test_name_pattern_agrees_with_submit_job(name: str) -> None:
    ok = NAME_PATTERN.match(name) is not None
    try:
        validate_request("SubmitJob", with_(SUBMIT, "jobName", name))
    except ClientError as e:
        assert not ok and e.message.startswith("jobName")
    else:
        assert ok


def test_error_messages_are_json_safe_for_huge_values() -> None:
    with pytest.raises(ClientError) as info:
        validate_request("SubmitJob", with_(SUBMIT, "retryStrategy.attempts", 10**5000))
    assert "too large" in info.value.message
    json.dumps(info.value.message)


def test_float_shapes_accept_ints_but_not_booleans_or_nan() -> None:
    # The batch model has no float/double members today; pin the rule for when it does.
    from botocore.model import Shape

    from hpcbatch.validation import _Bad, _Compiler

    check = _Compiler().compile(Shape("Ratio", {"type": "double", "min": 0}))
    check(1)
    check(0.5)
    for junk, message in [(True, " must be a number (got boolean)"),
                          (float("nan"), " must be a finite number (got nan)"),
                          (-1, " must be at least 0 (got -1)")]:
        with pytest.raises(_Bad) as info:
            check(junk)
        assert info.value.tail == message


# --- scheduling policies and queue time limits -------------------------------------------------


def test_share_identifier_with_an_asterisk_inside_is_refused() -> None:
    body = with_(VALID["CreateSchedulingPolicy"], "fairsharePolicy.shareDistribution.0.shareIdentifier", "a*b")
    with pytest.raises(ClientError, match=r"shareDistribution\[0\]\.shareIdentifier must be 1-255"):
        validate_request("CreateSchedulingPolicy", body)


def test_compute_reservation_above_99_is_refused() -> None:
    body = with_(VALID["CreateSchedulingPolicy"], "fairsharePolicy.computeReservation", 100)
    with pytest.raises(ClientError, match="computeReservation must be between 0 and 99"):
        validate_request("CreateSchedulingPolicy", body)


def test_weight_factor_out_of_range_is_refused() -> None:
    body = with_(VALID["CreateSchedulingPolicy"], "fairsharePolicy.shareDistribution.0.weightFactor", 0)
    with pytest.raises(ClientError, match="weightFactor must be between 0.0001 and 999.9999"):
        validate_request("CreateSchedulingPolicy", body)


def test_spread_is_an_allocation_strategy_and_spot_ones_are_refused() -> None:
    ok = with_(CREATE_CE, "computeResources.allocationStrategy", "SPREAD")
    validate_request("CreateComputeEnvironment", ok)
    spot = with_(CREATE_CE, "computeResources.allocationStrategy", "SPOT_CAPACITY_OPTIMIZED")
    with pytest.raises(ClientError, match="allocationStrategy applies to EC2 Spot"):
        validate_request("CreateComputeEnvironment", spot)


# --- strings that reach exec, the environment, podman or a path (docs/security.md) -----------

NUL = "a\x00b"
CTR = "containerProperties"


@pytest.mark.parametrize(("op", "path", "field"), [
    ("SubmitJob", "jobName", "jobName"),
    ("SubmitJob", "jobQueue", "jobQueue"),
    ("SubmitJob", "jobDefinition", "jobDefinition"),
    ("SubmitJob", "containerOverrides.command.1", "containerOverrides.command[1]"),
    ("SubmitJob", "containerOverrides.environment.0.value", "containerOverrides.environment[0].value"),
    ("SubmitJob", "containerOverrides.environment.0.name", "containerOverrides.environment[0].name"),
    ("SubmitJob", "nodeOverrides.nodePropertyOverrides.0.containerOverrides.environment.0.name",
     "nodeOverrides.nodePropertyOverrides[0].containerOverrides.environment[0].name"),
    ("SubmitJob", "parameters.epochs", 'parameters["epochs"]'),
    ("SubmitJob", "tags.team", 'tags["team"]'),
    ("SubmitJob", "dependsOn.0.jobId", "dependsOn[0].jobId"),
    ("RegisterJobDefinition", f"{CTR}.command.0", f"{CTR}.command[0]"),
    ("RegisterJobDefinition", f"{CTR}.image", f"{CTR}.image"),
    ("RegisterJobDefinition", f"{CTR}.environment.0.value", f"{CTR}.environment[0].value"),
    ("RegisterJobDefinition", f"{CTR}.user", f"{CTR}.user"),
    ("RegisterJobDefinition", "parameters.epochs", 'parameters["epochs"]'),
])
def test_a_nul_byte_in_any_string_is_refused_naming_the_field(op: str, path: str, field: str) -> None:
    body = with_(VALID[op], path, NUL)
    with pytest.raises(ClientError) as info:
        validate_request(op, body)
    assert info.value.message.startswith(field + " must not contain a NUL byte"), info.value.message


def test_a_nul_byte_in_a_map_key_or_a_multinode_command_is_refused() -> None:
    body = copy.deepcopy(SUBMIT)
    body["parameters"] = {"ep\x00ochs": "1"}
    with pytest.raises(ClientError, match=r"parameters\[.*\] key must not contain a NUL byte"):
        validate_request("SubmitJob", body)
    body = with_(REGISTER_MULTINODE, "nodeProperties.nodeRangeProperties.0.container.command.0", NUL)
    rejects("RegisterJobDefinition", body,
            "nodeProperties.nodeRangeProperties[0].container.command[0] must not contain a NUL byte (\\u0000): "
            "no program, path or environment can hold one")


@pytest.mark.parametrize("op", ["SubmitJob", "RegisterJobDefinition"])
def test_an_equals_sign_in_an_environment_name_is_refused(op: str) -> None:
    prefix = "containerOverrides" if op == "SubmitJob" else CTR
    body = with_(VALID[op], f"{prefix}.environment.0.name", "PATH=/evil:$PATH")
    rejects(op, body, f"{prefix}.environment[0].name must not contain '=' (got 'PATH=/evil:$PATH')")


@pytest.mark.parametrize("name", ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                                  "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "CUDA_DEVICE_ORDER", "ZE_AFFINITY_MASK"])
@pytest.mark.parametrize("op", ["SubmitJob", "RegisterJobDefinition"])
def test_gpu_visibility_variables_are_reserved_like_aws_batch_ones(op: str, name: str) -> None:
    prefix = "containerOverrides" if op == "SubmitJob" else CTR
    with pytest.raises(ClientError) as info:
        validate_request(op, with_(VALID[op], f"{prefix}.environment.0.name", name))
    assert info.value.message.startswith(f"{prefix}.environment[0].name: {name} is reserved"), info.value.message
    body = with_(SUBMIT, "nodeOverrides.nodePropertyOverrides.0.containerOverrides.environment.0.name", name)
    with pytest.raises(ClientError, match="is reserved"):
        validate_request("SubmitJob", body)
    rejects(op, with_(VALID[op], f"{prefix}.environment.0.name", "AWS_BATCH_JOB_ID"),
            f"{prefix}.environment[0].name: AWS_BATCH_ is a reserved prefix (got 'AWS_BATCH_JOB_ID')")


@pytest.mark.parametrize("image", ["--privileged", "-v/:/host", " "])
def test_an_image_beginning_with_a_dash_or_blank_is_refused(image: str) -> None:
    with pytest.raises(ClientError) as info:
        validate_request("RegisterJobDefinition", with_(REGISTER_CONTAINER, f"{CTR}.image", image))
    assert info.value.message.startswith(f"{CTR}.image"), info.value.message


@pytest.mark.parametrize(("member", "value", "field", "words"), [
    ("volumes", [{"name": "v", "host": {"sourcePath": "/data:/etc"}}], "volumes[0].host.sourcePath", "':' or ','"),
    ("volumes", [{"name": "v", "host": {"sourcePath": "/data,suid"}}], "volumes[0].host.sourcePath", "':' or ','"),
    ("volumes", [{"name": "v", "host": {"sourcePath": "/data/../etc"}}], "volumes[0].host.sourcePath", "normal path"),
    ("volumes", [{"name": "v", "host": {"sourcePath": "data"}}], "volumes[0].host.sourcePath", "absolute path"),
    ("mountPoints", [{"sourceVolume": "v", "containerPath": "/x:rw,suid"}], "mountPoints[0].containerPath",
     "':' or ','"),
    ("linuxParameters", {"devices": [{"hostPath": "/dev/vda:/dev/x:rwm"}]}, "linuxParameters.devices[0].hostPath",
     "':' or ','"),
    ("linuxParameters", {"devices": [{"hostPath": "/dev/fuse", "containerPath": "/dev/f:rwm"}]},
     "linuxParameters.devices[0].containerPath", "':' or ','"),
    ("linuxParameters", {"tmpfs": [{"containerPath": "/t:exec", "size": 8}]}, "linuxParameters.tmpfs[0].containerPath",
     "':' or ','"),
    ("linuxParameters", {"tmpfs": [{"containerPath": "/t", "size": 8, "mountOptions": ["suid"]}]},
     "linuxParameters.tmpfs[0].mountOptions[0]", "nosuid,nodev"),
    ("linuxParameters", {"tmpfs": [{"containerPath": "/t", "size": 8, "mountOptions": ["rbind"]}]},
     "linuxParameters.tmpfs[0].mountOptions[0]", "not allowed"),
    ("ulimits", [{"name": "nofile=1:1 --privileged", "softLimit": 1, "hardLimit": 1}], "ulimits[0].name", "one of"),
    ("ulimits", [{"name": "nofile", "softLimit": 10, "hardLimit": 5}], "ulimits[0].softLimit", "hardLimit"),
])
def test_mount_options_cannot_be_smuggled_through_paths(member: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(ClientError) as info:
        validate_request("RegisterJobDefinition", with_(REGISTER_CONTAINER, f"{CTR}.{member}", value))
    message = info.value.message
    assert message.startswith(f"{CTR}.{field}") and words in message, message


def test_ordinary_paths_and_tmpfs_options_pass_the_syntax_check() -> None:
    body = copy.deepcopy(REGISTER_CONTAINER)
    body[CTR].update(
        volumes=[{"name": "v", "host": {"sourcePath": "/srv/data"}}],
        mountPoints=[{"sourceVolume": "v", "containerPath": "/data", "readOnly": True}],
        linuxParameters={"devices": [{"hostPath": "/dev/fuse"}], "sharedMemorySize": 64,
                         "tmpfs": [{"containerPath": "/scratch", "size": 64, "mountOptions": ["noexec", "mode=1777"]}]},
        ulimits=[{"name": "memlock", "softLimit": -1, "hardLimit": -1}],
    )
    validate_request("RegisterJobDefinition", body)


# --- what the head's config allows a container -------------------------------------------------

from hpcbatch.validation import ContainerLimits, check_container_limits, check_image_name  # noqa: E402


def _limits_error(container: dict[str, Any], limits: ContainerLimits | None = None) -> str:
    with pytest.raises(ClientError) as info:
        check_container_limits(container, CTR, limits or ContainerLimits())
    return info.value.message


def _volume(source: str, read_only: bool = False) -> dict[str, Any]:
    return {"image": "img", "volumes": [{"name": "v", "host": {"sourcePath": source}}],
            "mountPoints": [{"sourceVolume": "v", "containerPath": "/mnt", "readOnly": read_only}]}


def test_no_host_path_is_allowed_by_default_and_the_error_names_the_config_key() -> None:
    message = _limits_error(_volume("/"))
    assert message.startswith(f"{CTR}.volumes[0].host.sourcePath / is not a host path this cluster allows")
    assert "container_host_paths" in message


def test_allowed_host_paths_and_their_subtrees_pass_and_neighbours_do_not() -> None:
    limits = ContainerLimits(host_paths=("/scratch",), host_paths_read_only=("/datasets",))
    check_container_limits(_volume("/scratch"), CTR, limits)
    check_container_limits(_volume("/scratch/alice/run1"), CTR, limits)
    check_container_limits(_volume("/datasets/imagenet", read_only=True), CTR, limits)
    assert "container_host_paths" in _limits_error(_volume("/scratchy"), limits)
    assert "container_host_paths" in _limits_error(_volume("/etc"), limits)
    message = _limits_error(_volume("/datasets/imagenet"), limits)
    assert message.startswith(f"{CTR}.mountPoints[0].readOnly must be true") and "container_host_paths_read_only" in message


def test_devices_need_the_admins_consent() -> None:
    container = {"image": "img", "linuxParameters": {"devices": [{"hostPath": "/dev/vda"}]}}
    message = _limits_error(container)
    assert message.startswith(f"{CTR}.linuxParameters.devices[0].hostPath /dev/vda is not a device")
    assert "container_devices" in message
    check_container_limits({"image": "i", "linuxParameters": {"devices": [{"hostPath": "/dev/infiniband/uverbs0"}]}},
                           CTR, ContainerLimits(devices=("/dev/infiniband/*",)))
    assert "container_devices" in _limits_error(container, ContainerLimits(devices=("/dev/infiniband/*",)))


def test_shared_memory_and_tmpfs_are_capped_by_memory_or_the_config() -> None:
    reqs = [{"type": "MEMORY", "value": "1024"}]
    shm = {"image": "i", "resourceRequirements": reqs, "linuxParameters": {"sharedMemorySize": 2048}}
    assert "container_max_shared_memory_mib" in _limits_error(shm)
    check_container_limits(shm, CTR, ContainerLimits(max_shared_memory_mib=4096))
    tmpfs = {"image": "i", "resourceRequirements": reqs,
             "linuxParameters": {"tmpfs": [{"containerPath": "/a", "size": 600}, {"containerPath": "/b", "size": 600}]}}
    message = _limits_error(tmpfs)
    assert "add up to at most 1024 MiB (got 1200" in message and "container_max_tmpfs_mib" in message
    check_container_limits(tmpfs, CTR, ContainerLimits(max_tmpfs_mib=2000))


def test_ulimits_are_limited_by_name_and_hard_limit() -> None:
    def ulimit(name: str, hard: int) -> dict[str, Any]:
        return {"ulimits": [{"name": name, "softLimit": min(hard, 1) if hard != -1 else -1, "hardLimit": hard}]}

    check_container_limits(ulimit("nofile", 4096), CTR, ContainerLimits())
    check_container_limits(ulimit("memlock", -1), CTR, ContainerLimits())
    message = _limits_error(ulimit("rtprio", 99))
    assert message.startswith(f"{CTR}.ulimits[0].name rtprio is not a limit") and "container_ulimits" in message
    assert "at most 1048576" in _limits_error(ulimit("nofile", -1))
    assert "container_ulimits" in _limits_error(ulimit("nofile", 4096), ContainerLimits(ulimits={"nofile": 1024}))


@pytest.mark.parametrize("image", ["-x", "a\x00b", "a b", "", None])
def test_prepull_image_names_are_checked_like_definitions(image: Any) -> None:
    with pytest.raises(ClientError, match="^image must"):
        check_image_name(image)
    assert check_image_name("reg.example:5000/team/app:1") == "reg.example:5000/team/app:1"


def test_hpcbatch_operations_take_no_nul_byte_either() -> None:
    from hpcbatch.validation import refuse_nul

    refuse_nul({"name": "node1", "nodes": ["a", "b"], "n": 1, "x": None})
    with pytest.raises(ClientError, match=r"^nodes\[1\] must not contain a NUL byte"):
        refuse_nul({"name": "node1", "nodes": ["a", "b\x00"]})
    with pytest.raises(ClientError, match=r"^a\\u0000b \(a field name\) must not contain a NUL byte"):
        refuse_nul({"a\x00b": 1})
    with pytest.raises(ClientError, match=r"^deep\.er must not contain"):
        refuse_nul({"deep": {"er": "\x00"}})


# --- the package's structure (issue 17) ---------------------------------------------------------


def test_each_validation_module_owns_its_hook_keys_alone() -> None:
    # __init__ merges the modules' tables with {**a, **b}: a key in two would silently drop a rule.
    from hpcbatch.validation import _OPERATION_HOOKS, _SHAPE_HOOKS, common, jobdefs, rules

    shape_tables = [common.SHAPE_HOOKS, jobdefs.SHAPE_HOOKS, rules.SHAPE_HOOKS]
    operation_tables = [jobdefs.OPERATION_HOOKS, rules.OPERATION_HOOKS]
    assert len(_SHAPE_HOOKS) == sum(len(t) for t in shape_tables)
    assert len(_OPERATION_HOOKS) == sum(len(t) for t in operation_tables)


def test_validation_modules_import_one_way() -> None:
    # common at the bottom; shapes, jobdefs and rules import only common; __init__ imports them all.
    import ast
    import pathlib

    import hpcbatch.validation as package

    below = {"common": set(), "shapes": {"common"}, "jobdefs": {"common"}, "rules": {"common"}}
    root = pathlib.Path(package.__file__).parent
    for module, allowed in below.items():
        tree = ast.parse((root / f"{module}.py").read_text())
        used = {node.module.removeprefix("hpcbatch.validation").lstrip(".") or "__init__"
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hpcbatch.validation")}
        assert used <= allowed, (module, used)
