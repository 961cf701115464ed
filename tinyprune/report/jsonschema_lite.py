"""A small JSON Schema validator for the subset ``schema.json`` uses (no extra dependency).

Keywords: type (name or list), properties, required, additionalProperties (bool or schema),
items, enum, const, minimum, maximum, minItems, anyOf, $ref (local ``#/$defs/...``). Unknown
keywords are ignored, as JSON Schema itself does; ``description``/``title`` are annotations.
"""

from __future__ import annotations

import json
from importlib import resources

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
SUPPORTED = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum",
             "maximum", "minItems", "anyOf", "$ref", "$defs", "$schema", "$id", "title", "description"}


def report_schema() -> dict:
    return json.loads(resources.files("tinyprune.report").joinpath("schema.json").read_text())


def _resolve(root: dict, ref: str) -> dict:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref}")
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def errors(instance, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``instance``, as 'path: message' strings."""
    root = schema if root is None else root
    out: list[str] = []
    if "$ref" in schema:
        out += errors(instance, _resolve(root, schema["$ref"]), root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            return out + [f"{path}: expected {' or '.join(types)}, got {type(instance).__name__}"]
    if "const" in schema and instance != schema["const"]:
        out.append(f"{path}: expected {schema['const']!r}, got {instance!r}")
    if "enum" in schema and instance not in schema["enum"]:
        out.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            out.append(f"{path}: {instance} < minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            out.append(f"{path}: {instance} > maximum {schema['maximum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                out.append(f"{path}: missing required key '{key}'")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                out += errors(value, props[key], root, f"{path}.{key}")
            else:
                extra = schema.get("additionalProperties", True)
                if extra is False:
                    out.append(f"{path}: unexpected key '{key}'")
                elif isinstance(extra, dict):
                    out += errors(value, extra, root, f"{path}.{key}")
    if isinstance(instance, list):
        if "minItems" in schema and len(instance) < schema["minItems"]:
            out.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                out += errors(item, schema["items"], root, f"{path}[{i}]")
    if "anyOf" in schema:
        branches = [errors(instance, s, root, path) for s in schema["anyOf"]]
        if all(branches):
            out.append(f"{path}: matches none of anyOf ({'; '.join(b[0] for b in branches)})")
    return out


def validate(instance, schema: dict | None = None) -> None:
    """Raise ValueError listing the first violations (schema: the report schema by default)."""
    found = errors(instance, schema if schema is not None else report_schema())
    if found:
        raise ValueError(f"{len(found)} schema violation(s): " + "; ".join(found[:5]))


def unsupported_keywords(schema, found: set | None = None) -> set:
    """Keywords used in ``schema`` that this validator does not implement (tests keep it empty)."""
    found = set() if found is None else found
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    unsupported_keywords(sub, found)
                continue
            if key not in SUPPORTED:
                found.add(key)
            if isinstance(value, (dict, list)):
                unsupported_keywords(value, found)
    elif isinstance(schema, list):
        for s in schema:
            unsupported_keywords(s, found)
    return found
