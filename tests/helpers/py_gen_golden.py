"""Regenerates tests/wire/golden_msgspec.json: each sample encoded by real msgspec.

Not run by the test suite (Debian has no msgspec package). Run it by hand where msgspec is
installed, e.g. `pip install --target /tmp/ms msgspec && PYTHONPATH=/tmp/ms python3 $0`.

Each sample becomes a msgspec.Struct with tag=True named after its "type", declaring the
sample's fields in the sample's key order (LMCache's declaration order), with msgspec
types chosen from the values. The output maps sample index -> hex of msgspec's bytes
(or "sha256:<length>:<digest>" for encodings over 2 KiB).
"""

import enum
import hashlib
import json
import os
import sys
from typing import Optional

import msgspec

sys.path.insert(0, os.path.dirname(__file__))
from py_samples import load_samples  # noqa: E402


class OpType(enum.Enum):
    ADMIT = "admit"
    EVICT = "evict"


class KVOpEvent(msgspec.Struct):
    op_type: OpType
    key: int
    seq_num: int


class P2PErrorCode(enum.Enum):
    P2P_SERVER_ERROR = enum.auto()
    UNKNOWN_MSG_TYPE = enum.auto()
    REMOTE_XFER_HANDLER_NOT_INITIALIZED = enum.auto()


def field_type(name, value):
    if name == "operations":
        return list[KVOpEvent]
    if name == "layout_info":
        return list[tuple[str, str, int, str]]
    if name == "error_code":
        return P2PErrorCode
    if name == "peer_init_url":
        return Optional[str]
    if isinstance(value, bool):
        return bool
    if isinstance(value, bytes):
        return bytes
    if isinstance(value, int):
        return int
    if isinstance(value, str):
        return str
    if isinstance(value, list):
        if name in ("keys", "cached_keys"):
            return list[str]
        return list[int]
    raise TypeError(f"no msgspec type for {name}={value!r}")


def to_struct(sample):
    fields = [(k, field_type(k, v)) for k, v in sample.items() if k != "type"]
    cls = msgspec.defstruct(sample["type"], fields, tag=True)
    values = {}
    for k, v in sample.items():
        if k == "type":
            continue
        if k == "operations":
            v = [KVOpEvent(OpType(o["op_type"]), o["key"], o["seq_num"]) for o in v]
        elif k == "layout_info":
            v = [tuple(x) for x in v]
        elif k == "error_code":
            v = P2PErrorCode(v)
        values[k] = v
    return cls(**values)


def main():
    out = {}
    for i, sample in enumerate(load_samples()):
        encoded = msgspec.msgpack.encode(to_struct(sample))
        # Large encodings are pinned by length and SHA-256 to keep the fixture small.
        if len(encoded) <= 2048:
            out[str(i)] = encoded.hex()
        else:
            out[str(i)] = f"sha256:{len(encoded)}:{hashlib.sha256(encoded).hexdigest()}"
    path = os.path.join(os.path.dirname(__file__), "..", "wire", "golden_msgspec.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"generator": f"msgspec {msgspec.__version__}", "hex": out}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
