"""Daemon events: one JSON object per line, to stdout and to every client of a UNIX socket.

Every event has `event` (wake, partial, final, error, device, model_reloaded, ready, status,
client_dropped, stopped) and `t`, a `time.monotonic()` timestamp, so consumers can measure
latencies across processes on the same board. Socket clients may also send one command per line
(`reload`, `status`); the bus hands them to the daemon through `commands`.

No client, and no reader of stdout, can stall or bloat the daemon:
- each client has its own writer thread and an outgoing buffer of CLIENT_BUFFER_BYTES; `emit()`
  only appends to it and never waits. A client whose buffer is full (it stopped reading) is
  disconnected and `client_dropped` (reason "slow reader") says so;
- stdout is written the same way: a stalled reader (`paraedge run | sleep`) loses events from
  stdout while its buffer is full, and a reader that left (`| head`) turns stdout off. Before, the
  daemon blocked in write() (SIGTERM too), or died of BrokenPipeError;
- a command line longer than MAX_COMMAND_BYTES, or more than MAX_PENDING_COMMANDS of one client's
  commands waiting, disconnects that client the same way (reason "command line too long" / "too
  many commands"), with a last line telling it why; such input is neither kept nor echoed. The
  replies to a command (`status`, or the error of an unknown one) go to its sender only;
- at most MAX_CLIENTS clients; the accept loop outlives running out of descriptors (EMFILE);
- `history` keeps only the last HISTORY_EVENTS events (tests and `make demo` read it).
A second daemon refuses a socket path that a live one is listening on; only a stale socket
(nothing answers) is replaced.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import logging
import os
import queue
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass

from edge.errors import ParaEdgeError

log = logging.getLogger("paraedge.events")

MAX_COMMAND_BYTES = 4096  # commands are words like `reload`; anything longer is abuse or a wrong client
MAX_PENDING_COMMANDS = 64  # per client; the main loop drains commands every ~0.1 s
MAX_CLIENTS = 256  # each costs 2 threads and a descriptor; a board has a handful of consumers
CLIENT_BUFFER_BYTES = 1 << 20  # ~250 utterances of events a client may fall behind before it is dropped
HISTORY_EVENTS = 1000  # ~50 utterances; a daemon runs for months, so history must not grow with it
CLOSE_FLUSH_S = 2.0  # how long close() lets clients read what is still buffered for them
SUN_PATH_MAX = 107  # bytes in a UNIX socket path (sun_path is 108 bytes, NUL included)


@dataclass(frozen=True)
class Command:
    text: str
    client: int | None = None  # the socket client that sent it (replies go to it); None: the daemon's own


class _Writer:
    """A bounded outgoing buffer drained by its own thread: whoever reads slowly only hurts itself."""

    name = "events-writer"

    def __init__(self):
        self._pending: collections.deque[bytes] = collections.deque()
        self._bytes = 0  # queued, or being sent
        self._closing = False  # no more data: the writer exits once the buffer is empty
        self._cond = threading.Condition()
        self.writer = threading.Thread(target=self._write, name=self.name, daemon=True)
        self.writer.start()

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def hang_up(self) -> None:
        with self._cond:
            self._closing = True
            self._pending.clear()
            self._cond.notify()

    def offer(self, data: bytes) -> bool:
        """Queue data without waiting; False when the buffer is full (the client stopped reading)."""
        with self._cond:
            if self._closing:
                return True
            if self._pending and self._bytes + len(data) > CLIENT_BUFFER_BYTES:
                return False
            self._pending.append(data)
            self._bytes += len(data)
            self._cond.notify()
        return True

    def _next(self) -> bytes | None:
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            return self._pending.popleft() if self._pending else None

    def _write(self) -> None:
        while (data := self._next()) is not None:
            try:
                self.send(data)
            except (OSError, ValueError) as exc:  # the reader went away (ValueError: a closed file object)
                self.lost(exc)
                return
            with self._cond:
                self._bytes -= len(data)

    def lost(self, exc: Exception) -> None:
        self.hang_up()

    def finish(self, timeout: float) -> None:
        """Let the writer send what is buffered (up to timeout), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self.writer.join(max(timeout, 0.0))
        self.hang_up()


