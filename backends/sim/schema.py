"""Deterministic JSON values valid against a JSON schema: the arguments of simulated tool calls and the
answers of `response_format` requests.

Covers the schema keywords tools and structured-output clients send: `type` (one or a list), `properties`,
`required`, `additionalProperties`, `items`, `prefixItems`, `minItems`/`maxItems`, `enum`, `const`,
`minimum`/`maximum` (and the exclusive forms), `multipleOf` for integers, `minLength`/`maxLength`, `format`
(date, date-time, email, uri, uuid), `anyOf`/`oneOf` (the first branch that is not `null`), `allOf` (merged),
`$ref` into `$defs`/`definitions`, `default`, and `nullable`. Every property is filled, required or not, so
a client that reads an optional field still finds one. The same schema and seed always give the same value.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from .model import VOCAB

MAX_DEPTH = 8
JsonSchema = dict[str, Any]


class SchemaError(ValueError):
    """The schema cannot be satisfied or is not a schema."""


def generate(schema: Any, rng: random.Random) -> Any:
    """A value valid against `schema`, drawn from `rng`."""
    if not isinstance(schema, dict):
        if schema is True or schema is None:
            return _word(rng)
        raise SchemaError("a JSON schema must be an object")
    return _value(schema, rng, root=schema, depth=0)


def _resolve(schema: JsonSchema, root: JsonSchema) -> JsonSchema:
    seen = 0
    while "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"unsupported $ref {ref!r}")
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"$ref {ref!r} points nowhere")
            target = target[part]
        if not isinstance(target, dict):
            raise SchemaError(f"$ref {ref!r} is not a schema")
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest}
        seen += 1
        if seen > MAX_DEPTH:
            raise SchemaError("$ref cycle")
    return schema


def _value(schema: JsonSchema, rng: random.Random, *, root: JsonSchema, depth: int) -> Any:
    schema = _resolve(schema, root)
    if depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            usable = [b for b in branches if isinstance(b, dict) and _resolve(b, root).get("type") != "null"]
            base = {k: v for k, v in schema.items() if k != key}
            return _value({**base, **(usable or branches)[0]}, rng, root=root, depth=depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: JsonSchema = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                part = _resolve(part, root)
                props = {**merged.get("properties", {}), **part.get("properties", {})}
                required = [*merged.get("required", []), *part.get("required", [])]
                merged = {**merged, **part, "properties": props, "required": required}
        return _value(merged, rng, root=root, depth=depth + 1)
    kind = _type(schema)
    if kind == "object":
        return _object(schema, rng, root=root, depth=depth)
    if kind == "array":
        return _array(schema, rng, root=root, depth=depth)
    if kind == "string":
        return _string(schema, rng)
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _word(rng)


def _type(schema: JsonSchema) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "default" in schema:
        return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(schema["default"]))
    return None


def _object(schema: JsonSchema, rng: random.Random, *, root: JsonSchema, depth: int) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    if not isinstance(properties, dict):
        raise SchemaError("'properties' must be an object")
    result = {
        name: _value(sub if isinstance(sub, dict) else {}, rng, root=root, depth=depth + 1)
        for name, sub in properties.items()
    }
    for name in schema.get("required") or []:
        if isinstance(name, str) and name not in result:
            extra = schema.get("additionalProperties")
            result[name] = _value(extra if isinstance(extra, dict) else {}, rng, root=root, depth=depth + 1)
    minimum = schema.get("minProperties")
    extra = schema.get("additionalProperties")
    while isinstance(minimum, int) and len(result) < minimum and extra is not False:
        result[f"{_word(rng)}_{len(result)}"] = _value(
            extra if isinstance(extra, dict) else {"type": "string"}, rng, root=root, depth=depth + 1
        )
    return result


def _array(schema: JsonSchema, rng: random.Random, *, root: JsonSchema, depth: int) -> list[Any]:
    raw_prefix = schema.get("prefixItems")
    prefix: list[Any] = raw_prefix if isinstance(raw_prefix, list) else []
    items = schema.get("items")
    raw_low, raw_high = schema.get("minItems"), schema.get("maxItems")
    low: int = raw_low if isinstance(raw_low, int) else 1
    high: int = raw_high if isinstance(raw_high, int) else max(low, 3)
    count = max(len(prefix), min(high, max(low, rng.randint(1, 3))))
    if items is False:
        count = len(prefix)
    values = [_value(p, rng, root=root, depth=depth + 1) for p in prefix[:count]]
    item_schema = items if isinstance(items, dict) else {"type": "string"}
    values += [_value(item_schema, rng, root=root, depth=depth + 1) for _ in range(count - len(values))]
    if schema.get("uniqueItems") and item_schema.get("type") in ("string", None):
        values = [f"{v}_{i}" if isinstance(v, str) else v for i, v in enumerate(values)]
    return values


def _string(schema: JsonSchema, rng: random.Random) -> str:
    fmt = schema.get("format")
    day = rng.randint(1, 28)
    formatted = {
        "date": f"2026-0{rng.randint(1, 9)}-{day:02d}",
        "date-time": f"2026-0{rng.randint(1, 9)}-{day:02d}T{rng.randint(0, 23):02d}:00:00Z",
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00",
        "email": f"{_word(rng)}@example.com",
        "uri": f"https://example.com/{_word(rng)}",
        "url": f"https://example.com/{_word(rng)}",
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    }
    text = formatted.get(fmt) if isinstance(fmt, str) else None
    if text is None:
        text = " ".join(_word(rng) for _ in range(rng.randint(1, 3)))
    raw_low, raw_high = schema.get("minLength"), schema.get("maxLength")
    low: int = raw_low if isinstance(raw_low, int) else 0
    high: int | None = raw_high if isinstance(raw_high, int) else None
    while len(text) < low:
        text += " " + _word(rng)
    if high is not None:
        text = text[:high]
    return text


def _bounds(schema: JsonSchema, default_low: float, default_high: float) -> tuple[float, float, bool, bool]:
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    open_low = open_high = False
    if isinstance(ex_low, int | float) and not isinstance(ex_low, bool):
        low, open_low = ex_low, True
    if isinstance(ex_high, int | float) and not isinstance(ex_high, bool):
        high, open_high = ex_high, True
    lo = (
        float(low)
        if isinstance(low, int | float)
        else (float(high) - 100 if isinstance(high, int | float) else default_low)
    )
    hi = float(high) if isinstance(high, int | float) else lo + (default_high - default_low)
    if hi < lo:
        raise SchemaError("maximum below minimum")
    return lo, hi, open_low, open_high


def _integer(schema: JsonSchema, rng: random.Random) -> int:
    lo, hi, open_low, open_high = _bounds(schema, 0, 100)
    first = int(lo) + 1 if open_low and lo == int(lo) else int(-(-lo // 1))
    last = int(hi) - 1 if open_high and hi == int(hi) else int(hi // 1)
    step = schema.get("multipleOf")
    if isinstance(step, int) and step > 0:
        first = -(-first // step) * step
        candidates = list(range(first, last + 1, step))
        if not candidates:
            raise SchemaError("no integer satisfies the bounds")
        return rng.choice(candidates[:1000])
    if last < first:
        raise SchemaError("no integer satisfies the bounds")
    return rng.randint(first, last)


def _number(schema: JsonSchema, rng: random.Random) -> float:
    lo, hi, open_low, open_high = _bounds(schema, 0.0, 100.0)
    value = round(lo + (hi - lo) * rng.uniform(0.1, 0.9), 3)
    if (open_low and value <= lo) or (open_high and value >= hi) or not lo <= value <= hi:
        value = (lo + hi) / 2
    return value


def _word(rng: random.Random) -> str:
    return rng.choice(VOCAB)
