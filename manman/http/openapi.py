"""OpenAPI 3.1 from the routes as declared (app.RouteDoc) and the msgspec wire types."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from manman.models import ErrorReply

if TYPE_CHECKING:
    from manman.http.app import RouteDoc

_REF = "#/components/schemas/{name}"


def build_openapi(title: str, version: str, docs: list[RouteDoc]) -> dict[str, Any]:
    types: list[Any] = [ErrorReply]
    for d in docs:
        if d.body is not None:
            types.append(d.body)
        types.extend(d.body_doc)
        if d.response not in (None, dict):
            types.append(d.response)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    error = by_type[ErrorReply]
    paths: dict[str, dict[str, Any]] = {}
    for d in docs:
        op: dict[str, Any] = {"summary": d.summary, "operationId": _op_id(d)}
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in re.findall(r"\{(\w+)\}", d.path)]
        for name, kind in d.query.items():
            params.append({"name": name, "in": "query", "required": False,
                           "schema": kind if isinstance(kind, dict) else {"type": kind}})
        if params:
            op["parameters"] = params
        if d.auth != "none":
            op["security"] = [{"bearer": []}]
        if d.body is not None:
            schema = {"oneOf": [by_type[t] for t in d.body_doc]} if d.body_doc \
                else by_type[d.body]
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema}}}
        elif d.stream_body:
            op["requestBody"] = {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}
        responses: dict[str, Any] = {}
        if d.websocket:
            op["description"] = ("A websocket (HTTP Upgrade). Frames follow the console "
                                 "protocol of docs/spec.md.")
            op["x-websocket"] = True
            responses["101"] = {"description": "Switching to the websocket protocol"}
        elif d.media != "application/json":
            responses[str(d.status)] = {"description": "OK", "content": {
                d.media: {"schema": {"type": "string"}}}}
        else:
            schema = {"type": "object"} if d.response in (None, dict) else by_type[d.response]
            responses[str(d.status)] = {"description": "OK", "content": {
                "application/json": {"schema": schema}}}
        codes = set(d.errors) | {400, 404, 405, 413, 422}
        if d.auth != "none":
            codes |= {401, 403}
        for code in sorted(codes):
            if code < 400:  # another success answer, same body (e.g. 202: done later)
                responses[str(code)] = responses[str(d.status)]
                continue
            responses[str(code)] = {"description": "Error", "content": {
                "application/json": {"schema": error}}}
        op["responses"] = responses
        paths.setdefault(d.path, {})[d.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _op_id(d: RouteDoc) -> str:
    name = re.sub(r"[^a-zA-Z0-9]+", "_", d.path).strip("_") or "root"
    return f"{'ws' if d.websocket else d.method.lower()}_{name}"
