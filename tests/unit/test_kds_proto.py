"""The generated KDS messages keep Kuma's names and field numbers (what a Kuma peer decodes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from controlplane.kds import kds_pb2


def test_kuma_resource_names_and_numbers() -> None:
    res = kds_pb2.KumaResource.DESCRIPTOR
    assert res.full_name == "kuma.mesh.v1alpha1.KumaResource"
    assert {f.name: f.number for f in res.fields} == {"meta": 1, "spec": 2, "status": 3}
    assert res.fields_by_name["spec"].message_type.full_name == "google.protobuf.Any"
    meta = res.fields_by_name["meta"].message_type
    assert meta.full_name == "kuma.mesh.v1alpha1.KumaResource.Meta"
    assert {f.name: f.number for f in meta.fields} == {"name": 1, "mesh": 2, "version": 5, "labels": 6}
    assert meta.fields_by_name["labels"].message_type.GetOptions().map_entry
    assert meta.fields_by_name["version"].type == FieldDescriptor.TYPE_STRING


def test_meta_bytes_use_kumas_tags() -> None:
    m = kds_pb2.KumaResource.Meta(name="a", mesh="m", version="v", labels={"k": "x"})
    # tag = number << 3 | wire type 2 (length-delimited): 0x0a, 0x12, 0x2a, 0x32
    assert m.SerializeToString() == b"\x0a\x01a\x12\x01m\x2a\x01v\x32\x06\x0a\x01k\x12\x01x"


def test_sync_service_streams_envoy_delta_messages_both_ways() -> None:
    svc = kds_pb2.DESCRIPTOR.services_by_name["KDSSyncService"]
    assert svc.full_name == "kuma.mesh.v1alpha1.KDSSyncService"
    g2z = svc.methods_by_name["GlobalToZoneSync"]
    z2g = svc.methods_by_name["ZoneToGlobalSync"]
    req = "envoy.service.discovery.v3.DeltaDiscoveryRequest"
    resp = "envoy.service.discovery.v3.DeltaDiscoveryResponse"
    assert (g2z.input_type.full_name, g2z.output_type.full_name) == (req, resp)
    assert (z2g.input_type.full_name, z2g.output_type.full_name) == (resp, req)
    assert g2z.client_streaming and g2z.server_streaming and z2g.client_streaming and z2g.server_streaming


def test_checked_in_code_is_what_the_generator_makes_of_the_protos(tmp_path: Path) -> None:
    """scripts/gen-kds-proto.sh, run on a copy of the .proto files, writes exactly the checked-in *_pb2 files."""
    root = Path(__file__).resolve().parents[2]
    kds = root / "controlplane" / "kds"
    (tmp_path / "scripts").mkdir()
    shutil.copy(root / "scripts" / "gen-kds-proto.sh", tmp_path / "scripts")
    (tmp_path / "controlplane" / "kds").mkdir(parents=True)
    for proto in kds.glob("*.proto"):
        shutil.copy(proto, tmp_path / "controlplane" / "kds")
    subprocess.run(["bash", str(tmp_path / "scripts" / "gen-kds-proto.sh")], check=True, capture_output=True,
                   env={**os.environ, "PYTHON": sys.executable})
    generated = sorted(p.name for p in (tmp_path / "controlplane" / "kds").glob("*_pb2.py"))
    assert generated == sorted(p.name for p in kds.glob("*_pb2.py")) and generated
    for name in generated:
        # The descriptor, not the whole file: the header names the protobuf version that generated it.
        assert _descriptor_bytes(tmp_path / "controlplane" / "kds" / name) == _descriptor_bytes(kds / name), (
            f"{name} is stale: run scripts/gen-kds-proto.sh")


def _descriptor_bytes(path: Path) -> str:
    found = re.search(r"AddSerializedFile\((b'.*?')\)\n", path.read_text())
    assert found, f"{path.name} has no serialized descriptor"
    return found.group(1)
