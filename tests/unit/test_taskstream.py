"""node_agent/taskstream.py: framing, options, the tokens tasks prove themselves with; the 1-node job `run` submits."""

from __future__ import annotations

import socket

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.model.multinode import resolve_nodes
from node_agent import taskstream

DEFAULT_MNP = {"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [
    {"targetNodes": "0", "container": {"command": []}}, {"targetNodes": "1:", "container": {"command": []}}]}


def test_frames_split_a_stream_at_any_byte() -> None:
    data = taskstream.frame(b"O", b"hello\n") + taskstream.frame(b"X", b"3")
    frames = taskstream.Frames()
    got = [f for i in range(len(data)) for f in frames.feed(data[i:i + 1])]
    assert got == [(b"O", b"hello\n"), (b"X", b"3")]


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(ValueError):
        taskstream.Frames().feed(b"O" + (10 << 20).to_bytes(4, "big"))


def test_run_options_join_words_for_the_remote_shell_as_ssh_does() -> None:
    opts = taskstream._parse_run(["--nodes", "2", "--ntasks-per-node", "3", "--", "echo", "$NODE_RANK"])
    assert (opts["nodes"], opts["ntasks"], opts["line"]) == (2, 3, "echo $NODE_RANK")
    with pytest.raises(taskstream.Usage, match="--nodes must be a positive"):
        taskstream._parse_run(["--nodes", "0", "--", "true"])
    with pytest.raises(taskstream.Usage, match="no command"):
        taskstream._parse_run(["--nodes", "1"])


def test_attach_command_quotes_what_it_carries() -> None:
    line = taskstream.attach_command("10.0.0.1:5", "echo 'a b'", "node1", {"NODE_RANK": "0"}, (24, 80))
    assert line.startswith("NODE_RANK='0' exec \"${HPCBATCH_RUN:-.hpcbatch-run}\" --attach '10.0.0.1:5'")
    assert line.endswith("--pty 24x80 -- 'echo '\"'\"'a b'\"'\"''")


def test_exit_status_of_a_signal_is_128_plus_its_number() -> None:
    assert taskstream.exit_status(-2) == 130 and taskstream.exit_status(3) == 3


def test_a_one_node_job_on_the_default_multinode_definition_is_accepted() -> None:
    num, main, containers = resolve_nodes(DEFAULT_MNP, {"numNodes": 1})
    assert (num, main, len(containers)) == (1, 0, 1)
    with pytest.raises(ClientError, match="names nodes beyond"):
        resolve_nodes(DEFAULT_MNP, {"numNodes": 1, "nodePropertyOverrides": [{"targetNodes": "1:"}]})


def _hello(session: taskstream.Session, token: str, label: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", session.port))
    conn.sendall(taskstream.frame(b"H", token.encode() + b"\0" + label.encode()))
    return conn


def _serve_one(session: taskstream.Session) -> tuple[socket.socket, bool]:
    accepted = session.accept()
    return accepted, session.read(accepted, lambda *_: None)


def test_inside_a_job_the_task_is_told_a_nonce_and_proves_the_launch_secret() -> None:
    session = taskstream.Session("127.0.0.1", secret="launch-secret")
    told = session.env()[taskstream.TOKEN_VARIABLE]
    assert told == f"hmac:{session.nonce}" and session.token not in told
    stranger = _hello(session, "hmac:" + session.nonce, "node1")  # what a reader of `ps` knows
    assert _serve_one(session)[1] is False and session.seen == set()
    task = _hello(session, taskstream.job_token("launch-secret", session.nonce), "node1")
    assert _serve_one(session)[1] is True and session.seen == {"node1"}
    for conn in (stranger, task, session.listener):
        conn.close()


def test_a_second_connection_claiming_a_connected_task_ends_the_session() -> None:
    session = taskstream.Session("127.0.0.1")
    first = _hello(session, session.token, "main")
    assert _serve_one(session)[1] is True
    second = _hello(session, session.token, "main")
    with pytest.raises(taskstream.SessionClaimed, match="second connection claimed task main"):
        _serve_one(session)
    for conn in (first, second, session.listener):
        conn.close()
