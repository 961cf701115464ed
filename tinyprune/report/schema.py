"""report.json's JSON Schema (``schema.json``), checked with the ``jsonschema`` library."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema

def _or(types) -> str:
    return " or ".join(types) if isinstance(types, list) else types


# One short message per failed keyword, naming the path, in the form the tests and users read.
_MESSAGES = {
    "type": lambda e: f"expected {_or(e.validator_value)}, got {type(e.instance).__name__}",
    "const": lambda e: f"expected {e.validator_value!r}, got {e.instance!r}",
    "enum": lambda e: f"{e.instance!r} is not one of {e.validator_value}",
    "minimum": lambda e: f"{e.instance} < minimum {e.validator_value}",
    "maximum": lambda e: f"{e.instance} > maximum {e.validator_value}",
    "anyOf": lambda e: "matches no schema of anyOf",
    "required": lambda e: "missing required key " + e.message.split(" is a required property")[0],
    "additionalProperties": lambda e: "unexpected key(s): " + e.message.split("(")[-1].rstrip(")"),
}


def report_schema() -> dict:
    return json.loads(resources.files("tinyprune.report").joinpath("schema.json").read_text())


def _path(error) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def errors(instance, schema: dict, root: dict | None = None) -> list[str]:
    """Every violation of ``schema`` (a part of ``root`` whose ``$ref`` point into ``root``'s
    ``$defs``) by ``instance``, as 'path: message' strings."""
    if root is not None and schema is not root:
        schema = {**schema, "$defs": root["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f"{_path(e)}: {_MESSAGES.get(e.validator, lambda e: e.message)(e)}"
                  for e in validator.iter_errors(instance))


def validate(instance, schema: dict | None = None) -> None:
    """Raise ValueError listing every violation of the report schema (or ``schema``)."""
    found = errors(instance, schema if schema is not None else report_schema())
    if found:
        raise ValueError("report does not match its schema:\n" + "\n".join(found))
