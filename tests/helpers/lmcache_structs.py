"""LMCache's control-plane message shapes, as data, for the Python test peers.

Each generation below lists the classes one LMCache module declares and, per class, its
fields in declaration order as (name, type, default). The shapes are facts read from
LMCache's sources (docs/LMCACHE.md names the files and versions); this module is our own
code around them.

With msgspec installed, `classes(generation)` builds real `msgspec.Struct` classes
(`tag=True`, the class name as tag, as LMCache declares them) and `decode`/`encode` are
msgspec's: a peer using them behaves like LMCache's own sockets. Without msgspec (Debian
has no package), the same calls run a small stand-in over msgpack that keeps msgspec's
rules where the tests depend on them: the tag must name a class of the union, required
fields must be present, unknown fields are ignored, defaults fill absent fields, values
are type-checked, and encoding writes "type" first and then every field in declaration
order. `BACKEND` says which one is active.
"""

import enum

try:
    import msgspec  # type: ignore

    BACKEND = f"msgspec {msgspec.__version__}"
except ImportError:  # pragma: no cover - exercised where msgspec is missing
    msgspec = None
    import msgpack  # type: ignore

    BACKEND = f"msgpack {'.'.join(map(str, msgpack.version))} (msgspec rules stand-in)"


class OpType(enum.Enum):
    ADMIT = "admit"
    EVICT = "evict"


class P2PErrorCode(enum.Enum):
    P2P_SERVER_ERROR = 1
    UNKNOWN_MSG_TYPE = 2
    REMOTE_XFER_HANDLER_NOT_INITIALIZED = 3


NONE_LIST = "list[bytes]|None"

NIXL_V1 = {
    "NixlInitRequest": [("local_meta_bytes", "bytes", None)],
    "NixlMemRegRequest": [
        ("remote_agent_name", "bytes", None),
        ("local_id", "str", None),
        ("local_xfer_dlist_bytes", "bytes", None),
    ],
    "NixlInitResponse": [
        ("remote_agent_name", "bytes", None),
        ("remote_meta_bytes", "bytes", None),
    ],
    "NixlMemRegResponse": [("remote_xfer_dlist_bytes", "bytes", None)],
}

NIXL_V2 = {
    "NixlInitRequest": NIXL_V1["NixlInitRequest"] + [("local_meta_bytes_list", NONE_LIST, "none")],
    "NixlMemRegRequest": NIXL_V1["NixlMemRegRequest"]
    + [
        ("remote_agent_names", NONE_LIST, "none"),
        ("local_xfer_dlist_bytes_list", NONE_LIST, "none"),
    ],
    "NixlInitResponse": NIXL_V1["NixlInitResponse"]
    + [
        ("remote_agent_names", NONE_LIST, "none"),
        ("remote_meta_bytes_list", NONE_LIST, "none"),
    ],
    "NixlMemRegResponse": NIXL_V1["NixlMemRegResponse"]
    + [("remote_xfer_dlist_bytes_list", NONE_LIST, "none")],
}

SIDE = {
    "P2PInitSideMsg": [],
    "P2PInitSideRetMsg": [("peer_lookup_url", "str", None)],
}

_ALLOC_REQUEST = [
    ("keys", "list[str]", None),
    ("fmt", "int", None),
    ("shape", "list[int]", None),
    ("dtype", "str", None),
    ("last_chunk_toks", "int", None),
]

# The synchronous PD backend (storage_backend/pd_backend.py).
PD_SYNC = {
    "AllocRequest": _ALLOC_REQUEST,
    "AllocResponse": [
        ("already_sent_indexes", "list[int]", None),
        ("remote_indexes", "list[int]", None),
    ],
    "ProxyNotif": [("req_id", "str", None)],
    "CacheQueryRequest": [("keys", "list[str]", None)],
    "CacheQueryResponse": [
        ("cached_keys", "list[str]", None),
        ("cached_indexes", "list[int]", None),
    ],
}

# The async PD backend (pd_backend_async.py) and the PD L2 adapter of MP mode.
PD_ASYNC = {
    "AllocRequest": _ALLOC_REQUEST
    + [
        ("req_id", "str", ""),
        ("is_last_batch", "bool", False),
        ("total_chunks", "int", 0),
    ],
    "AllocResponse": [
        ("remote_indexes", "list[int]", None),
        ("already_sent_indexes", "list[int]", "empty"),
    ],
    "ProxyNotif": [("req_id", "str", None)],
    "CancelNotif": [("req_id", "str", None), ("keys", "list[str]", None)],
}

