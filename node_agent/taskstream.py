"""``hpcbatch run`` inside a job (srun's part), and the task-side end of its streams.

Two halves, both in this one file because the agent copies it into every multi-node job's
work dir (``.hpcbatch-run``, ``$HPCBATCH_RUN``), where it runs as the job's owner: standard
library only, importable by any Python 3.7+.

* ``--run [--nodes N] [--ntasks-per-node K] [--pty] -- COMMAND...`` (the *client*) listens on
  a TCP port of its node, then asks the node's agent, through the launcher bridge (the same
  Unix socket and secret ``mpirun`` uses), to start ``--attach`` on each chosen node of the
  job. Output comes back as frames and is printed with the node's name in front of every
  line (``node3: ...``, as ``srun --label``); the exit status is the worst of the tasks'.
  Ctrl-C (and SIGTERM/SIGHUP) is forwarded to every task.
* ``--attach HOST:PORT [--label L] [--pty ROWSxCOLS] -- LINE`` (the *task*) runs on the
  target node inside the job's attempt there (same owner, cgroup, environment), started by
  ``--run`` through the bridge, by ``hpcbatch alloc`` as a job's main command, or by
  ``hpcbatch run --pty --jobid`` through the head (StartJobTask). It connects back to the
  client and proves itself with a token. Inside a job the command line carries only a nonce (``hmac:NONCE`` in
  ``HPCBATCH_ATTACH_TOKEN``), and the token is HMAC(the job's launch secret, NONCE), which
  only the job's own processes can compute; from outside a job (alloc, ``--jobid``) the token
  itself travels, and the client takes one connection per task: a second one claiming a task
  that already connected ends the session (someone raced the real task) rather than feed it.
  It runs ``/bin/sh -c LINE`` (in a pseudo-terminal with ``--pty``), and streams. If the
  client's connection drops, the task's process group gets SIGHUP then SIGKILL: nothing
  runs on that nobody can see or stop. Its own exit code is the command's (128+N for signal N).

Like ssh, the command's words are joined by spaces for the remote shell, so
``hpcbatch run -- echo '$NODE_RANK'`` prints each node's own rank.

Frames, both ways: one type byte, a 4-byte big-endian length, the payload.
task -> client: H hello (token NUL label), O output, E stderr, X exit code (decimal).
client -> task: I stdin bytes, D stdin closed, S signal number, W "rows cols".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

_HEADER = struct.Struct("!cI")
_FRAME_LIMIT = 1 << 20
_CHUNK = 65536
CONNECT_TIMEOUT_S = 20.0
LAUNCH_FAILURE = 255
TOKEN_VARIABLE = "HPCBATCH_ATTACH_TOKEN"


class Usage(Exception):
    """Bad arguments: the message says which."""


# ------------------------------------------------------------------ framing
def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


class Frames:
    """Splits a byte stream into (kind, payload) frames."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list:
        self.buffer += data
        out = []
        while len(self.buffer) >= _HEADER.size:
            kind, size = _HEADER.unpack_from(self.buffer)
            if size > _FRAME_LIMIT:
                raise ValueError("frame too large")
            if len(self.buffer) < _HEADER.size + size:
                break
            out.append((kind, self.buffer[_HEADER.size : _HEADER.size + size]))
            self.buffer = self.buffer[_HEADER.size + size :]
        return out


def exit_status(code: int) -> int:
    """A Popen returncode as a shell would report it (128+N for signal N)."""
    return 128 - code if code < 0 else code


# ------------------------------------------------------------------ the task side
def attach(address: str, line: str, label: str, pty_size: tuple | None) -> int:
    """Connect back to the client at ``address`` (host:port), run ``line``, stream, return its code."""
    token = os.environ.pop(TOKEN_VARIABLE, "")
    if token.startswith("hmac:"):  # inside a job: prove we hold its launch secret
        token = job_token(os.environ.get("HPCBATCH_LAUNCH_SECRET", ""), token[len("hmac:"):])
    host, _, port = address.rpartition(":")
    try:
        conn = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"hpcbatch run: {label} cannot reach the client at {address}: {exc}\n")
        return LAUNCH_FAILURE
    conn.settimeout(None)
    conn.sendall(frame(b"H", token.encode() + b"\0" + label.encode()))
    relay = _TaskRelay(conn, *_spawn_task(line, pty_size))
    relay.pump()
    return relay.finish()