class _StdoutWriter(_Writer):
    """stdout, written like a socket client: `paraedge run | sleep 999` blocked the daemon in
    write() and `| head` killed it with BrokenPipeError. A full buffer loses events from stdout
    only (counted, logged once per stall); a reader that left turns stdout off."""

    name = "events-stdout"

    def __init__(self):
        self.dropped = 0
        self.gone = False
        super().__init__()

    def send(self, data: bytes) -> None:
        out = sys.stdout  # looked up per write: tests and embedders may replace it
        try:
            fd = out.fileno()
        except (AttributeError, ValueError, OSError):  # an in-memory stream
            out.write(data.decode("utf-8"))
            out.flush()
            return
        # os.write, not the file object: a write blocked on a stalled reader then holds no lock of
        # sys.stdout's, which the interpreter's exit would wait on (a fatal error with daemon threads)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def lost(self, exc: Exception) -> None:
        self.gone = True
        self.hang_up()
        if getattr(exc, "errno", None) == errno.EPIPE:  # so the interpreter's exit flush does not raise it again
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        log.warning("stdout closed (%s): events go to socket clients only from now on", getattr(exc, "strerror", None) or exc)

    def take(self, data: bytes) -> None:
        try:
            sys.stdout.flush()  # what was printed before an event stays before it (nothing, in the daemon)
        except (OSError, ValueError):
            pass
        if not self.gone and not self.offer(data):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("stdout is not being read: %d event(s) not written to it so far", self.dropped)


class _Client(_Writer):
    """One socket client: its writer thread (see _Writer) and a reader thread for its commands."""

    _ids = itertools.count(1)

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.id = next(self._ids)
        self.name = f"events-client-{self.id}"
        self.commands = 0  # of its commands queued and not yet run (MAX_PENDING_COMMANDS)
        self.commands_done = threading.Condition()
        super().__init__()

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def hang_up(self) -> None:
        """Disconnect now. shutdown() (not close) wakes a writer blocked in sendall and the reader in recv."""
        super().hang_up()
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def last_words(self, data: bytes, timeout: float = 0.5) -> None:
        """Replace what is buffered by `data` (why it is being dropped), send it (up to timeout), disconnect."""
        with self._cond:
            self._pending.clear()
            self._pending.append(data)
            self._cond.notify()
        self.finish(timeout)

    def close(self) -> None:
        """Release the descriptor; only the reader thread calls this, once both threads are done with it."""
        self.hang_up()
        self.writer.join(1.0)
        try:
            self.conn.close()
        except OSError:
            pass


