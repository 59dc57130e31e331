"""What the host and a standalone worker answer of presets: `GET /preset`, `GET
/preset/{name}`, and `POST /server` bodies (a preset request is expanded, anything else is a
spec as given)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, cast

import msgspec
from msgspec import Meta, Struct
from quart import Response

from manman.errors import Invalid
from manman.http.app import Api, json_response
from manman.models import Port, PortSpec, ServerSpec, WorkerId, redact, validation_message
from manman.presets.catalog import PresetCatalog
from manman.presets.expand import expand
from manman.presets.model import Preset

T = TypeVar("T", bound=ServerSpec)


class PresetCreate(Struct, kw_only=True):
    """`POST /server` from a preset (OpenAPI's view of it): any other ServerSpec field given
    beside `preset` replaces what the preset gives."""

    name: str
    preset: str
    vars: dict[str, str | int | bool] = msgspec.field(default_factory=dict)
    # numbers (or "auto") by the preset's port names; a list replaces the preset's ports
    ports: dict[str, Port | Literal["auto"]] | Annotated[list[PortSpec],
                                                         Meta(max_length=64)] | None = None
    worker_id: WorkerId | None = None


def is_preset_request(body: Mapping[str, Any]) -> bool:
    """A body naming a preset, not a spec made from one (that carries `preset_version`: a
    host passing a server on to its worker, a spec copied from an answer)."""
    return isinstance(body.get("preset"), str) and "preset_version" not in body


def create_spec(body: dict[str, Any], catalog: PresetCatalog, model: type[T]) -> T:
    """The spec (as `model`, a ServerSpec or a subclass with the create's own fields) that a
    create's body asks for. NotFound for an unknown preset; Invalid naming the variable or
    field at fault, never quoting a secret."""
    if not is_preset_request(body):
        try:
            return msgspec.convert(body, model)
        except (msgspec.ValidationError, ValueError) as e:
            raise Invalid(validation_message(e) if isinstance(e, msgspec.ValidationError)
                          else str(e)) from None
    preset = catalog.get(body["preset"])  # NotFound: 404 before any variable is looked at
    own = {k: body[k] for k in model.__struct_fields__
           if k in body and k not in ServerSpec.__struct_fields__}
    variables = body.get("vars", {})
    if not isinstance(variables, dict):
        raise Invalid("vars: must be an object of variable values by name")
    overrides = {k: v for k, v in body.items() if k not in own and k not in ("preset", "vars")}
    ports = overrides.get("ports")
    if isinstance(ports, dict):  # numbers by name; a list is a spec's own `ports`
        del overrides["ports"]
    elif ports is None:
        overrides.pop("ports", None)
    expansion = expand(preset, variables, overrides, ports if isinstance(ports, dict) else None)
    if model is ServerSpec:
        return cast(T, expansion.server_spec)
    try:
        return msgspec.convert({**expansion.spec, **own}, model)
    except (msgspec.ValidationError, ValueError) as e:
        raise Invalid(redact(str(e), expansion.secrets)) from None


class PresetList(Struct):
    presets: list[dict[str, Any]]  # each {name, version, title, game_id, variables, ports}


def add_routes(api: Api, catalog: PresetCatalog) -> None:
    """`GET /preset` and `GET /preset/{name}`, the same on the host and a standalone worker."""

    @api.route("GET", "/preset", response=PresetList,
               summary="The presets servers can be made from")
    async def list_presets(who: object) -> Response:
        return json_response(catalog.listing())

    @api.route("GET", "/preset/{name}", response=Preset, summary="One preset, whole")
    async def get_preset(who: object, name: str) -> Response:
        return json_response(catalog.get(name))