def _spawn_task(line: str, pty_size: tuple | None) -> tuple:
    """Start ``/bin/sh -c line`` in its own session: (child, pty master or None, {fd: frame kind})."""
    if pty_size is None:
        child = subprocess.Popen(["/bin/sh", "-c", line], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        assert child.stdout is not None and child.stderr is not None
        return child, None, {child.stdout.fileno(): b"O", child.stderr.fileno(): b"E"}
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    _set_size(master, pty_size)

    def controlling_tty() -> None:  # after setsid (start_new_session): the pty is ours
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ)
    env.setdefault("TERM", "xterm")
    child = subprocess.Popen(["/bin/sh", "-c", line], stdin=slave, stdout=slave, stderr=slave,
                             start_new_session=True, preexec_fn=controlling_tty, env=env, close_fds=True)
    os.close(slave)
    return child, master, {master: b"O"}


class _TaskRelay:
    """The task's end: its output to the client as frames, the client's frames to it."""

    def __init__(self, conn: socket.socket, child: subprocess.Popen, master: int | None, outputs: dict) -> None:
        self.conn, self.child, self.master, self.outputs = conn, child, master, outputs
        self.sel = selectors.DefaultSelector()
        for fd in outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        self.sel.register(conn, selectors.EVENT_READ)
        self.frames = Frames()
        self.client_gone = False
        self.drain_until: float | None = None

    def pump(self) -> None:
        """Relay until the command's output is closed (or drained a moment after it ended)."""
        while self.outputs and not self._drained():
            for key, _ in self.sel.select(timeout=0.2):
                if key.fileobj is self.conn:
                    self._from_client()
                else:
                    self._from_task(key.fd)

    def _drained(self) -> bool:
        if self.drain_until is None and self.child.poll() is not None:
            # The command ended: what it left in its group (a background `sleep` holding
            # the pipe) goes too, and what is still queued is read for a moment more.
            _signal_group(self.child.pid, signal.SIGKILL)
            self.drain_until = time.monotonic() + 2.0
            return False
        return self.drain_until is not None and time.monotonic() > self.drain_until

    def _from_client(self) -> None:
        try:
            data = self.conn.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            # The client went away: the task must not run on unseen (ssh -t does the same).
            self.client_gone = True
            self.sel.unregister(self.conn)
            _signal_group(self.child.pid, signal.SIGHUP)
            _signal_group(self.child.pid, signal.SIGTERM)
            return
        for kind, payload in self.frames.feed(data):
            self._obey(kind, payload)

    def _obey(self, kind: bytes, payload: bytes) -> None:
        if kind == b"S":
            _signal_group(self.child.pid, int(payload))
        elif self.master is None:
            return  # stdin and the window size are a terminal's
        elif kind == b"I":
            _write_all(self.master, payload)
        elif kind == b"D":
            _write_all(self.master, b"\x04")
        elif kind == b"W":
            rows, cols = payload.split()
            _set_size(self.master, (int(rows), int(cols)))

    def _from_task(self, fd: int) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's last holder closed it
            data = b""
        if not data:
            self.sel.unregister(fd)
            del self.outputs[fd]
            return
        if self.client_gone:
            return
        try:
            self.conn.sendall(frame(self.outputs[fd], data))
        except OSError:
            self.client_gone = True
            _signal_group(self.child.pid, signal.SIGHUP)

    def finish(self) -> int:
        """Reap the command, tell the client its code, and wait until the client has it all."""
        code = exit_status(self.child.wait())
        _signal_group(self.child.pid, signal.SIGKILL)  # what it left in its group
        if self.master is not None:
            os.close(self.master)
        if not self.client_gone:
            try:
                self.conn.sendall(frame(b"X", str(code).encode()))
                self.conn.shutdown(socket.SHUT_WR)
                self.conn.settimeout(5.0)
                while self.conn.recv(_CHUNK):  # until the client has read everything and closed
                    pass
            except OSError:
                pass
        self.conn.close()
        return code


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            import select

            select.select([], [fd], [], 1.0)