P2P = {
    "BatchedLookupAndGetMsg": [
        ("lookup_id", "str", None),
        ("receiver_id", "str", None),
        ("keys", "list[str]", None),
        ("mem_indexes", "list[int]", None),
    ],
    "BatchedLookupAndGetRetMsg": [("num_hit_chunks", "int", None)],
    "BatchedLookupAndPutMsg": [
        ("sender_id", "str", None),
        ("keys", "list[str]", None),
        ("offsets", "list[int]", None),
        ("mem_indexes", "list[int]", None),
    ],
    "BatchedLookupAndPutRetMsg": [("num_read_chunks", "int", None)],
    "P2PErrorMsg": [("error_code", "p2p_error_code", None)],
}

_WORKER = [
    ("instance_id", "str", None),
    ("worker_id", "int", None),
    ("ip", "str", None),
    ("port", "int", None),
]
_KV_OP_OLD = [
    ("instance_id", "str", None),
    ("worker_id", "int", None),
    ("key", "int", None),
    ("location", "str", None),
]

# Controller messages before the sequence numbers (KVAdmitMsg/KVEvictMsg without seq_num).
CONTROLLER_V1 = {
    "KVAdmitMsg": _KV_OP_OLD,
    "KVEvictMsg": _KV_OP_OLD,
}

# Controller messages of current LMCache (cache_controller/message.py).
CONTROLLER_V2 = {
    "RegisterMsg": _WORKER + [("peer_init_url", "str|None", None)],
    "DeRegisterMsg": _WORKER,
    "HeartbeatMsg": _WORKER + [("peer_init_url", "str|None", None)],
    "KVAdmitMsg": _KV_OP_OLD + [("seq_num", "int", 0)],
    "KVEvictMsg": _KV_OP_OLD + [("seq_num", "int", 0)],
    "BatchedKVOperationMsg": [
        ("instance_id", "str", None),
        ("worker_id", "int", None),
        ("location", "str", None),
        ("operations", "list[kvop]", None),
    ],
    "BatchedP2PLookupMsg": [
        ("hashes", "list[int]", None),
        ("instance_id", "str", None),
        ("worker_id", "int", None),
    ],
    "BatchedP2PLookupRetMsg": [("layout_info", "list[layout]", None)],
    "ErrorMsg": [("error", "str", None)],
}

GENERATIONS = {
    "nixl-v1": NIXL_V1,
    "nixl-v2": NIXL_V2,
    "side": SIDE,
    "pd-sync": PD_SYNC,
    "pd-async": PD_ASYNC,
    "p2p": P2P,
    "controller-v1": CONTROLLER_V1,
    "controller-v2": CONTROLLER_V2,
}


def _default(d):
    if d == "none":
        return None
    if d == "empty":
        return []
    return d


if msgspec is not None:
    from typing import Optional

    class KVOpEvent(msgspec.Struct):
        op_type: OpType
        key: int
        seq_num: int

    _TYPES = {
        "bytes": bytes,
        "str": str,
        "int": int,
        "bool": bool,
        "list[str]": list[str],
        "list[int]": list[int],
        NONE_LIST: Optional[list[bytes]],
        "str|None": Optional[str],
        "p2p_error_code": P2PErrorCode,
        "list[kvop]": list[KVOpEvent],
        "list[layout]": list[tuple[str, str, int, str]],
    }

    def _build(name, fields):
        spec = []
        for fname, ftype, default in fields:
            if default is None:
                spec.append((fname, _TYPES[ftype]))
            else:
                spec.append((fname, _TYPES[ftype], _default(default)))
        return msgspec.defstruct(name, spec, tag=True)

    _CACHE = {}

    def classes(generation):
        """The generation's classes, name -> msgspec.Struct class."""
        if generation not in _CACHE:
            table = GENERATIONS[generation]
            _CACHE[generation] = {n: _build(n, f) for n, f in table.items()}
        return _CACHE[generation]

    def make(generation, name, **values):
        """An instance of one class (defaults apply to absent fields)."""
        return classes(generation)[name](**values)

    def decode(data, generation, names=None):
        """msgspec.msgpack.decode(data, type=Union[the classes]) as LMCache calls it."""
        cls = classes(generation)
        members = [cls[n] for n in (names or cls)]
        union = members[0] if len(members) == 1 else __import__("typing").Union[tuple(members)]
        return msgspec.msgpack.decode(data, type=union)

    def encode(obj):
        """msgspec.msgpack.encode(obj)."""
        return msgspec.msgpack.encode(obj)

    def kind(obj):
        return type(obj).__name__

    def fields_of(obj):
        """Field name -> value, in declaration order."""
        return {f: getattr(obj, f) for f in obj.__struct_fields__}

    ValidationError = msgspec.ValidationError

