#!/usr/bin/env python3
"""Smoke check for an echo server (4-byte big-endian length + payload, echoed back).

Usage: echo_check.py PORT [FRAMES]

Sends FRAMES frames of random sizes (0-300 bytes) and random content on one connection,
all at once, then checks every reply comes back unchanged and in order. Exits non-zero
on the first difference. Loopback only.
"""
import random
import socket
import struct
import sys


def main():
    port = int(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    frames = [random.randbytes(random.randint(0, 300)) for _ in range(count)]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))
    buffer = b""
    for i, sent in enumerate(frames):
        while len(buffer) < 4 or len(buffer) < 4 + struct.unpack(">I", buffer[:4])[0]:
            data = s.recv(65536)
            if not data:
                raise SystemExit(f"connection closed before reply {i}")
            buffer += data
        length = struct.unpack(">I", buffer[:4])[0]
        reply, buffer = buffer[4:4 + length], buffer[4 + length:]
        if reply != sent:
            raise SystemExit(f"reply {i} differs from the frame sent")
    print(f"ok: {count} frames echoed unchanged, in order")


if __name__ == "__main__":
    main()
