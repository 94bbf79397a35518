"""The one operations table (hpcbatch.operations) against botocore's model, the API's routes,
validation, the roles and the Python client: every list of operations is read from it."""

from __future__ import annotations

import inspect
from typing import Any

import botocore.session
import pytest
from aiohttp import web

from hpcbatch.auth.policy import READ_ONLY, REQUIRED_ROLE, Caller, authorize
from hpcbatch.client import OPERATIONS as CLIENT_OPERATIONS
from hpcbatch.client import READ_ONLY_PATHS, Client
from hpcbatch.client_operations import OperationMethods
from hpcbatch.head.api import make_app
from hpcbatch.operations import OPERATIONS, by_name, method_name
from hpcbatch.validation import OPERATIONS as VALIDATED
from hpcbatch.validation import validate_request

MODEL = botocore.session.get_session().get_service_model("batch")
AWS_ROWS = [op for op in OPERATIONS if op.validated == "aws"]


def test_every_aws_row_is_at_botocores_method_and_path() -> None:
    for op in AWS_ROWS:
        http = MODEL.operation_model(op.name).http
        assert (op.method, op.path) == (http["method"], http["requestUri"]), op.name


def test_every_aws_operation_the_head_serves_is_in_the_table() -> None:
    from hpcbatch.head.service import BatchService

    served = {name for name in MODEL.operation_names if hasattr(BatchService, name)}
    assert served == {op.name for op in AWS_ROWS}


def test_hpcbatch_own_rows_are_not_aws_names_and_live_under_hpcbatch_v1() -> None:
    for op in OPERATIONS:
        if op.validated == "own":
            assert op.name not in MODEL.operation_names
            assert op.path == f"/hpcbatch/v1/{op.name.lower()}" and op.method == "POST"


def test_names_and_paths_are_unique() -> None:
    assert len({op.name for op in OPERATIONS}) == len(OPERATIONS)
    assert len({op.post for op in OPERATIONS}) == len(OPERATIONS)
    assert by_name("SubmitJob").post == "/v1/submitjob"
    with pytest.raises(KeyError):
        by_name("NoSuchOperation")


class _Service:
    """Stands in for BatchService while routes are built: each operation is looked up, not called."""

    engine: Any = None
    store: Any = None

    def __getattr__(self, name: str) -> Any:
        if name[:1].isupper():
            return lambda body, caller: {}
        raise AttributeError(name)


def _routes(app: web.Application) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}


def test_every_service_row_is_routed_at_its_path_and_post_twin() -> None:
    routes = _routes(make_app(_Service()))  # type: ignore[arg-type]
    for op in OPERATIONS:
        if op.served_by != "service":
            assert ("POST", op.post) not in routes, op.name  # its own handler mounts it
            continue
        assert ("POST", op.post) in routes, op.name
        if op.rest:
            assert (op.method, op.path) in routes, op.name


def test_a_standby_app_routes_only_the_operations_it_is_given() -> None:
    routes = _routes(make_app(_Service(), operations={"DescribeJobs", "TagResource"}))  # type: ignore[arg-type]
    assert {path for _, path in routes} == {"/v1/describejobs", "/v1/tags/{resourceArn}", "/hpcbatch/v1/tagresource"}


def test_every_aws_row_is_validated_against_its_botocore_shape() -> None:
    assert {op.name for op in AWS_ROWS} == VALIDATED
    for op in AWS_ROWS:
        with pytest.raises(Exception, match="Unknown field 'bogusField'"):
            validate_request(op.name, {"bogusField": 1})


def test_roles_and_reads_come_from_the_table() -> None:
    assert REQUIRED_ROLE == {op.name: op.role for op in OPERATIONS}
    assert frozenset(op.name for op in OPERATIONS if not op.write) == READ_ONLY
    user = Caller(user="u", role="user", via="socket")
    authorize(user, "SubmitJob")
    with pytest.raises(Exception, match="needs role admin"):
        authorize(user, "DrainNode")
    assert {op.post for op in OPERATIONS if not op.write} == READ_ONLY_PATHS


def test_the_client_has_a_method_and_an_async_twin_for_every_row() -> None:
    assert {method_name(op.name): op.post for op in OPERATIONS} == CLIENT_OPERATIONS
    for op in OPERATIONS:
        name = method_name(op.name)
        assert inspect.getdoc(getattr(Client, name)), name
        assert callable(getattr(Client, name + "_async")), name


def test_the_clients_aws_methods_take_botocores_request_members() -> None:
    import typing

    import hpcbatch.client_types as types

    for op in AWS_ROWS:
        request = getattr(types, f"{op.name}Request")
        assert set(typing.get_type_hints(request)) == set(MODEL.operation_model(op.name).input_shape.members), op.name
        signature = inspect.signature(getattr(OperationMethods, method_name(op.name)))
        assert str(signature.parameters["body"].annotation) == f"Unpack[{op.name}Request]", op.name
