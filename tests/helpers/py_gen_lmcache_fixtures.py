"""Regenerates tests/fixtures/lmcache_wire/messages.json with real msgspec.

Not run by the test suite. Run it by hand where msgspec is installed:
`python3 -m pip install msgspec msgpack && python3 tests/helpers/py_gen_lmcache_fixtures.py`.

Every fixture is one message of one LMCache generation (see lmcache_structs.py), built
as a msgspec.Struct of that generation's class and encoded by msgspec. The file records
the field values (defaults included, in declaration order) and msgspec's bytes as hex.
JSON conventions: {"$bin": hex} is bytes, {"$int": "decimal"} an integer beyond 2^53,
enums are written by value, tuples as arrays.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import lmcache_structs as ls  # noqa: E402

if not ls.BACKEND.startswith("msgspec"):
    sys.exit("msgspec is required to record fixtures (pip install msgspec)")

KEY_A = "vllm@meta-llama/Llama-3.1-8B@1@0@6c3e9a0f12ab34cd@bfloat16"
KEY_B = "vllm@meta-llama/Llama-3.1-8B@1@0@-1f00000000000001@bfloat16"
META_0 = bytes(range(0, 40))
META_1 = bytes(range(100, 140))
DLIST_0 = bytes((i * 7) % 256 for i in range(96))
DLIST_1 = bytes((i * 11) % 256 for i in range(96))

FIXTURES = [
    # NIXL channel handshake, one agent (before the agent lists).
    ("nixl-v1", "NixlInitRequest", "one agent", dict(local_meta_bytes=META_0)),
    (
        "nixl-v1",
        "NixlInitResponse",
        "one agent",
        dict(remote_agent_name=b"4b7c1f0e-agent", remote_meta_bytes=META_1),
    ),
    (
        "nixl-v1",
        "NixlMemRegRequest",
        "one agent",
        dict(remote_agent_name=b"4b7c1f0e-agent", local_id="localhost7300", local_xfer_dlist_bytes=DLIST_0),
    ),
    ("nixl-v1", "NixlMemRegResponse", "one agent", dict(remote_xfer_dlist_bytes=DLIST_1)),
    # NIXL channel handshake with the per-agent lists.
    ("nixl-v2", "NixlInitRequest", "lists left at their default", dict(local_meta_bytes=META_0)),
    (
        "nixl-v2",
        "NixlInitRequest",
        "two agents",
        dict(local_meta_bytes=META_0, local_meta_bytes_list=[META_0, META_1]),
    ),
    (
        "nixl-v2",
        "NixlInitResponse",
        "two agents",
        dict(
            remote_agent_name=b"agent-a0",
            remote_meta_bytes=META_1,
            remote_agent_names=[b"agent-a0", b"agent-a1"],
            remote_meta_bytes_list=[META_1, META_0],
        ),
    ),
    (
        "nixl-v2",
        "NixlMemRegRequest",
        "two agents",
        dict(
            remote_agent_name=b"agent-a0",
            local_id="sender-pid7-1a2b3c4d",
            local_xfer_dlist_bytes=DLIST_0,
            remote_agent_names=[b"agent-a0", b"agent-a1"],
            local_xfer_dlist_bytes_list=[DLIST_0, DLIST_1],
        ),
    ),
    (
        "nixl-v2",
        "NixlMemRegResponse",
        "two agents",
        dict(remote_xfer_dlist_bytes=DLIST_1, remote_xfer_dlist_bytes_list=[DLIST_1, DLIST_0]),
    ),
    # Side messages of the handshake (P2P).
    ("side", "P2PInitSideMsg", "empty", dict()),
    ("side", "P2PInitSideRetMsg", "lookup url", dict(peer_lookup_url="10.0.0.2:8300")),
    # Synchronous PD backend.
    (
        "pd-sync",
        "AllocRequest",
        "two chunks, partial last",
        dict(keys=[KEY_A, KEY_B], fmt=1, shape=[2, 32, 256, 1024], dtype="bfloat16", last_chunk_toks=17),
    ),
    (
        "pd-sync",
        "AllocResponse",
        "first key already held",
        dict(already_sent_indexes=[0], remote_indexes=[5]),
    ),
    (
        "pd-sync",
        "AllocResponse",
        "no page (the -1 form)",
        dict(already_sent_indexes=[], remote_indexes=[-1, -1]),
    ),
    ("pd-sync", "ProxyNotif", "request done", dict(req_id="cmpl-1f2e3d")),
    ("pd-sync", "CacheQueryRequest", "probe", dict(keys=[KEY_A, KEY_B])),
    (
        "pd-sync",
        "CacheQueryResponse",
        "one hit",
        dict(cached_keys=[KEY_A], cached_indexes=[12]),
    ),
    # Async PD backend and PD L2 adapter.
    (
        "pd-async",
        "AllocRequest",
        "admission fields at their defaults (the L2 adapter's sender)",
        dict(keys=[KEY_A], fmt=1, shape=[2, 32, 256, 1024], dtype="bfloat16", last_chunk_toks=256),
    ),
    (
        "pd-async",
        "AllocRequest",
        "with admission fields",
        dict(
            keys=[KEY_A, KEY_B],
            fmt=1,
            shape=[2, 32, 256, 1024],
            dtype="bfloat16",
            last_chunk_toks=17,
            req_id="cmpl-1f2e3d",
            is_last_batch=True,
            total_chunks=9,
        ),
    ),
    ("pd-async", "AllocResponse", "two pages", dict(remote_indexes=[3, 4])),
    ("pd-async", "AllocResponse", "refused (-1 per key)", dict(remote_indexes=[-1, -1])),
    ("pd-async", "AllocResponse", "reply to a CancelNotif", dict(remote_indexes=[])),
    ("pd-async", "ProxyNotif", "request done", dict(req_id="cmpl-1f2e3d")),
    ("pd-async", "CancelNotif", "aborted request", dict(req_id="cmpl-1f2e3d", keys=[KEY_B])),
    # P2P sharing.
    (
        "p2p",
        "BatchedLookupAndGetMsg",
        "a page index beyond 2^53",
        dict(lookup_id="lk-1", receiver_id="10.0.0.1:8200", keys=[KEY_A, KEY_B], mem_indexes=[7, 2**60 + 3]),
    ),
    ("p2p", "BatchedLookupAndGetRetMsg", "hits", dict(num_hit_chunks=2)),
    (
        "p2p",
        "BatchedLookupAndPutMsg",
        "push",
        dict(sender_id="10.0.0.1:8200", keys=[KEY_A], offsets=[256], mem_indexes=[0]),
    ),
    ("p2p", "BatchedLookupAndPutRetMsg", "read", dict(num_read_chunks=1)),
    (
        "p2p",
        "P2PErrorMsg",
        "handler not initialized",
        dict(error_code=ls.P2PErrorCode.REMOTE_XFER_HANDLER_NOT_INITIALIZED),
    ),
    # Controller, before sequence numbers.
    (
        "controller-v1",
        "KVAdmitMsg",
        "no seq_num",
        dict(instance_id="inst-a", worker_id=0, key=-(2**63), location="LocalCPUBackend"),
    ),
    (
        "controller-v1",
        "KVEvictMsg",
        "no seq_num",
        dict(instance_id="inst-a", worker_id=1, key=2**64 - 1, location="LocalCPUBackend"),
    ),
    # Controller, current.
    (
        "controller-v2",
        "RegisterMsg",
        "no P2P",
        dict(instance_id="inst-a", worker_id=0, ip="10.0.0.1", port=8100, peer_init_url=None),
    ),
    ("controller-v2", "DeRegisterMsg", "leave", dict(instance_id="inst-a", worker_id=0, ip="10.0.0.1", port=8100)),
    (
        "controller-v2",
        "HeartbeatMsg",
        "with P2P",
        dict(instance_id="inst-a", worker_id=3, ip="10.0.0.1", port=8103, peer_init_url="10.0.0.1:8200"),
    ),
    (
        "controller-v2",
        "KVAdmitMsg",
        "seq_num beyond 2^53",
        dict(instance_id="inst-a", worker_id=0, key=2**64 - 1, location="LocalCPUBackend", seq_num=2**63 - 1),
    ),
    (
        "controller-v2",
        "KVEvictMsg",
        "seq_num at its default",
        dict(instance_id="inst-a", worker_id=0, key=12345, location="LocalCPUBackend"),
    ),
    (
        "controller-v2",
        "BatchedKVOperationMsg",
        "admit and evict",
        dict(
            instance_id="inst-a",
            worker_id=0,
            location="LocalCPUBackend",
            operations=[
                ls.KVOpEvent(op_type=ls.OpType.ADMIT, key=2**63, seq_num=1),
                ls.KVOpEvent(op_type=ls.OpType.EVICT, key=-5, seq_num=2**53 + 1),
            ],
        ),
    ),
    (
        "controller-v2",
        "BatchedP2PLookupMsg",
        "64-bit hashes",
        dict(hashes=[0, -1, 2**63 - 1, -(2**63), 2**64 - 1], instance_id="inst-b", worker_id=0),
    ),
    (
        "controller-v2",
        "BatchedP2PLookupRetMsg",
        "one holder",
        dict(layout_info=[("inst-a", "LocalCPUBackend", 2, "10.0.0.1:8200")]),
    ),
    ("controller-v2", "ErrorMsg", "refusal", dict(error="unknown instance")),
]

SAFE = 2**53 - 1


def to_json(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if -SAFE <= v <= SAFE else {"$int": str(v)}
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if hasattr(v, "value") and hasattr(v, "name"):  # enum
        return to_json(v.value)
    if hasattr(v, "__struct_fields__"):
        return {f: to_json(getattr(v, f)) for f in v.__struct_fields__}
    raise TypeError(repr(v))


def main():
    out = []
    for generation, name, case, values in FIXTURES:
        obj = ls.make(generation, name, **values)
        data = ls.encode(obj)
        # What LMCache's decoder of that generation reads back must be the same message.
        back = ls.decode(data, generation, [name])
        assert ls.fields_of(back) == ls.fields_of(obj), (generation, name)
        fields = {"type": name}
        fields.update({k: to_json(v) for k, v in ls.fields_of(obj).items()})
        out.append(
            {
                "name": f"{name} ({generation}): {case}",
                "generation": generation,
                "type": name,
                "fields": fields,
                "hex": data.hex(),
            }
        )
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "lmcache_wire", "messages.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    doc = {
        "recorded_with": ls.BACKEND,
        "about": "Messages of LMCache's control plane as its msgspec classes encode them; "
        "docs/LMCACHE.md names the LMCache sources of each generation.",
        "fixtures": out,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{len(out)} fixtures -> {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
