"""The API's OpenAPI 3.1 document, built from the registry and each spec's JSON schema."""

from __future__ import annotations

from typing import Any

from controlplane import __version__
from controlplane.resources.base import Registry, ResourceType, Scope

_ERROR = {
    "type": "object",
    "properties": {
        "title": {"type": "string"}, "details": {"type": "string"},
        "invalid_parameters": {"type": "array", "items": {
            "type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}}},
    },
}
_META = {
    "type": {"type": "string"}, "name": {"type": "string"}, "mesh": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "creationTime": {"type": "string", "format": "date-time", "readOnly": True},
    "modificationTime": {"type": "string", "format": "date-time", "readOnly": True},
}


def _resource_schema(rtype: ResourceType, defs: dict[str, Any]) -> dict[str, Any]:
    spec = rtype.spec_cls.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs.update(spec.pop("$defs", {}))
    props = {k: v for k, v in _META.items() if k != "mesh" or rtype.scope is Scope.MESH}
    props["type"] = {"type": "string", "const": rtype.name}
    if rtype.flat:
        props.update(spec.get("properties", {}))
        required = ["type", "name", *spec.get("required", [])]
    else:
        props["spec"] = spec
        required = ["type", "name", "spec"]
    return {"type": "object", "description": rtype.description, "properties": props, "required": required,
            "additionalProperties": False}


def build(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for rtype in sorted(registry.all(), key=lambda t: t.name):
        schemas[rtype.name] = _resource_schema(rtype, schemas)
        ref = {"$ref": f"#/components/schemas/{rtype.name}"}
        one = {"description": rtype.name, "content": {"application/json": {"schema": ref}}}
        page = {"description": f"a page of {rtype.plural}", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"total": {"type": "integer"}, "items": {"type": "array", "items": ref},
                                             "next": {"type": ["string", "null"]}}}}}}
        list_params = [{"name": n, "in": "query", "schema": {"type": t}} for n, t in
                       (("size", "integer"), ("offset", "integer"), ("name", "string"))]
        base = f"/meshes/{{mesh}}/{rtype.plural}" if rtype.scope is Scope.MESH else f"/{rtype.plural}"
        paths[base] = {"get": {"summary": f"List {rtype.plural}", "parameters": list_params,
                               "responses": {"200": page, "400": err}}}
        item: dict[str, Any] = {"get": {"summary": f"Get a {rtype.singular}", "responses": {"200": one, "404": err}}}
        if not rtype.readonly:
            item["put"] = {"summary": f"Create or update a {rtype.singular}",
                           "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
                           "responses": {"200": {"description": "updated"}, "201": {"description": "created"},
                                         "400": err, "409": err}}
            item["delete"] = {"summary": f"Delete a {rtype.singular}", "responses": {"200": {"description": "deleted"},
                                                                                      "404": err}}
        paths[f"{base}/{{name}}"] = item
    return {"openapi": "3.1.0", "info": {"title": "kuma-vm control plane API", "version": __version__},
            "paths": paths, "components": {"schemas": schemas}}
