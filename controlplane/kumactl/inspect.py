"""`kumactl inspect meshes` (from /mesh-insights), `kumactl inspect dataplanes` (the mesh's overview) and
`kumactl inspect dataplane NAME --type policies` (which policies apply to one dataplane, and why)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import click

from .client import ApiClient
from .context import global_options, mesh_option, state
from .output import OUTPUT_OPTION, render, render_table
from .tables import dataplane_overview_table, mesh_insights_table, zone_ingress_overview_table, zone_overview_table


def _all(client: ApiClient, path: str) -> dict[str, Any]:
    items: list[Any] = []
    for page in client.list_all(path):
        items.extend(page["items"])
    return {"total": len(items), "items": items, "next": None}


def _show_list(path: str, table: Callable[[list[Any]], str], output: str) -> None:
    """Every page of a list endpoint, as the table or in the output format asked for."""
    result = _all(state().client(), path)
    click.echo(table(result["items"]) if output == "table" else render(result, output), nl=False)


@click.group("inspect")
@global_options
def inspect_group() -> None:
    """Show resources with their status (online dataplanes, policy counts)."""


@inspect_group.command("meshes")
@OUTPUT_OPTION
@global_options
def inspect_meshes(output: str) -> None:
    """Every mesh: dataplanes online/total, policies, mTLS backend."""
    _show_list("/mesh-insights", mesh_insights_table, output)


@inspect_group.command("dataplanes")
@mesh_option
@OUTPUT_OPTION
@global_options
def inspect_dataplanes(mesh: str, output: str) -> None:
    """The dataplanes of one mesh with their status (online/offline), services and address."""
    _show_list(f"/meshes/{urllib.parse.quote(mesh, safe='')}/dataplanes/_overview", dataplane_overview_table, output)


@inspect_group.command("zones")
@OUTPUT_OPTION
@global_options
def inspect_zones(output: str) -> None:
    """The zones global knows: Online/Offline, last connection, KDS counts, version (on global only)."""
    _show_list("/zones/_overview", zone_overview_table, output)


@inspect_group.command("zoneingresses")
@OUTPUT_OPTION
@global_options
def inspect_zone_ingresses(output: str) -> None:
    """The zone ingresses: zone, address, advertised address, status (online/offline; `remote` for another
    zone's, synced here) and the services each offers to other zones."""
    _show_list("/zoneingresses/_overview", zone_ingress_overview_table, output)


INSPECT_TYPES = ("policies",)


@inspect_group.command("dataplane")
@click.argument("name")
@click.option("--type", "inspect_type", type=click.Choice(INSPECT_TYPES), default="policies", show_default=True,
              help="what to show: the policies that apply to the dataplane, why, and what they merge into")
@mesh_option
@OUTPUT_OPTION
@global_options
def inspect_dataplane(name: str, inspect_type: str, mesh: str, output: str) -> None:
    """One dataplane: which policies apply to it and why (in merge order, the last wins), and the merged
    configuration of each inbound, outbound and route (`GET /meshes/MESH/dataplanes/NAME/policies`)."""
    path = (f"/meshes/{urllib.parse.quote(mesh, safe='')}/dataplanes/{urllib.parse.quote(name, safe='')}"
            f"/{inspect_type}")
    result = state().client().get(path)
    if output == "table":
        click.echo(policies_table(result), nl=False)
    else:
        click.echo(render(result, output), nl=False)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def policies_table(result: dict[str, Any]) -> str:
    """Two tables: the policies that apply (per type, lowest precedence first, so the last one of a type wins
    where they overlap), then what each inbound, outbound and route gets."""
    rows = []
    for section in result.get("policyTypes", []):
        for i, p in enumerate(section["policies"], 1):
            rows.append([section["type"], i, p["name"], _target(p["targetRef"]), p["why"]])
    if not rows:
        return f"no policies apply to dataplane {result.get('dataplane')}\n"
    out = render_table(["TYPE", "ORDER", "NAME", "TARGETREF", "WHY"], rows)
    confs = []
    for section in result.get("policyTypes", []):
        if "proxy" in section:  # a policy of the whole proxy (MeshMetric)
            confs.append([section["type"], "proxy", _compact(section["proxy"]["conf"]),
                          ", ".join(section["proxy"]["origins"])])
        for item in section.get("inbounds", []):
            origins = ", ".join(dict.fromkeys(e["policy"] for e in item["entries"]))
            if "clients" in item:
                for rule in item["clients"]:
                    who = rule["clients"] if isinstance(rule["clients"], str) else _compact(rule["clients"])
                    confs.append([section["type"], f"inbound {item['inbound']} from {who}", _compact(rule["conf"]),
                                  origins])
            elif "conf" in item:
                confs.append([section["type"], f"inbound {item['inbound']}", _compact(item["conf"]),
                              ", ".join(item["origins"])])
            else:
                confs.append([section["type"], f"inbound {item['inbound']}",
                              _compact([{"from": e["targetRef"], "default": e["default"]} for e in item["entries"]]),
                              origins])
        for item in section.get("outbounds", []):
            if "conf" in item:
                confs.append([section["type"], f"outbound {item['service']}", _compact(item["conf"]),
                              ", ".join(item["origins"])])
            for route in item.get("routes", []):
                confs.append([section["type"], f"outbound {item['service']} route {_compact(route['matches'])}",
                              _compact(route["conf"]), ", ".join(route["origins"])])
    if confs:
        out += "\n" + render_table(["TYPE", "APPLIES TO", "MERGED CONF", "FROM (LAST WINS)"], confs)
    return out


def _target(ref: dict[str, Any]) -> str:
    text = str(ref.get("kind"))
    for key in ("name", "tags", "labels", "sectionName", "proxyTypes"):
        if ref.get(key):
            value = ref[key]
            text += f" {key}={_compact(value) if not isinstance(value, str) else value}"
    return text
