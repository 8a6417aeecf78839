"""The relay, on the host: `symwatch ssh-relay PATH...`, started by a Tunnel over ssh where the
server forbids Unix-socket forwarding. It exposes each Unix socket on a loopback TCP port of the
host (those ports are forwarded instead) and lives as long as its ssh session."""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import IO, Sequence

from symwatch.transport.ssh.target import RELAY_READY


def relay_main(paths: Sequence[str], stdin: IO[bytes] | None = None,
               stdout: IO[str] | None = None) -> int:
    """`symwatch ssh-relay PATH...` (run by Tunnel on the host over ssh): listen on a loopback
    TCP port per Unix socket, print `symwatch-relay PORT...`, copy bytes both ways for every
    connection, and exit when stdin closes (the ssh session ended)."""
    out = stdout or sys.stdout
    for path in paths:
        if not os.path.exists(path):
            print(f"symwatch ssh-relay: no such socket {path}", file=sys.stderr, flush=True)
            return 3
    listeners = []
    for path in paths:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        listeners.append((srv, path))
        threading.Thread(target=_relay_accept, args=(srv, path), daemon=True).start()
    print(RELAY_READY, *(srv.getsockname()[1] for srv, _ in listeners), file=out, flush=True)
    source = stdin or sys.stdin.buffer
    try:
        while source.read(4096):
            pass
    except (OSError, ValueError):
        pass
    return 0


def _relay_accept(srv: socket.socket, path: str) -> None:
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        try:
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.connect(path)
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, unix), (unix, conn)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()
