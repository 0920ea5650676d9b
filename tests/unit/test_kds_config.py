"""Multi-zone settings: Kuma's names, and a zone under a global told exactly what it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import ConfigError, load
from controlplane.kds.client import GlobalAddress, KdsConfigError


def test_zone_kds_settings_by_kumas_names() -> None:
    cfg = load(None, env={"KUMA_MULTIZONE_ZONE_NAME": "zone-1",
                          "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS": "grpcs://global.example:5685",
                          "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE": "/etc/kuma/global-ca.crt",
                          "KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH": "/etc/kuma/zone.token",
                          "KUMA_MULTIZONE_ZONE_KDS_MAX_MSG_SIZE": "1048576"})
    kds = cfg.multizone.zone.kds
    assert kds.root_ca_file == Path("/etc/kuma/global-ca.crt")
    assert kds.auth_cp_token_path == Path("/etc/kuma/zone.token")
    assert kds.max_msg_size == 1 << 20
    assert cfg.multizone.global_.kds.max_msg_size == 4 << 20


def test_a_zone_under_global_needs_its_token_and_globals_ca_and_tls() -> None:
    with pytest.raises(ConfigError) as e:
        load(None, env={"KUMA_MULTIZONE_ZONE_NAME": "zone-1",
                        "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS": "grpc://global:5685"})
    text = str(e.value)
    assert "multizone.zone.globalAddress" in text and "grpcs://" in text
    assert "KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH" in text and "kumactl generate zone-token" in text
    assert "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE" in text and "no skip-verify" in text


def test_the_kds_port_must_not_clash_on_global() -> None:
    with pytest.raises(ConfigError, match=r"multizone\.global\.kds\.grpcPort: port 5681 is already used"):
        load(None, env={"KUMA_MODE": "global", "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT": "5681"})
    load(None, env={"KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT": "5681"})  # a zone does not listen on it


@pytest.mark.parametrize(("address", "target"), [("grpcs://global:5685", "global:5685"),
                                                 ("grpcs://[::1]:5685/", "[::1]:5685")])
def test_global_address_parses(address: str, target: str) -> None:
    assert GlobalAddress.parse(address).target == target


@pytest.mark.parametrize(("address", "message"), [("global:5685", "must be 'grpcs://HOST:PORT'"),
                                                  ("grpcs://global", "must name a host and a port"),
                                                  ("grpcs://global:0", "from 1 to 65535")])
def test_bad_global_addresses_say_the_form(address: str, message: str) -> None:
    with pytest.raises(KdsConfigError, match=message):
        GlobalAddress.parse(address)
