#!/usr/bin/env python3
"""A fixed echo workload, for instruction and syscall counts (callgrind, strace -c).

Usage: fixed_load.py PORT CONNECTIONS FRAMES_PER_CONNECTION

Each connection sends FRAMES_PER_CONNECTION 64-byte frames (4-byte big-endian length
prefix) keeping 16 in flight, and checks that every reply comes back. Unlike the
benchmark's timed load, the amount of work is the same on every run, so counts from two
servers can be compared directly.
"""
import selectors
import socket
import struct
import sys

IN_FLIGHT = 16
PAYLOAD = 64


def main():
    port, connections, frames = (int(a) for a in sys.argv[1:4])
    frame = struct.pack(">I", PAYLOAD) + b"x" * PAYLOAD
    selector = selectors.DefaultSelector()
    state = {}
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        first = min(IN_FLIGHT, frames)
        s.sendall(frame * first)
        s.setblocking(False)
        state[s] = {"sent": first, "received": 0, "pending": b""}
        selector.register(s, selectors.EVENT_READ)
    open_connections = connections
    while open_connections:
        for key, _ in selector.select():
            s, st = key.fileobj, state[key.fileobj]
            data = s.recv(65536)
            if not data:
                raise SystemExit("server closed a connection early")
            st["pending"] += data
            complete = len(st["pending"]) // len(frame)
            replies, st["pending"] = st["pending"][: complete * len(frame)], st["pending"][complete * len(frame):]
            if replies != frame * complete:
                raise SystemExit("a reply differs from the frame sent")
            st["received"] += complete
            more = min(complete, frames - st["sent"])
            if more > 0:
                s.setblocking(True)
                s.sendall(frame * more)
                s.setblocking(False)
                st["sent"] += more
            if st["received"] == frames:
                selector.unregister(s)
                s.close()
                open_connections -= 1
    print(f"done: {connections * frames} frames echoed")


if __name__ == "__main__":
    main()