def _set_size(fd: int, size: tuple) -> None:
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


# ------------------------------------------------------------------ the client side
def job_token(secret: str, nonce: str) -> str:
    """The token a task of a job presents: HMAC-SHA256(the job's launch secret, nonce)."""
    return hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()


class SessionClaimed(Exception):
    """A second connection claimed a task that had connected already."""


class Session:
    """The client's listening socket and the tasks that connected back to it."""

    def __init__(self, address: str = "0.0.0.0", secret: str = "") -> None:
        """Listen on ``address`` (the one the tasks are told), or on all if it is not ours.

        With the job's launch secret the tasks are told a nonce, not the token (``env``).
        """
        self.nonce = os.urandom(16).hex()
        self.secret = secret
        self.token = job_token(secret, self.nonce) if secret else os.urandom(16).hex()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.listener.bind((address, 0))
        except OSError:  # behind NAT, or a name: listen everywhere; the token still decides
            self.listener.bind(("0.0.0.0", 0))
        self.address = address
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.conns: dict = {}  # socket -> [label or None until its hello, Frames]
        self.codes: dict = {}  # label -> exit code from its X frame
        self.seen: set = set()  # labels whose task connected
        self.interrupted = None  # the last signal forwarded (tasks connecting later get it too)
        self.partial: dict = {}  # (label, kind) -> bytes of an unfinished line
        self.lock = threading.Lock()

    def env(self) -> dict:
        return {TOKEN_VARIABLE: f"hmac:{self.nonce}" if self.secret else self.token}

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        self.conns[conn] = [None, Frames()]
        return conn

    def accept_pending(self) -> list:
        """Every connection already waiting (tasks that connected and ended meanwhile)."""
        self.listener.setblocking(False)
        found = []
        try:
            while True:
                found.append(self.accept())
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.listener.setblocking(True)
        return found

    def read(self, conn: socket.socket, on_output) -> bool:
        """Serve one readable task connection; False when it has closed."""
        state = self.conns[conn]
        try:
            data = conn.recv(_CHUNK)
        except OSError:
            data = b""
        try:
            frames = state[1].feed(data) if data else []
        except ValueError:
            frames, data = [], b""
        for kind, payload in frames:
            if state[0] is None:
                token, _, label = payload.partition(b"\0")
                if kind != b"H" or not hmac.compare_digest(token, self.token.encode()):
                    data = b""  # a stranger: drop it
                    break
                if label.decode(errors="replace") in self.seen:
                    conn.close()
                    del self.conns[conn]
                    raise SessionClaimed(f"a second connection claimed task {label.decode(errors='replace')}")
                state[0] = label.decode(errors="replace")
                self.seen.add(state[0])
                if self.interrupted is not None:  # Ctrl-C came before this task connected
                    conn.sendall(frame(b"S", str(self.interrupted).encode()))
            elif kind == b"X":
                self.codes[state[0]] = int(payload)
            elif kind in (b"O", b"E"):
                on_output(state[0], kind, payload)
        if not data:
            conn.close()
            del self.conns[conn]
            return False
        return True

    def send_all(self, payload: bytes) -> None:
        for conn, state in list(self.conns.items()):
            if state[0] is not None:
                try:
                    conn.sendall(payload)
                except OSError:
                    pass


def labelled_writer(session: Session):
    """Print each complete line as ``label: line`` (srun --label), stderr lines to stderr."""

    def write(label: str, kind: bytes, data: bytes) -> None:
        key = (label, kind)
        text = session.partial.pop(key, b"") + data
        lines = text.split(b"\n")
        if lines[-1]:
            session.partial[key] = lines[-1]
        out = sys.stdout.buffer if kind == b"O" else sys.stderr.buffer
        for line in lines[:-1]:
            out.write(label.encode() + b": " + line + b"\n")
        out.flush()

    return write


def flush_partials(session: Session) -> None:
    for (label, kind), rest in sorted(session.partial.items()):
        out = sys.stdout.buffer if kind == b"O" else sys.stderr.buffer
        out.write(label.encode() + b": " + rest + b"\n")
        out.flush()
    session.partial.clear()


