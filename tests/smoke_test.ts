import { parse } from "yaml";
import { z } from "zod";
import { encode } from "@msgpack/msgpack";
import { test } from "node:test";
import assert from "node:assert/strict";
test("deps", () => { assert.equal(parse("a: 1").a, 1); assert.ok(z.number().parse(1)); assert.ok(encode({a:1}).length > 0); });
