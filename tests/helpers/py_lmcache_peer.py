"""A pyzmq peer that behaves like LMCache's PD sender or receiver, for the PD wire tests.

usage:
  py_lmcache_peer.py sender GEN INIT_URL ALLOC_URL SPEC_JSON
  py_lmcache_peer.py receiver GEN SPEC_JSON

GEN is "pd-sync" (pd_backend.py: REQ/REP) or "pd-async" (the async backend and PD L2
adapter: DEALER/ROUTER). Messages are built and decoded with the classes of
lmcache_structs.py (msgspec's own when installed), so a reply LMCache's sender could not
decode fails here the way it fails there (`msgspec.ValidationError`).

sender: handshakes on INIT_URL as LMCache's NIXL channel does (agents = SPEC.agents,
each listing SPEC.meta / SPEC.dlist), checks the per-agent list lengths as LMCache does,
then sends each of SPEC.requests to ALLOC_URL and prints one line per reply:
  REPLY {"type", "fields", "hex"}   or   DECODE_ERROR <message>
receiver: binds an init REP and an alloc socket on 127.0.0.1, prints "PORTS <init>
<alloc>", answers the handshake with SPEC.meta / SPEC.dlist, answers AllocRequests with
SPEC.replies in turn ({"remote": [...], "already": [...]}), decoding each with its
generation's classes, and prints for each request:
  REQUEST {"type", "keys_sent", "fields"}   or   DECODE_ERROR <message>
then "OK" once SPEC.count requests came. Every receive waits at most 10 s.
"""

import json
import os
import sys

import zmq

sys.path.insert(0, os.path.dirname(__file__))
import lmcache_structs as ls  # noqa: E402

TIMEOUT_MS = 10000


def out(*parts):
    print(*parts, flush=True)


def plain(v):
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "value") and hasattr(v, "name"):
        return v.value
    return v


def raw_keys(data):
    """The map keys as they arrived (the field order the peer wrote)."""
    try:
        import msgpack  # type: ignore

        return list(msgpack.unpackb(data, raw=False, strict_map_key=False).keys())
    except ImportError:
        import msgspec  # type: ignore

        return list(msgspec.msgpack.decode(data).keys())


def socket(ctx, kind):
    s = ctx.socket(kind)
    s.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    s.setsockopt(zmq.SNDTIMEO, TIMEOUT_MS)
    s.setsockopt(zmq.LINGER, 0)
    return s


def handshake(ctx, url, spec):
    """LMCache's lazy_init_peer_connection with `agents` NIXL agents (nixl-v2 form)."""
    agents = spec.get("agents", 1)
    meta = bytes.fromhex(spec["meta"])
    dlist = bytes.fromhex(spec["dlist"])
    req = socket(ctx, zmq.REQ)
    req.connect(f"tcp://{url}")
    try:
        req.send(ls.encode(ls.make("nixl-v2", "NixlInitRequest", local_meta_bytes=meta, local_meta_bytes_list=[meta] * agents)))
        resp = ls.decode(req.recv(), "nixl-v2")
        metas = resp.remote_meta_bytes_list or [resp.remote_meta_bytes]
        if len(metas) != agents:
            raise RuntimeError(f"NIXL agent count mismatch: local={agents} remote={len(metas)}")
        names = resp.remote_agent_names or [resp.remote_agent_name]
        req.send(
            ls.encode(
                ls.make(
                    "nixl-v2",
                    "NixlMemRegRequest",
                    remote_agent_name=names[0],
                    local_id=spec.get("local_id", "py-lmcache-sender"),
                    local_xfer_dlist_bytes=dlist,
                    remote_agent_names=names,
                    local_xfer_dlist_bytes_list=[dlist] * agents,
                )
            )
        )
        reg = ls.decode(req.recv(), "nixl-v2")
        lists = reg.remote_xfer_dlist_bytes_list or [reg.remote_xfer_dlist_bytes]
        if len(lists) != agents:
            raise RuntimeError(f"NIXL agent count mismatch: local={agents} remote={len(lists)}")
        out("HANDSHAKE", json.dumps({"agents": len(metas), "names": [n.decode() for n in names]}))
    finally:
        req.close()


