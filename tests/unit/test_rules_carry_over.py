"""Policy rules carried from one topology of a mesh to the next (controlplane/xds/generate/rules.py,
`carry_rules`): after random sequences of dataplane and policy changes, every proxy's generated config with
carried rules equals the config generated with rules computed fresh for the same inputs."""

from __future__ import annotations

import json
import random

from controlplane.resources import Resource, from_wire
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.generate.rules import _CARRIED, PolicyRules, carry_rules, rules_for
from tests.unit.test_policy_plugins import BACKENDS, OUTBOUNDS, VALID, dp, fixture_dataplanes, load
from tests.unit.test_xds_generate import as_json
from tests.unit.xds_fixtures import context, mesh, topology

EXTRA_TAGS = ({}, {"version": "v1"}, {"version": "v2"}, {"kuma.io/zone": "east"}, {"team": "payments"})
SERVICES = sorted({s for s, _, _ in BACKENDS} | {"frontend", "cache-client"})


def _random_dataplane(rnd: random.Random, name: str, port: int) -> Resource:
    service = rnd.choice(SERVICES)
    outbounds = dict(rnd.sample(sorted(OUTBOUNDS.items()), rnd.randrange(0, 4)))
    if rnd.random() < 0.2:  # outbound-only: selected through its workload label
        return from_wire({"type": "Dataplane", "mesh": "default", "name": name,
                          "labels": {"kuma.io/workload": service},
                          "networking": {"address": "127.0.0.1", "outbound": [
                              {"port": p, "tags": {"kuma.io/service": s}} for s, p in outbounds.items()]}})
    return dp(name, service, port=port, protocol=rnd.choice(("http", "tcp", "grpc")),
              tags=rnd.choice(EXTRA_TAGS), outbounds=outbounds, labels=rnd.choice(({}, {"app": "frontend"})))


def _configs(topo: object) -> dict[str, str]:
    memo = ResourceMemo()
    return {name: json.dumps(as_json(generate_snapshot(context(topo, name, memo))), sort_keys=True)  # type: ignore[arg-type]
            for name in sorted(topo.dataplanes)}  # type: ignore[attr-defined]


def test_carried_rules_give_the_configs_fresh_rules_give() -> None:
    rnd = random.Random(1414)
    the_mesh = mesh(mtls="STRICT")
    dataplanes = {d.meta.name: d for d in fixture_dataplanes()}
    sources = rnd.sample(VALID, 12)  # the policies' files: a policy written again is loaded again
    policies = [load(path) for path in sources]
    prev = topology(the_mesh, list(dataplanes.values()), policies, 1)
    prev_configs = _configs(prev)
    carried = 0
    for step in range(2, 40):
        roll = rnd.random()
        if roll < 0.6:  # dataplanes change: tags, ports, services; some come and go
            for _ in range(rnd.randrange(1, 4)):
                name = rnd.choice([*dataplanes, f"extra-{rnd.randrange(5)}"])
                if name in dataplanes and rnd.random() < 0.2 and name not in ("frontend-1", "cache-client-1"):
                    del dataplanes[name]
                else:
                    dataplanes[name] = _random_dataplane(rnd, name, 11000 + len(name) * 10 + step)
        elif roll < 0.8:  # endpoints only: the same objects (what the store view hands out when nothing changed)
            pass
        else:  # policies change: one in, one out, or one written again (a new object, same content)
            policies, sources = list(policies), list(sources)
            i = rnd.randrange(len(policies))
            choice = rnd.random()
            if choice < 0.4:
                policies[i] = load(sources[i])
            elif choice < 0.7:
                policies.pop(i)
                sources.pop(i)
            else:
                sources.append(rnd.choice([path for path in VALID if path not in sources]))
                policies.append(load(sources[-1]))
        new = topology(the_mesh, list(dataplanes.values()), policies, step)
        carried += carry_rules(prev, new)
        fresh = topology(the_mesh, list(dataplanes.values()), policies, step)
        assert rules_for(fresh) is not rules_for(new) or not carried
        new_configs = _configs(new)
        assert new_configs == _configs(fresh), f"step {step}"
        assert _configs(prev) == prev_configs, f"step {step}: the previous topology read late"
        prev, prev_configs = new, new_configs
    assert carried >= 20  # most steps kept the policies: their rules were carried


def test_every_cache_of_the_rules_is_carried_or_per_topology() -> None:
    rules = PolicyRules(topology(mesh(), []))
    # A new cache must be classified: policy-only or per proxy (then indexed with _index) go in _CARRIED;
    # per topology, like _shared, must start empty in PolicyRules.carried().
    assert set(vars(rules)) == {*_CARRIED, "policies", "_routes", "_shared"}
