"""docs/API.md, generated from the Serve graph's OpenAPI schema (the routes and the models
of `serving.api_models`), so the reference cannot drift from what the endpoint serves.

    python -m serving.api_reference            # rewrite docs/API.md
    python -m serving.api_reference --check    # exit 1 when docs/API.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "API.md"


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if schema.get("type") == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"map of {_type(extra) if isinstance(extra, dict) else 'any'}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    return schema.get("type", "any")


def _limits(schema: dict[str, Any]) -> str:
    names = ("minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "maxItems")
    parts = [f"{n} {schema[n]}" for n in names if n in schema]
    for s in schema.get("anyOf", []):
        parts += [f"{n} {s[n]}" for n in names if n in s]
    return ", ".join(parts)


def render(spec: dict[str, Any]) -> str:
    out = [
        "# HTTP API reference",
        "",
        "Generated from the OpenAPI schema the Serve graph publishes at `/openapi.json`",
        "(`python -m serving.api_reference`; a test fails when this file is out of date).",
        'Errors are JSON: `{"detail": ...}`, a message naming the field to fix.',
        "An API key travels as `Authorization: Bearer <key>` or `X-API-Key: <key>`;",
        "a 429 and a 503 carry `Retry-After` (seconds).",
        "",
        "## Operations",
        "",
    ]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out += [f"### `{method.upper()} {path}`", ""]
            if op.get("description"):
                out += [" ".join(op["description"].split()), ""]
            scopes = sorted({s for req in op.get("security", []) for v in req.values() for s in v})
            needs = f"API key with scope `{'`, `'.join(scopes)}`" if scopes else "open (no API key)"
            out += [f"Access: {needs}.", ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | limits |", "|---|---|---|---|---|"]
                for p in params:
                    s = p.get("schema", {})
                    req = "yes" if p.get("required") else "no"
                    out.append(f"| `{p['name']}` | {p['in']} | {_type(s)} | {req} | {_limits(s)} |")
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                out += [f"Body: {_type(body['schema'])}", ""]
            out += ["| status | body |", "|---|---|"]
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                kind = next(iter(content), None)
                schema = content.get(kind, {}).get("schema", {}) if kind else {}
                what = _type(schema) if schema else (kind or "")
                out.append(f"| {status} | {what} {resp.get('description', '')} |".strip())
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        out += [f"### {name}", ""]
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        if props:
            out += ["| field | type | required | notes |", "|---|---|---|---|"]
            for field, s in props.items():
                notes = " ".join((s.get("description") or "").split())
                limits = _limits(s)
                notes = "; ".join(x for x in (notes, limits) if x)
                req = "yes" if field in required else "no"
                out.append(f"| `{field}` | {_type(s)} | {req} | {notes} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def current() -> str:
    from serving.app import api

    return render(api.openapi())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/API.md is stale")
    args = parser.parse_args(argv)
    text = current()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python -m serving.api_reference", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