else:

    class ValidationError(ValueError):
        pass

    class _Msg:
        def __init__(self, name, fields, values):
            self._name = name
            self._fields = [f for f, _, _ in fields]
            for f, v in values.items():
                setattr(self, f, v)

        def __repr__(self):
            inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
            return f"{self._name}({inner})"

    def _check(ftype, value, path):
        def bad(expected):
            raise ValidationError(f"Expected `{expected}`, got `{type(value).__name__}` - at `{path}`")

        if ftype == "bytes":
            if not isinstance(value, bytes):
                bad("bytes")
            return value
        if ftype == "str":
            if not isinstance(value, str):
                bad("str")
            return value
        if ftype == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                bad("int")
            if not -(2**63) <= value < 2**64:
                bad("int")
            return value
        if ftype == "bool":
            if not isinstance(value, bool):
                bad("bool")
            return value
        if ftype == "str|None":
            return None if value is None else _check("str", value, path)
        if ftype == NONE_LIST:
            if value is None:
                return None
            if not isinstance(value, list):
                bad("array | null")
            return [_check("bytes", x, f"{path}[{i}]") for i, x in enumerate(value)]
        if ftype.startswith("list["):
            if not isinstance(value, list):
                bad("array")
            inner = ftype[5:-1]
            return [_check(inner, x, f"{path}[{i}]") for i, x in enumerate(value)]
        if ftype == "p2p_error_code":
            try:
                return P2PErrorCode(value)
            except ValueError:
                raise ValidationError(f"Invalid enum value {value!r} - at `{path}`") from None
        if ftype == "kvop":
            if not isinstance(value, dict):
                bad("object")
            return {
                "op_type": OpType(value["op_type"]),
                "key": _check("int", value["key"], f"{path}.key"),
                "seq_num": _check("int", value["seq_num"], f"{path}.seq_num"),
            }
        if ftype == "layout":
            if not isinstance(value, list) or len(value) != 4:
                bad("array of length 4")
            return (value[0], value[1], _check("int", value[2], f"{path}[2]"), value[3])
        raise TypeError(ftype)

    def classes(generation):
        return GENERATIONS[generation]

    def make(generation, name, **values):
        fields = GENERATIONS[generation][name]
        full = {}
        for f, _, d in fields:
            if f in values:
                full[f] = values[f]
            elif d is not None:
                full[f] = _default(d)
            else:
                raise TypeError(f"Missing required argument '{f}'")
        return _Msg(name, fields, full)

    def decode(data, generation, names=None):
        table = GENERATIONS[generation]
        allowed = names or list(table)
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(raw, dict):
            raise ValidationError("Expected `object` - at `$`")
        tag = raw.get("type")
        if tag not in allowed:
            raise ValidationError(f"Invalid value {tag!r} - at `$.type`")
        fields = table[tag]
        values = {}
        for f, t, d in fields:
            if f in raw:
                values[f] = _check(t, raw[f], f"$.{f}")
            elif d is not None:
                values[f] = _default(d)
            else:
                raise ValidationError(f"Object missing required field `{f}`")
        return _Msg(tag, fields, values)

    def _plain(v):
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, tuple):
            return [_plain(x) for x in v]
        if isinstance(v, list):
            return [_plain(x) for x in v]
        if isinstance(v, dict):
            return {k: _plain(x) for k, x in v.items()}
        return v

    def encode(obj):
        out = {"type": obj._name}
        for f in obj._fields:
            out[f] = _plain(getattr(obj, f))
        return msgpack.packb(out, use_bin_type=True)

    def kind(obj):
        return obj._name

    def fields_of(obj):
        return {f: getattr(obj, f) for f in obj._fields}
