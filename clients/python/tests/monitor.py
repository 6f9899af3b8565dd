"""Reads what Redis was sent, from `MONITOR`: the proof of what a publisher writes."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass

_LINE = re.compile(rb"^\+?[0-9.]+ \[(\d+) ([^\]]+)\] (.*)$")
#: What a client sends when it connects, before any command of its user.
HANDSHAKE = frozenset({"HELLO", "CLIENT", "AUTH", "SELECT"})
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b"}


def parse_args(text: bytes) -> list[bytes]:
    """The arguments of one MONITOR line, each quoted as Redis' `sdscatrepr` writes it."""
    args: list[bytes] = []
    i = 0
    while i < len(text):
        if text[i] == ord(" "):
            i += 1
            continue
        if text[i] != ord('"'):
            raise ValueError(f"unquoted argument at {i}: {text!r}")
        i += 1
        arg = bytearray()
        while text[i] != ord('"'):
            if text[i] == ord("\\"):
                escape = text[i + 1]
                if escape == ord("x"):
                    arg.append(int(text[i + 2 : i + 4], 16))
                    i += 4
                    continue
                arg += _ESCAPES.get(escape, bytes([escape]))
                i += 2
                continue
            arg.append(text[i])
            i += 1
        args.append(bytes(arg))
        i += 1
    return args


@dataclass(frozen=True)
class Command:
    """One command Redis ran: who sent it (`127.0.0.1:PORT`, or `lua` from a script)."""

    client: str
    args: tuple[str, ...]


class Monitor:
    """A `MONITOR` connection that records every command until closed."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.sendall(b"MONITOR\r\n")
        self._buffer = b""
        while b"\r\n" not in self._buffer:
            self._buffer += self._sock.recv(65536)
        first, self._buffer = self._buffer.split(b"\r\n", 1)
        if first != b"+OK":
            raise RuntimeError(f"MONITOR answered {first!r}")
        self._commands: list[Command] = []
        self._lock = threading.Lock()
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self._buffer += chunk
            while b"\r\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\r\n", 1)
                match = _LINE.match(line)
                if match is None:
                    continue
                args = tuple(a.decode("utf-8") for a in parse_args(match.group(3)))
                with self._lock:
                    self._commands.append(Command(match.group(2).decode(), args))

    def commands(self) -> list[Command]:
        with self._lock:
            return list(self._commands)

    def wait_for(self, count: int, *, sent_by_clients: bool = True, timeout: float = 10) -> None:
        """Waits until `count` commands (from clients, not scripts) have been seen."""
        deadline = time.monotonic() + timeout
        while len(self.sent(sent_by_clients)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"MONITOR saw only {self.sent(sent_by_clients)}")
            time.sleep(0.02)

    def sent(self, by_clients: bool = True) -> list[tuple[str, ...]]:
        """The commands clients sent (without those scripts ran, and without connection
        handshakes), in order."""
        return [
            c.args
            for c in self.commands()
            if c.args[0].upper() not in HANDSHAKE and not (by_clients and c.client == "lua")
        ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=5)
