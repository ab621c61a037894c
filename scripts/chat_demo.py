#!/usr/bin/env python3
"""Two chatting clients and one stalled client against the chat example.

Usage: chat_demo.py PORT [LINES]

bob reads everything (in his own process, so he is never slowed by the others); carol
joins with a tiny receive buffer and never reads again; alice sends LINES lines of ~200
bytes in bursts of 10. Prints how many of alice's lines bob received. Watch the chat
server's own counter lines (`--stats-secs`): carol is closed as a slow consumer, bob and
alice lose nothing, and the live counters return to zero once everyone has left.
Loopback only; bounded by LINES and a 60 s deadline.
"""
import multiprocessing
import socket
import sys
import time


def bob(port, lines, ready):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"bob\n")
    ready.set()
    pending, received, deadline = b"", 0, time.time() + 60
    while received < lines and time.time() < deadline:
        data = s.recv(1 << 20)
        if not data:
            print(f"bob: disconnected after {received} lines")
            break
        pending += data
        *complete, pending = pending.split(b"\n")
        received += sum(1 for line in complete if line.startswith(b"alice: "))
    print(f"bob received {received} of {lines} lines from alice")


def main():
    port = int(sys.argv[1])
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    ready = multiprocessing.Event()
    reader = multiprocessing.Process(target=bob, args=(port, lines, ready))
    reader.start()
    ready.wait(10)
    carol = socket.socket()
    carol.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    carol.connect(("127.0.0.1", port))
    carol.sendall(b"carol\n")  # and never reads again
    alice = socket.create_connection(("127.0.0.1", port))
    alice.sendall(b"alice\n")
    time.sleep(0.2)
    payload = b"x" * 200
    for burst in range(lines // 10):
        alice.sendall(b"".join(b"%d %s\n" % (burst * 10 + i, payload) for i in range(10)))
        time.sleep(0.002)
    print(f"alice sent {lines} lines")
    reader.join(60)
    alice.close()
    carol.close()


if __name__ == "__main__":
    main()
