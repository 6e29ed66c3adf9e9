"""Every receipt field is in the schema, documented in docs/receipts.md, and the schemas are valid."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent


def _fields(schema: dict, out: set[str]) -> set[str]:
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            out.add(name)
            _fields(sub, out)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                _fields(schema[key], out)
        for alt in schema.get("anyOf", []):
            _fields(alt, out)
    return out


def test_schemas_are_valid_draft_2020_12():
    for p in (ROOT / "schemas").glob("*.json"):
        schema = json.loads(p.read_text())
        assert schema["$schema"].endswith("2020-12/schema")
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_schema_field_is_documented():
    doc = (ROOT / "docs" / "receipts.md").read_text()
    missing = []
    for p in (ROOT / "schemas").glob("*.json"):
        for name in sorted(_fields(json.loads(p.read_text()), set())):
            if f"`{name}`" not in doc and f"`{name}:" not in doc:
                missing.append(f"{p.name}:{name}")
    assert not missing, f"undocumented receipt fields: {missing}"


def test_objects_reject_unknown_fields():
    schema = json.loads((ROOT / "schemas" / "receipt.schema.json").read_text())
    assert schema["additionalProperties"] is False
    for name, sub in schema["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, name
