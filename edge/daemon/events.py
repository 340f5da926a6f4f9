"""Daemon events: one JSON object per line, to stdout and to every client of a UNIX socket.

Every event has `event` (wake, partial, final, error, device, model_reloaded, ready, status,
client_dropped, stopped) and `t`, a `time.monotonic()` timestamp, so consumers can measure
latencies across processes on the same board. Socket clients may also send one command per line
(`reload`, `status`); the bus hands them to the daemon through `commands`.

No client can stall or bloat the daemon:
- each client has its own writer thread and an outgoing buffer of CLIENT_BUFFER_BYTES; `emit()`
  only appends to it and never waits. A client whose buffer is full (it stopped reading) is
  disconnected and `client_dropped` (reason "slow reader") says so;
- a command line longer than MAX_COMMAND_BYTES, or more than MAX_PENDING_COMMANDS commands
  waiting, disconnects the client the same way (reason "command line too long" / "too many
  commands"); such input is neither kept nor echoed;
- `history` keeps only the last HISTORY_EVENTS events (tests and `make demo` read it).
A second daemon refuses a socket path that a live one is listening on; only a stale socket
(nothing answers) is replaced.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import queue
import socket
import stat
import threading
import time

from edge.errors import ParaEdgeError

log = logging.getLogger("paraedge.events")

MAX_COMMAND_BYTES = 4096  # commands are words like `reload`; anything longer is abuse or a wrong client
MAX_PENDING_COMMANDS = 64  # the main loop drains commands every ~0.1 s
CLIENT_BUFFER_BYTES = 1 << 20  # ~250 utterances of events a client may fall behind before it is dropped
HISTORY_EVENTS = 1000  # ~50 utterances; a daemon runs for months, so history must not grow with it
CLOSE_FLUSH_S = 2.0  # how long close() lets clients read what is still buffered for them
SUN_PATH_MAX = 107  # bytes in a UNIX socket path (sun_path is 108 bytes, NUL included)


class _Client:
    """One socket client. Its writer thread drains a bounded buffer, so a slow reader only hurts itself."""

    _ids = itertools.count(1)

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.id = next(self._ids)
        self._pending: collections.deque[bytes] = collections.deque()
        self._bytes = 0  # queued, or being sent
        self._closing = False  # no more data: the writer exits once the buffer is empty
        self._cond = threading.Condition()
        self.writer = threading.Thread(target=self._write, name=f"events-client-{self.id}", daemon=True)
        self.writer.start()

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
                self.conn.sendall(data)
            except OSError:  # the client went away; its reader thread notices too
                self.hang_up()
                return
            with self._cond:
                self._bytes -= len(data)

    def finish(self, timeout: float) -> None:
        """Let the writer send what is buffered (up to timeout), then disconnect."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self.writer.join(max(timeout, 0.0))
        self.hang_up()

    def hang_up(self) -> None:
        """Disconnect now. shutdown() (not close) wakes a writer blocked in sendall and the reader in recv."""
        with self._cond:
            self._closing = True
            self._pending.clear()
            self._cond.notify()
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

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
        self.commands: queue.Queue[str] = queue.Queue(MAX_PENDING_COMMANDS)
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY_EVENTS)
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
        srv.listen(8)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), name="events-accept", daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while self._server is srv:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
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
                if not data:
                    return
                *lines, buf = (buf + data).split(b"\n")
                reason = self._take_commands(lines, buf)
                if reason:
                    self._drop(client, reason)
                    return
        finally:
            self._remove(client)
            client.close()

    def _take_commands(self, lines: list[bytes], rest: bytes) -> str | None:
        """Queue complete command lines; the reason to drop the client, if it sent too much."""
        for line in lines:
            if len(line) > MAX_COMMAND_BYTES:
                return "command line too long"
            cmd = line.decode("utf-8", "replace").strip()
            if cmd:
                try:
                    self.commands.put_nowait(cmd)
                except queue.Full:
                    return "too many commands"
        return "command line too long" if len(rest) > MAX_COMMAND_BYTES else None

    def _remove(self, client: _Client) -> bool:
        with self._lock:
            if client not in self._clients:
                return False
            self._clients.remove(client)
        return True

    def _drop(self, client: _Client, reason: str) -> None:
        """Disconnect a misbehaving client and say so (once)."""
        first = self._remove(client)  # before hang_up: its reader thread removes it on waking, silently
        client.hang_up()
        if first:
            log.warning("events client %d dropped: %s", client.id, reason)
            self.emit("client_dropped", client=client.id, reason=reason)

    # -- emit --------------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> dict:
        """Publish one event. Never waits on a socket client (see the module docstring)."""
        with self._emit_lock:
            record = {"event": event, "t": round(time.monotonic(), 6), **fields}
            line = json.dumps(record, ensure_ascii=False)
            self.history.append(record)
            if self.stdout:
                print(line, flush=True)
            data = (line + "\n").encode("utf-8")
            with self._lock:
                clients = list(self._clients)
            slow = [c for c in clients if not c.offer(data)]
            log.debug("event %s", line)
        for client in slow:  # after the lock: dropping emits an event of its own
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
