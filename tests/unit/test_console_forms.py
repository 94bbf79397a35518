"""The console's pure parts: the submit form's SubmitJob body, sign-in links and sessions."""

from __future__ import annotations

import pytest

from hpcbatch.auth.policy import Caller
from hpcbatch.console.sessions import Sessions
from hpcbatch.console.views import submit_body
from hpcbatch.errors import ClientError

BASE = {"jobName": "j", "jobQueue": "q", "jobDefinition": "d"}


def test_the_form_becomes_the_submitjob_body_aws_would_take() -> None:
    body = submit_body({**BASE, "command": "python -c 'print(1)'", "vcpus": "2", "memory": "1024",
                        "environment": "A=1\nB=x=y\n", "arraySize": "4", "dependsOn": "j1, j2", "attempts": "3",
                        "timeout": "60"})
    assert body == {
        **BASE,
        "containerOverrides": {"command": ["python", "-c", "print(1)"],
                               "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "1024"}],
                               "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "x=y"}]},
        "arrayProperties": {"size": 4}, "dependsOn": [{"jobId": "j1"}, {"jobId": "j2"}],
        "retryStrategy": {"attempts": 3}, "timeout": {"attemptDurationSeconds": 60},
    }


def test_nodes_turn_overrides_into_node_overrides() -> None:
    # As `hpcbatch submit --nodes`: the command on the main node, the resources on every node.
    body = submit_body({**BASE, "numNodes": "3", "command": "mpirun app", "vcpus": "2"})
    vcpus = [{"type": "VCPU", "value": "2"}]
    assert body["nodeOverrides"] == {"numNodes": 3, "nodePropertyOverrides": [
        {"targetNodes": "0", "containerOverrides": {"command": ["mpirun", "app"], "resourceRequirements": vcpus}},
        {"targetNodes": "1:", "containerOverrides": {"resourceRequirements": vcpus}}]}
    assert "containerOverrides" not in body


@pytest.mark.parametrize(("field", "value", "named"), [
    ("command", "echo 'unclosed", "command"), ("environment", "NOEQUALS", "environment line 1"),
    ("arraySize", "x", "arrayProperties.size"), ("numNodes", "two", "numNodes"), ("timeout", "-1", "timeout"),
])
def test_a_bad_field_is_named(field: str, value: str, named: str) -> None:
    with pytest.raises(ClientError, match=named):
        submit_body({**BASE, field: value})


def test_a_link_signs_in_once_and_sessions_check_csrf() -> None:
    sessions = Sessions()
    alice = Caller(user="alice", role="user", via="console")
    token = sessions.create_link(alice)
    session = sessions.redeem(token)
    assert session is not None and session.caller == alice
    assert sessions.redeem(token) is None
    assert sessions.get(session.session_id) is session
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("forged") and not session.csrf_ok(None)
    sessions.end(session.session_id)
    assert sessions.get(session.session_id) is None
