"""A pyzmq (libzmq) peer for the wire interop tests.

usage: py_zmq_peer.py MODE [ENDPOINT]

Bind modes print "PORT <n>" once listening on 127.0.0.1; connect modes take ENDPOINT.
Every mode exchanges each sample of tests/wire/samples.json once, in order, and checks
byte for byte that what arrives equals msgpack.packb(sample) - the encoding LMCache's
msgspec produces for these samples (a map: "type" first, then the fields in order) -
and that its decoded value equals the sample. It prints "OK <count>" and exits 0, or
prints "FAIL <reason>" and exits 1. Every receive has a 5 s timeout.

modes:
  rep-bind       REP: recv request, check, reply with the same sample
  req-connect    REQ: send sample, recv reply, check
  pull-bind      PULL: recv, check
  push-connect   PUSH: send every sample
  router-bind    ROUTER: recv [id, "", body], check id == b"ts-dealer" (or any with
                 --any-id), reply [id, "", body]
  dealer-connect DEALER with identity b"py-dealer": send ["", body], recv ["", body], check
  req-router     REQ against a ROUTER (ENDPOINT): same as req-connect
"""

import os
import sys

import msgpack
import zmq

sys.path.insert(0, os.path.dirname(__file__))
from py_samples import load_samples  # noqa: E402

TIMEOUT_MS = 5000


def fail(reason):
    print(f"FAIL {reason}", flush=True)
    sys.exit(1)


def pack(sample):
    return msgpack.packb(sample, use_bin_type=True)


def check(i, sample, data):
    expected = pack(sample)
    if data != expected:
        fail(
            f"sample {i} ({sample['type']}): bytes differ: got {len(data)} bytes "
            f"{data[:48].hex()}..., expected {len(expected)} bytes {expected[:48].hex()}..."
        )
    decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
    normalized = msgpack.unpackb(expected, raw=False, strict_map_key=False)
    if decoded != normalized or list(decoded.keys())[0] != "type":
        fail(f"sample {i}: decoded value differs: {decoded!r}")


def main():
    mode = sys.argv[1]
    endpoint = sys.argv[2] if len(sys.argv) > 2 else None
    samples = load_samples()
    ctx = zmq.Context()
    kinds = {
        "rep-bind": zmq.REP,
        "req-connect": zmq.REQ,
        "req-router": zmq.REQ,
        "pull-bind": zmq.PULL,
        "push-connect": zmq.PUSH,
        "router-bind": zmq.ROUTER,
        "dealer-connect": zmq.DEALER,
    }
    sock = ctx.socket(kinds[mode])
    sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    sock.setsockopt(zmq.SNDTIMEO, TIMEOUT_MS)
    sock.setsockopt(zmq.LINGER, 2000)
    if mode == "dealer-connect":
        sock.setsockopt(zmq.IDENTITY, b"py-dealer")
    try:
        if mode.endswith("-bind"):
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            print(f"PORT {port}", flush=True)
        else:
            sock.connect(endpoint)
        for i, sample in enumerate(samples):
            if mode == "rep-bind":
                frames = sock.recv_multipart()
                if len(frames) != 1:
                    fail(f"sample {i}: expected 1 frame, got {len(frames)}")
                check(i, sample, frames[0])
                sock.send(pack(sample))
            elif mode in ("req-connect", "req-router"):
                sock.send(pack(sample))
                frames = sock.recv_multipart()
                if len(frames) != 1:
                    fail(f"sample {i}: expected 1 reply frame, got {len(frames)}")
                check(i, sample, frames[0])
            elif mode == "pull-bind":
                frames = sock.recv_multipart()
                if len(frames) != 1:
                    fail(f"sample {i}: expected 1 frame, got {len(frames)}")
                check(i, sample, frames[0])
            elif mode == "push-connect":
                sock.send(pack(sample))
            elif mode == "router-bind":
                frames = sock.recv_multipart()
                if len(frames) != 3 or frames[1] != b"":
                    fail(f"sample {i}: expected [id, '', body], got {len(frames)} frames")
                if frames[0] != b"ts-dealer":
                    fail(f"sample {i}: expected identity b'ts-dealer', got {frames[0]!r}")
                check(i, sample, frames[2])
                sock.send_multipart([frames[0], b"", pack(sample)])
            elif mode == "dealer-connect":
                sock.send_multipart([b"", pack(sample)])
                frames = sock.recv_multipart()
                if len(frames) != 2 or frames[0] != b"":
                    fail(f"sample {i}: expected ['', body], got {len(frames)} frames")
                check(i, sample, frames[1])
        if mode == "pull-bind":
            # A last multipart message: three frames, one empty.
            frames = sock.recv_multipart()
            if frames != [b"a", b"", b"c" * 300]:
                fail(f"multipart: got {[len(f) for f in frames]}")
        elif mode == "push-connect":
            sock.send_multipart([b"a", b"", b"c" * 300])
    except zmq.Again:
        fail(f"timed out after {TIMEOUT_MS} ms in mode {mode}")
    finally:
        sock.close()
        ctx.term()
    print(f"OK {len(samples)}", flush=True)


if __name__ == "__main__":
    main()
