"""/etc/hpcbatch/client.toml: the CLI finds the head in any shell (not only login shells)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcbatch.cli.main import cli
from hpcbatch.client import resolve_endpoint


@pytest.fixture
def client_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPCBATCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HPCBATCH_ENDPOINT", raising=False)
    path = tmp_path / "client.toml"
    monkeypatch.setenv("HPCBATCH_CLIENT_CONFIG", str(path))
    return path


def test_the_system_client_config_names_the_head_when_nothing_else_does(
    client_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_toml.write_text('endpoint = "unix:/run/hpcbatch/api.sock"\n')
    assert resolve_endpoint() == "unix:/run/hpcbatch/api.sock"
    monkeypatch.setenv("HPCBATCH_ENDPOINT", "http://other:8471")  # the environment still wins
    assert resolve_endpoint() == "http://other:8471"
    assert resolve_endpoint("http://arg:1") == "http://arg:1"


def test_without_any_endpoint_the_error_names_the_client_config(client_toml: Path) -> None:
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 4
    assert f"name it in {client_toml}" in result.output


def test_the_cli_reads_the_client_config(client_toml: Path) -> None:
    client_toml.write_text('endpoint = "http://127.0.0.1:1"\n')
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 4
    assert "http://127.0.0.1:1" in result.output
