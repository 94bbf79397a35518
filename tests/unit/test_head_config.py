"""The head config's checks: each mistake is refused with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.head.config import load_head_config


def _load(tmp_path: Path, body: str):
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n{body}\n')
    return load_head_config(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('durability = "sometimes"', "durability must be 'normal' or 'full'"),
        ('store = "mysql://x"', "store must be a postgresql:// URL"),
        ("lease_ttl_s = 0.5", "lease_ttl_s must be at least 1 second"),
        ("fence_after_s = -1", "fence_after_s must be >= 0 seconds"),
        ('tls_cert = "/c.pem"', "tls_cert and tls_key"),
        ('roles = {alice = "king"}', "roles: 'king' is not one of"),
        ("rate_limits = {flood = {per_second = 1}}", "rate_limits: 'flood' is not one of"),
        ("rate_limits = {submit = {per_second = -1}}", "rate_limits.submit: per_second must be >= 0"),
        ('container_host_paths = ["data"]', "container_host_paths: 'data' must be an absolute, normal path"),
        ('container_devices = ["/dev/../etc"]', "container_devices: '/dev/../etc' must be an absolute"),
        ("container_max_tmpfs_mib = -1", "container_max_tmpfs_mib must be >= 0"),
        ("container_ulimits = {nofiles = 5}", "container_ulimits: 'nofiles' is not one of"),
        ("container_ulimits = {nofile = -2}", "container_ulimits.nofile must be -1 (any)"),
        ('auto_accept_nodes = ["bad name!"]', "auto_accept_nodes: 'bad name!' is not a valid node name"),
        ('api_socket = "/' + "s" * 120 + '"', "Unix socket paths stop at 107"),
        ("nonsense = 1", "unknown field `nonsense`"),
    ],
)
def test_a_bad_key_is_refused_naming_it(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ClientError, match="head config .*") as caught:
        _load(tmp_path, body)
    assert message in str(caught.value)


def test_the_first_problem_in_file_order_is_the_one_reported(tmp_path: Path) -> None:
    with pytest.raises(ClientError) as caught:
        _load(tmp_path, 'durability = "x"\nauto_accept_nodes = ["bad name!"]')
    assert "durability" in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="does not exist"):
        load_head_config(tmp_path / "nope.toml")


def test_a_good_file_loads_with_the_store_override(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert config.store_target == str(tmp_path / "hpcbatch.db")
    path = tmp_path / "head.toml"
    assert load_head_config(path, store="/x.db").store == "/x.db"
