"""A TCP proxy in front of a redis-server that can lose a reply: the command reaches Redis and
runs, but its client never hears back (the connection is dropped instead), as when a reply is
lost to a network fault or a socket timeout. Everything else is relayed as it is.

It parses RESP (requests: arrays of bulk strings; replies: RESP2 or RESP3) only to know which reply
answers which command on a connection: redis-py sends one command, or a pipeline of them, and
Redis answers each in order.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

Match = Callable[[list[bytes]], bool]


def _line(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", pos)
    return None if end < 0 else (buf[pos:end], end + 2)


def parse_command(buf: bytes, pos: int) -> tuple[list[bytes], int] | None:
    """A request (array of bulk strings) at ``pos``: (its arguments, where it ends), or None
    if it is not complete yet."""
    head = _line(buf, pos)
    if head is None:
        return None
    header, pos = head
    if not header.startswith(b"*"):
        raise ValueError(f"not a RESP request: {header[:40]!r}")
    args = []
    for _ in range(int(header[1:])):
        size = _line(buf, pos)
        if size is None:
            return None
        length, pos = int(size[0][1:]), size[1]
        if len(buf) < pos + length + 2:
            return None
        args.append(buf[pos:pos + length])
        pos += length + 2
    return args, pos


# RESP2 and RESP3 (redis-py 8 speaks RESP3) reply types by their first byte: one line;
# a length, then that many bytes; a count, then that many replies (a map: two per entry).
LINE, BLOB, AGGREGATE = frozenset(b"+-:_,#("), frozenset(b"$!="), {"*": 1, "~": 1, ">": 1, "%": 2}


def reply_end(buf: bytes, pos: int) -> int | None:
    """Where the reply at ``pos`` ends, or None if it is not complete yet."""
    head = _line(buf, pos)
    if head is None:
        return None
    header, pos = head
    kind = header[0]
    if kind in LINE:
        return pos
    if kind in BLOB:
        length = int(header[1:])
        if length < 0:
            return pos
        return pos + length + 2 if len(buf) >= pos + length + 2 else None
    if chr(kind) in AGGREGATE or kind == ord("|"):
        count = max(int(header[1:]), 0) * AGGREGATE.get(chr(kind), 2)
        for _ in range(count):
            pos = reply_end(buf, pos)
            if pos is None:
                return None
        # An attribute (|) comes before the reply it annotates: both are one reply.
        return reply_end(buf, pos) if kind == ord("|") else pos
    raise ValueError(f"not a RESP reply: {header[:40]!r}")


class LostReplyProxy:
    """Listens on 127.0.0.1:<port> and relays each connection to Redis on ``upstream_port``.

    arm(match, times): the next ``times`` commands for which ``match(args)`` is true are
    relayed to Redis, which runs them; instead of relaying each one's reply, the proxy drops
    that client connection. ``lost`` lists the commands whose reply was lost.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lost: list[list[bytes]] = []
        self._match: Match | None = None
        self._times = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, match: Match, times: int = 1) -> None:
        with self._lock:
            self._match, self._times = match, times

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            connection = {"client": client, "upstream": upstream, "sent": 0, "lose": set()}
            threading.Thread(target=self._requests, args=(connection,), daemon=True).start()
            threading.Thread(target=self._replies, args=(connection,), daemon=True).start()

    def _takes(self, args: list[bytes]) -> bool:
        """Whether this command's reply is to be lost (counts the arming down)."""
        with self._lock:
            if self._times and self._match is not None and self._match(args):
                self._times -= 1
                self.lost.append(args)
                return True
        return False

    def _receive(self, connection: dict, side: str) -> bytes | None:
        """The next bytes from one side of the connection; None (the connection dropped) once
        that side closed or failed."""
        try:
            data = connection[side].recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return None
        return data

    def _requests(self, connection: dict) -> None:
        buf = b""
        while (data := self._receive(connection, "client")) is not None:
            buf += data
            pos = 0
            while (parsed := parse_command(buf, pos)) is not None:
                args, end = parsed
                if self._takes(args):  # known before its reply can come back
                    connection["lose"].add(connection["sent"])
                connection["sent"] += 1
                try:
                    connection["upstream"].sendall(buf[pos:end])
                except OSError:
                    self._drop(connection)
                    return
                pos = end
            buf = buf[pos:]

    def _replies(self, connection: dict) -> None:
        buf, answered = b"", 0
        while (data := self._receive(connection, "upstream")) is not None:
            buf += data
            pos = 0
            while (end := reply_end(buf, pos)) is not None:
                if answered in connection["lose"]:
                    self._drop(connection)  # Redis ran it; its client never hears so
                    return
                answered += 1
                try:
                    connection["client"].sendall(buf[pos:end])
                except OSError:
                    self._drop(connection)
                    return
                pos = end
            buf = buf[pos:]

    @staticmethod
    def _drop(connection: dict) -> None:
        for name in ("client", "upstream"):
            with contextlib.suppress(OSError):
                connection[name].shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connection[name].close()
