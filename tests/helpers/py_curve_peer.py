"""A pyzmq (libzmq) CURVE peer for tests/wire_curve_test.ts.

usage:
  py_curve_peer.py rep-server SERVER_SECRET_FILE
      REP bound on 127.0.0.1 with curve_server on and the secret key from the file (a
      40-character Z85 key); prints "PORT <n>". For each of COUNT requests (env COUNT,
      default 3): the request must be [b"req-<i>", pattern(i, 100000)]; replies
      [b"rep-<i>", sha256(frame 2), pattern(i + 100, 300000)]; then prints
      "HANDSHAKES <n>", the connections that completed a handshake.
  py_curve_peer.py req-client CLIENT_SECRET_FILE SERVER_PUBLIC_FILE ENDPOINT
      REQ with curve_serverkey; sends COUNT requests [b"req-<i>", pattern(i, 100000)],
      each reply must be [b"rep-<i>", sha256(frame 2), pattern(i + 100, 300000)].

With env HEARTBEAT_MS set, the socket sends ZMTP heartbeats (PING, inside CURVE MESSAGE
boxes) that often and drops a peer that does not answer within 20 periods.

pattern(seed, n) is bytes((seed * 31 + k * 7) & 255 for k in range(n)). Prints
"OK <count>" and exits 0, or "FAIL <reason>" and exits 1. Every wait has a 5 s timeout.
"""

import hashlib
import os
import sys

import zmq

TIMEOUT_MS = 5000


def fail(reason):
    print(f"FAIL {reason}", flush=True)
    sys.exit(1)


def pattern(seed, n):
    return bytes(((seed * 31 + k * 7) & 255) for k in range(n))


def key(path):
    with open(path, "rb") as f:
        return f.read().strip()


def heartbeat(sock):
    ms = int(os.environ.get("HEARTBEAT_MS", "0"))
    if ms > 0:
        sock.heartbeat_ivl = ms
        sock.heartbeat_timeout = 20 * ms
        sock.heartbeat_ttl = 10 * ms


def main():
    if not zmq.has("curve"):
        fail("libzmq has no CURVE")
    mode = sys.argv[1]
    count = int(os.environ.get("COUNT", "3"))
    ctx = zmq.Context()
    if mode == "rep-server":
        secret = key(sys.argv[2])
        sock = ctx.socket(zmq.REP)
        sock.curve_secretkey = secret
        sock.curve_publickey = zmq.curve_public(secret)
        sock.curve_server = True
        heartbeat(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        sock.rcvtimeo = TIMEOUT_MS
        sock.sndtimeo = TIMEOUT_MS
        sock.linger = 0
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        print(f"PORT {port}", flush=True)
        for i in range(count):
            try:
                frames = sock.recv_multipart()
            except zmq.Again:
                fail(f"request {i} not received within {TIMEOUT_MS} ms")
            if len(frames) != 2 or frames[0] != f"req-{i}".encode() or frames[1] != pattern(i, 100000):
                fail(f"request {i} differs: {len(frames)} frames, first {frames[0][:20]!r}")
            sock.send_multipart(
                [f"rep-{i}".encode(), hashlib.sha256(frames[1]).digest(), pattern(i + 100, 300000)]
            )
        # How many connections completed a handshake: 1 unless one was dropped (e.g. for a
        # heartbeat not answered) and the client reconnected.
        handshakes = 0
        while monitor.poll(100):
            monitor.recv_multipart()
            handshakes += 1
        print(f"HANDSHAKES {handshakes}", flush=True)
        sock.disable_monitor()
        monitor.close()
    elif mode == "req-client":
        secret = key(sys.argv[2])
        sock = ctx.socket(zmq.REQ)
        sock.curve_secretkey = secret
        sock.curve_publickey = zmq.curve_public(secret)
        sock.curve_serverkey = key(sys.argv[3])
        sock.rcvtimeo = TIMEOUT_MS
        sock.sndtimeo = TIMEOUT_MS
        sock.linger = 0
        sock.connect(sys.argv[4])
        for i in range(count):
            body = pattern(i, 100000)
            try:
                sock.send_multipart([f"req-{i}".encode(), body])
            except zmq.Again:
                # A server that refused us: libzmq keeps no pipe to queue the request in.
                fail(f"request {i} not sent within {TIMEOUT_MS} ms")
            try:
                frames = sock.recv_multipart()
            except zmq.Again:
                fail(f"reply {i} not received within {TIMEOUT_MS} ms")
            expected = [f"rep-{i}".encode(), hashlib.sha256(body).digest(), pattern(i + 100, 300000)]
            if frames != expected:
                fail(f"reply {i} differs: {len(frames)} frames, first {frames[0][:20]!r}")
    else:
        fail(f"unknown mode {mode}")
    # The last reply must leave before the socket goes: linger until it has.
    sock.close(linger=TIMEOUT_MS)
    ctx.term()
    print(f"OK {count}", flush=True)


if __name__ == "__main__":
    main()