class EventBus:
    def __init__(self, stdout=True, socket_path: str | None = None):
        self.stdout = stdout
        self.socket_path = socket_path
        self.commands: queue.Queue[Command] = queue.Queue()  # bounded per client (MAX_PENDING_COMMANDS)
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY_EVENTS)
        self._stdout = _StdoutWriter() if stdout else None
        self._clients: list[_Client] = []
        self._lock = threading.Lock()  # guards _clients
        self._emit_lock = threading.Lock()  # one event at a time: same order on stdout, history and sockets
        self._server: socket.socket | None = None
        if socket_path:
            self._listen(socket_path)

    # -- socket ------------------------------------------------------------------------------
    def _listen(self, path: str) -> None:
        _check_path_length(path)
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise ParaEdgeError(f"socket path {path} exists and is not a socket; refusing to replace it")
            _refuse_if_live(path)
            os.unlink(path)  # a stale socket from a previous run
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600 from the start: no window where others could connect
        try:
            srv.bind(path)
        except OSError as exc:
            srv.close()
            raise ParaEdgeError(f"cannot create event socket {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), name="events-accept", daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        pause = 0.05
        while self._server is srv:
            try:
                conn, _ = srv.accept()
            except OSError as exc:
                if self._server is not srv:
                    return  # close()
                # out of descriptors (EMFILE: a burst of clients) or memory: this thread ended here, and
                # no client could ever connect again; wait for some to leave instead
                log.warning("event socket: cannot accept a client (%s); retrying", exc.strerror or exc)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            with self._lock:
                full = len(self._clients) >= MAX_CLIENTS
            if full:
                try:
                    conn.sendall(_line("error", what="client", message=f"too many clients ({MAX_CLIENTS}); try later"))
                except OSError:
                    pass
                conn.close()
                continue
            client = _Client(conn)
            with self._lock:
                self._clients.append(client)
            threading.Thread(target=self._read_commands, args=(client,), name=f"events-client-{client.id}-reader",
                             daemon=True).start()

    def _read_commands(self, client: _Client) -> None:
        buf = b""
        try:
            while True:
                try:
                    data = client.conn.recv(4096)
                except OSError:
                    data = b""
                if not data:  # end of its input: a last line without a newline is still a command
                    reason = self._take_commands(client, [buf], b"") if buf else None
                    if reason:
                        self._drop(client, reason)
                    else:
                        self._answer_then_close(client)
                    return
                *lines, buf = (buf + data).split(b"\n")
                reason = self._take_commands(client, lines, buf)
                if reason:
                    self._drop(client, reason)
                    return
        finally:
            self._remove(client)
            client.close()

    def _answer_then_close(self, client: _Client, timeout: float = 2.0) -> None:
        """A client that half-closed after `status` (nc -N) was hung up on before its reply: wait for
        its commands to run (up to timeout), then for the replies to be sent."""
        deadline = time.monotonic() + timeout
        with client.commands_done:
            while client.commands and time.monotonic() < deadline:
                client.commands_done.wait(deadline - time.monotonic())
        client.finish(deadline - time.monotonic())

    def _take_commands(self, client: _Client, lines: list[bytes], rest: bytes) -> str | None:
        """Queue complete command lines; the reason to drop the client, if it sent too much."""
        for line in lines:
            if len(line) > MAX_COMMAND_BYTES:
                return "command line too long"
            cmd = line.decode("utf-8", "replace").strip()
            if cmd:
                with client.commands_done:
                    if client.commands >= MAX_PENDING_COMMANDS:  # its own limit: a flood drops the flooder
                        return "too many commands"
                    client.commands += 1
                self.commands.put(Command(cmd, client.id))
        return "command line too long" if len(rest) > MAX_COMMAND_BYTES else None

    def take_command(self) -> Command | None:
        """The next command waiting, or None; counts it off its sender's limit."""
        try:
            cmd = self.commands.get_nowait()
        except queue.Empty:
            return None
        client = self._client(cmd.client)
        if client is not None:
            with client.commands_done:
                client.commands -= 1
                client.commands_done.notify_all()
        return cmd

    def _client(self, client_id: int | None) -> _Client | None:
        with self._lock:
            return next((c for c in self._clients if c.id == client_id), None)

    def _remove(self, client: _Client) -> bool:
        with self._lock:
            if client not in self._clients:
                return False
            self._clients.remove(client)
        return True

    def _drop(self, client: _Client, reason: str) -> None:
        """Disconnect a misbehaving client and say so (once)."""
        first = self._remove(client)  # before hang_up: its reader thread removes it on waking, silently
        if reason == "slow reader":
            client.hang_up()  # it reads nothing: a last line would only wait
        else:
            client.last_words(_line("client_dropped", client=client.id, reason=reason))
        if first:
            log.warning("events client %d dropped: %s", client.id, reason)
            self.emit("client_dropped", client=client.id, reason=reason)

    # -- emit --------------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> dict:
        """Publish one event. Never waits on stdout or a socket client (see the module docstring)."""
        with self._emit_lock:
            record = _record(event, **fields)
            data = _encode(record)
            self.history.append(record)
            if self._stdout is not None:
                self._stdout.take(data)
            with self._lock:
                clients = list(self._clients)
            slow = [c for c in clients if not c.offer(data)]
            log.debug("event %s", data[:-1].decode("utf-8"))
        for client in slow:  # after the lock: dropping emits an event of its own
            self._drop(client, "slow reader")
        return record

    def reply(self, command: Command, event: str, **fields) -> dict:
        """An event for the sender of `command` only (history keeps it too); a command of the daemon's
        own is answered to everyone. One client's unknown commands were errors on every client and on
        stdout: ~300 a second pushed 200 slower readers out."""
        if command.client is None:
            return self.emit(event, **fields)
        with self._emit_lock:
            record = _record(event, **fields)
            self.history.append(record)
        client = self._client(command.client)
        if client is not None and not client.offer(_encode(record)):
            self._drop(client, "slow reader")
        return record

    def close(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            try:
                srv.shutdown(socket.SHUT_RDWR)  # wakes the accept thread (close alone does not on Linux)
            except OSError:
                pass
            srv.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        with self._lock:
            clients, self._clients = self._clients, []
        deadline = time.monotonic() + CLOSE_FLUSH_S
        for client in clients:  # the last events (`stopped`) still reach clients that read
            client.finish(deadline - time.monotonic())
        if self._stdout is not None:
            self._stdout.finish(max(deadline - time.monotonic(), 0.5))


def _record(event: str, **fields) -> dict:
    return {"event": event, "t": round(time.monotonic(), 6), **fields}


def _encode(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _line(event: str, **fields) -> bytes:
    """An event for one connection only (not in history): why it is refused or dropped."""
    return _encode(_record(event, **fields))


def _check_path_length(path: str) -> None:
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise ParaEdgeError(f"event socket path {path} is {n} bytes, over the {SUN_PATH_MAX}-byte limit of UNIX "
                            f"socket paths; set a shorter [events] socket or --socket (e.g. /run/paraedge/events.sock)")


def _refuse_if_live(path: str) -> None:
    """An existing socket is replaced only when nothing answers on it (a stale one from a crashed run)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return
    except OSError as exc:  # a full backlog (timeout) or no permission: someone else's, leave it alone
        raise ParaEdgeError(f"cannot check event socket {path} ({exc.strerror or exc}); "
                            f"stop whatever owns it or set another [events] socket") from None
    finally:
        probe.close()
    raise ParaEdgeError(f"another daemon is listening on {path}; stop it or set another [events] socket")
