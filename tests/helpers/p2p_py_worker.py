"""An LMCache-style worker on libzmq (pyzmq + msgpack), for the P2P interop test.

usage: p2p_py_worker.py PULL_URL REPLY_URL HOLDER_LOOKUP_URL

Does what LMCache's LMCacheWorker and P2PBackend do on the wire, with messages shaped as
msgspec encodes them (a map, "type" first, fields in declaration order):
  1. PUSH to PULL_URL one multipart message: RegisterMsg + BatchedKVOperationMsg admits
  2. DEALER to REPLY_URL: [b"", BatchedP2PLookupMsg] (newer LMCache), prints the reply
  3. REQ to REPLY_URL: BatchedP2PLookupMsg (older LMCache), prints the reply
  4. REQ to HOLDER_LOOKUP_URL: BatchedLookupAndGetMsg from a receiver the holder never
     handshook with, prints the reply (expected P2PErrorMsg 3)
Each reply is printed as one JSON line.
"""

import json
import sys
import time

import msgpack
import zmq


def enc(obj):
    return msgpack.packb(obj, use_bin_type=True)


def dec(b):
    return msgpack.unpackb(b, raw=False)


def main():
    pull_url, reply_url, holder_url = sys.argv[1:4]
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(f"tcp://{pull_url}")
    hashes = [11, 12, 13, -14, 2**63 + 5]
    push.send_multipart([
        enc({"type": "RegisterMsg", "instance_id": "py-worker", "worker_id": 0,
             "ip": "127.0.0.1", "port": 7777, "peer_init_url": "127.0.0.1:1"}),
        enc({"type": "BatchedKVOperationMsg", "instance_id": "py-worker", "worker_id": 0,
             "location": "LocalCPUBackend",
             "operations": [{"op_type": "admit", "key": h, "seq_num": i}
                            for i, h in enumerate(hashes)]}),
    ])
    lookup = enc({"type": "BatchedP2PLookupMsg", "hashes": hashes + [99],
                  "instance_id": "py-asker", "worker_id": 0})
    # PUSH and lookups travel on different connections: wait until the reports landed.
    probe = ctx.socket(zmq.REQ)
    probe.setsockopt(zmq.RCVTIMEO, 5000)
    probe.connect(f"tcp://{reply_url}")
    for _ in range(100):
        probe.send(lookup)
        if dec(probe.recv())["layout_info"][0][2] == len(hashes):
            break
        time.sleep(0.05)
    probe.close(linger=0)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(f"tcp://{reply_url}")
    dealer.send_multipart([b"", lookup])
    frames = dealer.recv_multipart()
    print(json.dumps({"via": "dealer", "frames": len(frames), "reply": dec(frames[-1])}))

    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(f"tcp://{reply_url}")
    req.send(lookup)
    print(json.dumps({"via": "req", "reply": dec(req.recv())}))

    holder = ctx.socket(zmq.REQ)
    holder.setsockopt(zmq.RCVTIMEO, 5000)
    holder.connect(f"tcp://{holder_url}")
    holder.send(enc({"type": "BatchedLookupAndGetMsg", "lookup_id": "l1",
                     "receiver_id": "127.0.0.1:2", "keys": ["vllm@m@1@0@b@bfloat16"],
                     "mem_indexes": [0]}))
    print(json.dumps({"via": "holder", "reply": dec(holder.recv())}))
    sys.stdout.flush()
    for s in (push, dealer, req, holder):
        s.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
