#!/usr/bin/env bash
# Regenerates controlplane/kds/*_pb2.py (+ .pyi) from controlplane/kds/*.proto (the KDS service and envelope, and
# the specs Kuma sends as protobuf).
#
# Needs grpcio-tools (pip install -e '.[dev]'); the runtime does not. kds.proto imports Envoy's discovery.proto,
# whose .proto sources xds-protos does not ship: we hand protoc the compiled descriptors of the installed
# xds-protos instead (--descriptor_set_in), so the import resolves to exactly the messages the runtime uses.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" - "$tmp/deps.pb" <<'PYEOF'
import sys
from google.protobuf import descriptor_pb2
from envoy.service.discovery.v3 import discovery_pb2

out = descriptor_pb2.FileDescriptorSet()
seen: set[str] = set()

def add(fd) -> None:  # dependencies first, as protoc wants them
    if fd.name in seen:
        return
    seen.add(fd.name)
    for dep in fd.dependencies:
        add(dep)
    fd.CopyToProto(out.file.add())

add(discovery_pb2.DESCRIPTOR)
from google.protobuf import any_pb2, duration_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
for well_known in (any_pb2, duration_pb2, struct_pb2, timestamp_pb2, wrappers_pb2):
    add(well_known.DESCRIPTOR)
open(sys.argv[1], "wb").write(out.SerializeToString())
PYEOF
"$PY" -m grpc_tools.protoc -I . --descriptor_set_in="$tmp/deps.pb" \
  --python_out=. --pyi_out=. controlplane/kds/*.proto
# Generated code is not ours to lint.
for f in controlplane/kds/*_pb2.py controlplane/kds/*_pb2.pyi; do
  { echo "# ruff: noqa"; cat "$f"; } > "$tmp/f" && cat "$tmp/f" > "$f"
done
echo "generated" controlplane/kds/*_pb2.py controlplane/kds/*_pb2.pyi
