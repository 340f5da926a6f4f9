"""Daemon events: one JSON object per line, to stdout and to every client of a UNIX socket.

Every event has `event` (wake, partial, final, error, device, model_reloaded, ready, stopped)
and `t`, a `time.monotonic()` timestamp, so consumers can measure latencies across processes on
the same board. Socket clients may also send one command per line (`reload`, `status`); the bus
hands them to the daemon through `commands`.
"""

from __future__ import annotations

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


class EventBus:
    def __init__(self, stdout=True, socket_path: str | None = None):
        self.stdout = stdout
        self.socket_path = socket_path
        self.commands: queue.Queue[str] = queue.Queue()
        self.history: list[dict] = []  # everything emitted (tests and `make demo` read it)
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        if socket_path:
            self._listen(socket_path)

    # -- socket ------------------------------------------------------------------------------
    def _listen(self, path: str) -> None:
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise ParaEdgeError(f"socket path {path} exists and is not a socket; refusing to replace it")
            os.unlink(path)  # a stale socket from a previous run
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600 from the start: no window where others could connect
        try:
            srv.bind(path)
        except OSError as exc:
            raise ParaEdgeError(f"cannot create event socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        srv.listen(8)
        self._server = srv
        threading.Thread(target=self._accept, name="events-accept", daemon=True).start()

    def _accept(self) -> None:
        while self._server is not None:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(conn)
            threading.Thread(target=self._read_commands, args=(conn,), name="events-client", daemon=True).start()

    def _read_commands(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode("utf-8", "replace").strip()
                if cmd:
                    self.commands.put(cmd)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._clients:
                self._clients.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    # -- emit --------------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> dict:
        record = {"event": event, "t": round(time.monotonic(), 6), **fields}
        line = json.dumps(record, ensure_ascii=False)
        self.history.append(record)
        if self.stdout:
            print(line, flush=True)
        data = (line + "\n").encode("utf-8")
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            try:
                conn.sendall(data)
            except OSError:  # a client that went away must not stop the daemon
                self._drop(conn)
        log.debug("event %s", line)
        return record

    def close(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        with self._lock:
            clients, self._clients = self._clients, []
        for conn in clients:
            try:
                conn.close()
            except OSError:
                pass