def run_sender(gen, init_url, alloc_url, spec):
    ctx = zmq.Context()
    try:
        handshake(ctx, init_url, spec)
        sync = gen == "pd-sync"
        sock = socket(ctx, zmq.REQ if sync else zmq.DEALER)
        if not sync:
            sock.setsockopt(zmq.IDENTITY, b"py-lmcache-sender-to-receiver")
        sock.connect(f"tcp://{alloc_url}")
        for r in spec["requests"]:
            name = r.pop("type", "AllocRequest")
            msg = ls.make(gen, name, **r)
            if sync:
                sock.send(ls.encode(msg))
                data = sock.recv()
            else:
                sock.send_multipart([b"", ls.encode(msg)])
                data = sock.recv_multipart()[-1]
            try:
                reply = ls.decode(data, gen)
            except ls.ValidationError as e:
                out("DECODE_ERROR", str(e))
                continue
            fields = {k: plain(v) for k, v in ls.fields_of(reply).items()}
            out("REPLY", json.dumps({"type": ls.kind(reply), "fields": fields, "hex": data.hex(), "order": raw_keys(data)[1:]}))
        sock.close()
    except zmq.Again:
        out("FAIL timed out")
        sys.exit(1)
    finally:
        ctx.term()


def run_receiver(gen, spec):
    ctx = zmq.Context()
    sync = gen == "pd-sync"
    init = socket(ctx, zmq.REP)
    alloc = socket(ctx, zmq.REP if sync else zmq.ROUTER)
    try:
        ip = init.bind_to_random_port("tcp://127.0.0.1")
        ap = alloc.bind_to_random_port("tcp://127.0.0.1")
        out("PORTS", ip, ap)
        meta = bytes.fromhex(spec["meta"])
        dlist = bytes.fromhex(spec["dlist"])
        # The two handshake stages, as the nixl-v2 responder answers one agent.
        req = ls.decode(init.recv(), "nixl-v2")
        assert ls.kind(req) == "NixlInitRequest", ls.kind(req)
        init.send(ls.encode(ls.make("nixl-v2", "NixlInitResponse", remote_agent_name=b"py-agent", remote_meta_bytes=meta, remote_agent_names=[b"py-agent"], remote_meta_bytes_list=[meta])))
        req = ls.decode(init.recv(), "nixl-v2")
        assert ls.kind(req) == "NixlMemRegRequest", ls.kind(req)
        init.send(ls.encode(ls.make("nixl-v2", "NixlMemRegResponse", remote_xfer_dlist_bytes=dlist, remote_xfer_dlist_bytes_list=[dlist])))
        replies = list(spec["replies"])
        for _ in range(spec["count"]):
            if sync:
                data = alloc.recv()
                envelope = None
            else:
                frames = alloc.recv_multipart()
                envelope, data = frames[0], frames[-1]
            try:
                msg = ls.decode(data, gen)
            except ls.ValidationError as e:
                # LMCache logs this and sends nothing: the sender's REQ then waits forever.
                out("DECODE_ERROR", str(e))
                continue
            fields = {k: plain(v) for k, v in ls.fields_of(msg).items()}
            out("REQUEST", json.dumps({"type": ls.kind(msg), "keys_sent": raw_keys(data)[1:], "fields": fields}))
            if ls.kind(msg) == "CancelNotif":
                reply = ls.make(gen, "AllocResponse", remote_indexes=[])
            else:
                r = replies.pop(0)
                if sync:
                    reply = ls.make(gen, "AllocResponse", already_sent_indexes=r.get("already", []), remote_indexes=r["remote"])
                else:
                    reply = ls.make(gen, "AllocResponse", remote_indexes=r["remote"], already_sent_indexes=r.get("already", []))
            if sync:
                alloc.send(ls.encode(reply))
            else:
                alloc.send_multipart([envelope, b"", ls.encode(reply)])
        out("OK")
    except zmq.Again:
        out("FAIL timed out")
        sys.exit(1)
    finally:
        init.close()
        alloc.close()
        ctx.term()


def main():
    mode, gen = sys.argv[1], sys.argv[2]
    out("BACKEND", ls.BACKEND)
    if mode == "sender":
        run_sender(gen, sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
    elif mode == "receiver":
        run_receiver(gen, json.loads(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
