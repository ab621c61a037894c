#!/usr/bin/env python3
"""Resident memory per idle connection of a running echo server (4-byte length protocol).

Usage: idle_rss.py PORT CONNECTIONS SERVER_PID [exchange]

Opens CONNECTIONS connections to 127.0.0.1:PORT, optionally does one 64-byte exchange on
each (so buffers were used, then released), waits a second, and prints the growth of the
server's VmRSS divided by the number of connections. Loopback only; bounded by its
arguments. Raise the file-descriptor limit first (ulimit -n) for thousands of connections.
"""
import resource
import socket
import struct
import sys
import time


def rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no process {pid}")


def main():
    port, count, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    exchange = len(sys.argv) > 4
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    before = rss(pid)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    if exchange:
        frame = struct.pack(">I", 64) + b"x" * 64
        for s in sockets:
            s.sendall(frame)
        for s in sockets:
            got = b""
            while len(got) < len(frame):
                chunk = s.recv(len(frame) - len(got))
                if not chunk:
                    raise SystemExit("server closed a connection")
                got += chunk
    time.sleep(1.0)
    after = rss(pid)
    print(f"connections={count} rss_before={before} rss_after={after} "
          f"per_connection={(after - before) / count:.0f} bytes")


if __name__ == "__main__":
    main()
