"""The resource registry imports the core type modules on first need (issue 14: kuma-dp's bootstrap worker
builds the Dataplane model only), yet every caller sees what eager imports registered, in the same order.

Each check runs in a fresh interpreter: this test session has long imported every module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_DESCRIBE = textwrap.dedent("""
    import json, sys
    def describe(types):
        return [[t.name, t.plural, t.singular, t.scope.value, t.spec_cls.__module__ + "." + t.spec_cls.__qualname__,
                 t.flat, t.is_policy, t.is_secret, t.readonly] for t in types]
    def core_loaded():
        return sorted(m.rsplit(".", 1)[1] for m in sys.modules
                      if m.startswith("controlplane.resources.") and m.rsplit(".", 1)[1] in CORE)
""")


def run(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _DESCRIBE + textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout)
    return result


def eager() -> dict[str, object]:
    """What importing every core module (the package's old behaviour), then the policies, registered."""
    return run("""
        import importlib
        from controlplane.resources import CORE_TYPES as CORE, REGISTRY, load_all
        for module in CORE:  # in the table's order: the old `from . import dataplane, insights, ...`
            importlib.import_module("controlplane.resources." + module)
        core = describe(REGISTRY._by_name.values())
        load_all()
        print(json.dumps({"core": core, "all": describe(REGISTRY._by_name.values())}))
    """)


def test_all_is_complete_and_in_the_eager_order_whatever_was_looked_up_first() -> None:
    expected = eager()
    assert [t[0] for t in expected["core"]] == [  # type: ignore[index, union-attr]
        "Dataplane", "DataplaneInsight", "ZoneIngressInsight", "Mesh", "Secret", "GlobalSecret", "VipAllocation",
        "Zone", "ZoneIngress", "ZoneInsight", "ControlPlaneInstance"]
    for first in ("", "REGISTRY.by_name('ZoneIngress')", "REGISTRY.by_plural('meshes')",
                  "REGISTRY.lookup('vip-allocations')", "load_all()"):
        got = run(f"""
            from controlplane.resources import CORE_TYPES as CORE, REGISTRY, load_all
            {first}
            core = describe(REGISTRY.all()) if {first!r} != "load_all()" else None
            load_all()
            print(json.dumps({{"core": core, "all": describe(REGISTRY.all())}}))
        """)
        if first != "load_all()":
            assert got["core"] == expected["core"], first
        assert got["all"] == expected["all"], first


def test_core_types_table_names_what_each_module_registers() -> None:
    got = run("""
        import importlib
        from controlplane.resources import CORE_TYPES as CORE, REGISTRY
        registered = {}
        for module in CORE:
            before = set(REGISTRY._by_name)
            importlib.import_module("controlplane.resources." + module)
            registered[module] = sorted(set(REGISTRY._by_name) - before)
        print(json.dumps({"registered": registered, "table": {m: sorted(n) for m, n in CORE.items()}}))
    """)
    assert got["registered"] == got["table"]


def test_a_lookup_imports_only_the_module_it_needs() -> None:
    got = run("""
        from controlplane.resources import CORE_TYPES as CORE, REGISTRY
        steps = {"package": core_loaded()}
        assert REGISTRY.by_name("Dataplane") is not None
        steps["Dataplane"] = core_loaded()
        assert REGISTRY.by_name("ZoneIngress") is not None
        steps["ZoneIngress"] = core_loaded()
        steps["unknown"] = REGISTRY.by_name("NoSuchType")  # a miss loads every core module, then answers
        steps["after a miss"] = core_loaded()
        print(json.dumps(steps))
    """)
    assert got == {"package": [], "Dataplane": ["dataplane"], "ZoneIngress": ["dataplane", "zone"], "unknown": None,
                   "after a miss": ["dataplane", "insights", "instance", "mesh", "secret", "vip",
                                                      "zone"]}


def test_core_modules_stay_attributes_of_the_package() -> None:
    got = run("""
        import controlplane.resources as resources
        CORE = resources.CORE_TYPES
        print(json.dumps({"mesh": resources.mesh.MESH.name, "zone": resources.zone.ZONE.name}))
    """)
    assert got == {"mesh": "Mesh", "zone": "Zone"}