def _bridge_launch(sock_path: str, secret: str, host: str, command: str) -> tuple:
    """One launch through the agent's bridge: (exit_code or None, error or None), when it ends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
        sock.sendall(json.dumps({"secret": secret, "host": host, "command": command}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                return None, "the node agent closed the connection"
            data += chunk
        reply = json.loads(data)
        return reply.get("exit_code"), reply.get("error")
    except (OSError, ValueError) as exc:
        return None, f"cannot reach the node agent at {sock_path}: {exc}"
    finally:
        sock.close()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def attach_command(address: str, line: str, label: str, env: dict, pty_size: tuple | None = None) -> str:
    """The shell line that starts ``--attach`` on a node (its own $HPCBATCH_RUN)."""
    assigns = " ".join(f"{k}={_quote(v)}" for k, v in env.items())
    size = f" --pty {pty_size[0]}x{pty_size[1]}" if pty_size else ""
    return (f'{assigns} exec "${{HPCBATCH_RUN:-.hpcbatch-run}}" --attach {_quote(address)} --label {_quote(label)}'
            f"{size} -- {_quote(line)}")


def _parse_run(args: list) -> dict:
    opts = {"nodes": None, "ntasks": 1, "pty": False, "node": None}
    i = 0
    while i < len(args) and args[i] != "--":
        arg = args[i]
        if arg == "--pty":
            opts["pty"] = True
            i += 1
            continue
        if arg not in ("--nodes", "--ntasks-per-node", "--node") or i + 1 >= len(args):
            raise Usage(f"unknown option {arg!r}")
        value = args[i + 1]
        if arg == "--node":
            opts["node"] = value
        else:
            try:
                number = int(value)
            except ValueError:
                number = 0
            if number < 1:
                raise Usage(f"{arg} must be a positive whole number, not {value!r}")
            opts["nodes" if arg == "--nodes" else "ntasks"] = number
        i += 2
    command = args[i + 1 :]
    if not command:
        raise Usage("no command given after --")
    opts["line"] = " ".join(command)
    return opts


def run_in_job(args: list) -> int:
    """``hpcbatch run`` inside a job: the command on its nodes, labelled output, the worst exit."""
    try:
        opts = _parse_run(args)
    except Usage as exc:
        sys.stderr.write(f"hpcbatch run: {exc}\n")
        return 2
    sock_path = os.environ.get("HPCBATCH_LAUNCH_SOCKET", "")
    secret = os.environ.get("HPCBATCH_LAUNCH_SECRET", "")
    hosts = [h for h in os.environ.get("HPCBATCH_NODES", "").split(",") if h]
    if not sock_path or not secret or not hosts:
        sys.stderr.write("hpcbatch run: not inside an hpcbatch job (HPCBATCH_LAUNCH_SOCKET/SECRET/NODES unset)\n")
        return 2
    if opts["node"] is not None:
        if opts["node"] not in hosts:
            sys.stderr.write(f"hpcbatch run: --node {opts['node']} is not one of the job's nodes ({','.join(hosts)})\n")
            return 2
        chosen = [opts["node"]]
    elif opts["pty"]:
        chosen = hosts[:1]
    else:
        count = opts["nodes"] or len(hosts)
        if count > len(hosts):
            sys.stderr.write(f"hpcbatch run: --nodes {count}: the job holds only {len(hosts)} nodes\n")
            return 2
        chosen = hosts[:count]
    session = Session(os.environ.get("HPCBATCH_NODE_ADDRESS") or "127.0.0.1", secret)
    address = f"{session.address}:{session.port}"
    tasks = []
    for rank, host in enumerate(chosen):
        for local in range(1 if opts["pty"] else opts["ntasks"]):
            label = host if opts["ntasks"] == 1 or opts["pty"] else f"{host}.{local}"
            env = {**session.env(), "NNODES": str(len(chosen)), "NODE_RANK": str(rank),
                   "HPCBATCH_LOCAL_TASK": str(local)}
            if opts["pty"]:
                env["TERM"] = os.environ.get("TERM") or "xterm"
            tasks.append((host, label, attach_command(address, opts["line"], label, env,
                                                      _terminal_size() if opts["pty"] else None)))
    if opts["pty"]:
        return pty_client(session, lambda: _bridge_launch(sock_path, secret, tasks[0][0], tasks[0][2]))
    return stream_client(session, [(label, (lambda h=host, c=cmd: _bridge_launch(sock_path, secret, h, c)))
                                   for host, label, cmd in tasks])


def stream_client(session: Session, launches: list) -> int:
    """Run every launch (label, start() -> (code, error)) at once; print labelled output; worst code."""
    results: dict = {}
    done = threading.Event()
    wake_r, wake_w = socket.socketpair()

    def one(label: str, start) -> None:
        result = start()
        with session.lock:
            results[label] = result
            if len(results) == len(launches):
                done.set()
        wake_w.send(b"x")

    threads = [threading.Thread(target=one, args=launch, daemon=True) for launch in launches]
    for t in threads:
        t.start()
    _forward_interrupts(session)
    write = labelled_writer(session)
    try:
        _serve_tasks(session, wake_r, done, write)
    except SessionClaimed as exc:
        session.send_all(frame(b"S", str(int(signal.SIGKILL)).encode()))
        flush_partials(session)
        sys.stderr.write(f"hpcbatch run: {exc}: every task killed\n")
        return LAUNCH_FAILURE
    flush_partials(session)
    return max([_task_code(session, label, results[label]) for label, _ in launches], default=0)


def _forward_interrupts(session: Session) -> None:
    """Ctrl-C, SIGTERM and SIGHUP go to every task; a second Ctrl-C kills (srun's habit)."""
    interrupts = []

    def forward(signum: int, _frame: object) -> None:
        interrupts.append(signum)
        sig = signal.SIGKILL if interrupts.count(signal.SIGINT) > 1 else signum
        session.interrupted = int(sig)
        session.send_all(frame(b"S", str(int(sig)).encode()))

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)


