"""What both ends of a TCP channel agree on: socket options, and how soon a dead peer is noticed."""
from __future__ import annotations

import socket

# A peer whose machine vanishes without a reset is noticed within DEAD_PEER_SECONDS.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 2, 1, 3
USER_TIMEOUT_MS = 10_000
DEAD_PEER_SECONDS = 10
BUFFER_BYTES = 4 << 20


def tune(sock: socket.socket) -> None:
    """No Nagle delays for small frames, keepalive and a user timeout for dead peers, large buffers."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)


def send_all(sock: socket.socket, head: bytes, tail: bytes | memoryview = b"") -> None:
    """Send a frame's head and tail in as few system calls as possible, without joining them."""
    parts = [memoryview(head), memoryview(tail).cast("B")] if len(tail) else [memoryview(head)]
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]
