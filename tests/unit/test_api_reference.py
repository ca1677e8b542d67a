"""docs/API.md is generated from the served OpenAPI schema and kept in step with it, and the
schema documents the one response model of every route."""

from __future__ import annotations

from serving import api_reference


def test_the_api_reference_matches_the_openapi_schema():
    assert api_reference.main(["--check"]) == 0, "run: python -m serving.api_reference"


def test_every_route_documents_its_response_model():
    from serving.app import api

    spec = api.openapi()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = next(iter(op["responses"]))
            content = op["responses"][ok].get("content", {})
            if path == "/metrics":  # Prometheus' text format
                continue
            schema = content["application/json"]["schema"]
            assert "$ref" in schema, (method, path, schema)
    recommendation = spec["components"]["schemas"]["Recommendation"]
    assert set(recommendation["required"]) >= {"items", "stage", "fallback", "versions"}
