"""Loads tests/wire/samples.json into Python values (shared by the helper scripts).

Encoding: {"$bin": hex} -> bytes, {"$pattern": n} -> bytes(i % 251 for i in range(n)),
{"$int": decimal} -> int. Dicts keep the JSON key order, which is LMCache's field order.
"""

import json
import os

SAMPLES_PATH = os.path.join(os.path.dirname(__file__), "..", "wire", "samples.json")


def _convert(v):
    if isinstance(v, dict):
        if "$bin" in v:
            return bytes.fromhex(v["$bin"])
        if "$pattern" in v:
            return bytes(i % 251 for i in range(v["$pattern"]))
        if "$int" in v:
            return int(v["$int"])
        return {k: _convert(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_convert(x) for x in v]
    return v


def load_samples():
    with open(SAMPLES_PATH, encoding="utf-8") as f:
        return [_convert(s) for s in json.load(f)]