def _serve_tasks(session: Session, wake_r: socket.socket, done: threading.Event, write) -> None:
    """Accept the tasks and print what they send until every launch has ended."""
    sel = selectors.DefaultSelector()
    sel.register(session.listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while not done.is_set():
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is session.listener:
                sel.register(session.accept(), selectors.EVENT_READ)
            elif key.fileobj is wake_r:
                wake_r.recv(64)
            elif not session.read(key.fileobj, write):
                sel.unregister(key.fileobj)
    # Every task ended: what they sent is queued already; read it to the end.
    session.accept_pending()
    for conn in list(session.conns):
        conn.setblocking(True)
        conn.settimeout(10.0)
        while conn in session.conns and session.read(conn, write):
            pass


def _task_code(session: Session, label: str, launched: tuple) -> int:
    """A task's exit code: its own X frame's, else its launch's; a launch failure says why."""
    code, error = launched
    code = session.codes.get(label, code)
    if code is None:
        sys.stderr.write(f"hpcbatch run: {label}: {error or 'ended without an exit code'}\n")
        return LAUNCH_FAILURE
    if label not in session.seen:
        sys.stderr.write(f"hpcbatch run: {label}: its task never connected back to {session.address}:"
                         f"{session.port} (exit {code}; its reason is in the job's log on that node)\n")
    return code


def _terminal_size() -> tuple:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


def pty_client(session: Session, start) -> int:
    """One task in a pseudo-terminal: raw keystrokes in, its screen out, resizes forwarded."""
    result: list = []
    wake_r, wake_w = socket.socketpair()

    def launch() -> None:
        result.append(start())
        wake_w.send(b"x")

    threading.Thread(target=launch, daemon=True).start()
    return pty_loop(session, wake_r, lambda: result[0] if result else None)


def pty_loop(session: Session, wake_r: socket.socket | None, ended) -> int:
    """Relay between this terminal and the one task that connects back; its exit code.

    ``ended()`` is the launch's (code, error) once the task is known to be over, else None.
    """
    import termios
    import tty

    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    _forward_window_and_hangups(session)
    terminal = _Terminal(session, wake_r, stdin)
    try:
        if saved is not None:
            tty.setraw(stdin, termios.TCSANOW)  # keep what was typed ahead
        terminal.relay(ended)
    except SessionClaimed as exc:
        session.send_all(frame(b"S", str(int(signal.SIGKILL)).encode()))
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            saved = None
        sys.stderr.write(f"hpcbatch run: {exc}: session ended\n")
        return LAUNCH_FAILURE
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    return _pty_code(session, ended())


def _forward_window_and_hangups(session: Session) -> None:
    """Resizes of this terminal, and SIGHUP/SIGTERM, go to the task."""

    def resized(_signum: int, _frame: object) -> None:
        session.send_all(frame(b"W", "{} {}".format(*_terminal_size()).encode()))

    def hangup(signum: int, _frame: object) -> None:
        session.send_all(frame(b"S", str(int(signum)).encode()))

    signal.signal(signal.SIGWINCH, resized)
    signal.signal(signal.SIGHUP, hangup)
    signal.signal(signal.SIGTERM, hangup)


class _Terminal:
    """This terminal's end of a ``--pty`` session: keystrokes out, the task's screen in."""

    def __init__(self, session: Session, wake_r: socket.socket | None, stdin: int) -> None:
        self.session, self.wake_r, self.stdin = session, wake_r, stdin
        self.sel = selectors.DefaultSelector()
        self.sel.register(session.listener, selectors.EVENT_READ)
        if wake_r is not None:
            self.sel.register(wake_r, selectors.EVENT_READ)
        self.out = sys.stdout.buffer

    def relay(self, ended) -> None:
        """Until the task's connection closes, or its launch failed before it connected."""
        over = False
        while not over:
            if not self.session.seen and ended() is not None:
                return  # the launch failed before its task connected
            for key, _ in self.sel.select(timeout=1.0):
                over = self._serve(key.fileobj) or over

    def _serve(self, fileobj) -> bool:
        """One readable source; True when it was the task's connection, now closed."""
        if fileobj is self.session.listener:
            self.sel.register(self.session.accept(), selectors.EVENT_READ)
        elif fileobj is self.wake_r:
            fileobj.recv(64)
        elif fileobj == self.stdin:
            data = os.read(self.stdin, _CHUNK)
            self.session.send_all(frame(b"I", data) if data else frame(b"D"))
            if not data:
                self.sel.unregister(self.stdin)
        else:
            return self._from_task(fileobj)
        return False

    def _from_task(self, conn: socket.socket) -> bool:
        state = self.session.conns[conn]
        had_task = bool(self.session.seen)
        closed = not self.session.read(conn, self._show)
        if closed:
            self.sel.unregister(conn)
        if self.session.seen and not had_task:  # the task is here: keystrokes go to it now
            self.sel.register(self.stdin, selectors.EVENT_READ)
        return closed and state[0] is not None  # the task's connection, not a stranger's

    def _show(self, _label: str, _kind: bytes, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()


def _pty_code(session: Session, launched: tuple | None) -> int:
    """The task's exit code, else its launch's; a launch failure says why."""
    if session.codes:
        return next(iter(session.codes.values()))
    if launched is not None and launched[0] is None:
        sys.stderr.write(f"hpcbatch run: {launched[1]}\n")
    return LAUNCH_FAILURE if launched is None or launched[0] is None else launched[0]


# ------------------------------------------------------------------ entry point
def main(argv: list | None = None) -> int:
    """``--run ...`` (the client, inside a job) or ``--attach ...`` (a task)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--run"]:
        return run_in_job(args[1:])
    if args[:1] == ["--attach"] and "--" in args:
        cut = args.index("--")
        head, line = args[1:cut], " ".join(args[cut + 1 :])
        address, label, pty_size = head[0] if head else "", "task", None
        i = 1
        while i + 1 < len(head) + 1 and i < len(head):
            if head[i] == "--label":
                label = head[i + 1]
            elif head[i] == "--pty":
                rows, _, cols = head[i + 1].partition("x")
                pty_size = (int(rows), int(cols))
            i += 2
        return attach(address, line, label, pty_size)
    sys.stderr.write("usage: hpcbatch-run --run [--nodes N] [--ntasks-per-node K] [--pty] [--node NAME] -- COMMAND...\n"
                     "       hpcbatch-run --attach HOST:PORT [--label L] [--pty ROWSxCOLS] -- LINE\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
