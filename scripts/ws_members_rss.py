#!/usr/bin/env python3
"""Resident memory per idle, logged-in WebSocket member of a room, of a running gateway.

Usage: ws_members_rss.py WS_URL SECRET MEMBERS GATEWAY_PID [ROOM]

Opens MEMBERS WebSocket connections to WS_URL (e.g. ws://127.0.0.1:7001/ws), logs each in
with its own token (minted from SECRET, as `tethernet-gateway token` does), joins ROOM
(default "lobby"), waits a second, and prints the growth of the gateway's VmRSS divided by
the number of members. Loopback only; bounded by its arguments. Needs the `websockets`
package (pip install websockets). Raise the file-descriptor limit first for thousands of
members.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import resource
import sys
import time

import websockets


def rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no process {pid}")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, user, room):
    claims = b64(json.dumps({"user": user, "exp": int(time.time()) + 3600, "rooms": [room]}).encode())
    tag = b64(hmac.new(secret.encode(), claims.encode(), hashlib.sha256).digest())
    return f"{claims}.{tag}"


async def member(url, secret, index, room):
    ws = await websockets.connect(url, max_queue=4, ping_interval=None, compression=None)
    await ws.send(json.dumps({"type": "login", "token": token(secret, f"member{index}", room)}))
    reply = json.loads(await ws.recv())
    if reply.get("type") != "welcome":
        raise SystemExit(f"login refused: {reply}")
    await ws.send(json.dumps({"type": "join", "room": room}))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("type") == "joined":
            return ws
        if reply.get("type") == "error":
            raise SystemExit(f"join refused: {reply}")


async def main():
    url, secret, count, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    room = sys.argv[5] if len(sys.argv) > 5 else "lobby"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    before = rss(pid)
    members = []
    for start in range(0, count, 200):
        batch = range(start, min(count, start + 200))
        members += await asyncio.gather(*(member(url, secret, i, room) for i in batch))
    await asyncio.sleep(1.0)
    after = rss(pid)
    print(f"members={count} rss_before={before} rss_after={after} "
          f"per_member={(after - before) / count:.0f} bytes")
    for ws in members:
        await ws.close()


if __name__ == "__main__":
    asyncio.run(main())
