"""The GUI of a real global kuma-cp with two real zones joined over KDS (tests/integration/kds_harness.py), real
dataplanes (Envoys bootstrapped from the zone's dp-server) and a real zone ingress (kuma-dp --proxy-type
ingress) in one zone, in Debian's chromium: every page of the global loads without console errors and shows
the zones' counts; the zone pages show their KDS connections, per-type counts and a real NACK (global refusing
a zone's dataplane); a stopped dataplane and a stopped zone turn offline on the open page; the keyboard reaches
every page, a filter and a dataplane; the phone viewport renders; the token login works against the global's
HTTPS API; the zone's own GUI names its zone and says so when that control plane stops. Screenshots of each
page are saved in the test's tmp_path (their paths are printed)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.apps.runner import App
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.kds_harness import api, global_env, wait_for, zone_env
from tests.integration.mesh_harness import MeshHarness
from tests.integration.test_crosszone import offered, start_ingress
from tests.integration.test_gui import launch_browser, open_page
from tests.integration.test_kds_dataplanes import zone_dataplanes
from tests.integration.test_kuma_dp_support import DpProcess, dp_factory  # noqa: F401  (dp_factory: fixture)
from tests.ports import free_port

ZONE = "zone-1"
OTHER_ZONE = "zone-2"
# Several GUI refresh intervals (5 s) plus the zone -> global KDS hop: a bound on a hung test, not a timing claim.
REFRESH_TIMEOUT_MS = 45_000
GLOBAL_PAGES = ["", "zones", f"zones/{ZONE}", "meshes", "services", "dataplanes", f"dataplanes?zone={ZONE}",
                "policies", "zone-ingresses"]


def shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"gui-mz-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def start_global_and_zones(tmp_path: Path, started: list[CpProcess]) -> tuple[CpProcess, CpProcess, CpProcess]:
    """A global, ZONE (where the dataplanes run) and OTHER_ZONE (stopped later: it turns Offline). Unlike
    test_kds_dataplanes' setup, ZONE keeps a dataplane whose Envoy stopped (a long grace period), so it turns
    offline rather than being deregistered; global writes ZoneInsights often and calls a zone without a stream
    offline after a second, so the test waits on the browser, not on those intervals.

    OTHER_ZONE ran standalone first, with a mesh global does not have and a dataplane in it: global refuses
    that dataplane (a real NACK, as in test_kds_cp), which the zones page shows as the zone's last NACK."""
    kds_port = free_port()
    glob = start_cp(tmp_path / "global", **global_env(kds_port,
                                                          KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL="2",
                                                          KUMA_MULTIZONE_GLOBAL_KDS_ZONE_OFFLINE_GRACE_PERIOD="1"))
    started.append(glob)
    standalone = start_cp(tmp_path / OTHER_ZONE)
    started.append(standalone)
    assert api(standalone, "PUT", "/meshes/legacy", {"type": "Mesh", "name": "legacy"}).status in (200, 201)
    legacy_dp = {"type": "Dataplane", "mesh": "legacy", "name": "old-app", "networking": {
        "address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "old-app"}}]}}
    assert api(standalone, "PUT", "/meshes/legacy/dataplanes/old-app", legacy_dp).status in (200, 201)
    standalone.stop()
    zones = []
    for name, more in ((ZONE, {}), (OTHER_ZONE, {k: str(v) for k, v in standalone.ports.items()})):
        zone = start_cp(tmp_path / name, **zone_env(glob, kds_port, name, tmp_path,
                                                    KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="3600", **more))
        started.append(zone)
        wait_for(f"global's default mesh reaching {name}",
                 lambda z=zone: api(z, "GET", "/meshes/default").status == 200, glob, zone)
        zones.append(zone)
    return glob, zones[0], zones[1]


def test_global_gui_shows_the_zone(tmp_path: Path, started: list[CpProcess], envoy_factory: Callable[..., EnvoyProcess],
                                   app_factory: Callable[..., App],
                                   dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    glob, zone, other = start_global_and_zones(tmp_path, started)
    cps = (glob, zone)
    mesh = MeshHarness(zone, envoy_factory, app_factory)
    app = mesh.app("echo_http", "--name", "backend")
    b1 = mesh.dataplane("backend-1", "backend", app_port=app.port)
    mesh.dataplane("backend-2", "backend", app_port=app.port)
    mesh.dataplane("web-1", "web", app_port=app.port, outbounds={"backend": 0})
    start_ingress(zone, ZONE, "ingress-1", dp_factory)
    wait_for("the zone's ingress offering backend and web", lambda: offered(zone, "ingress-1") == {"backend", "web"},
             *cps)
    wait_for("the zone's dataplanes on global",
             lambda: set(zone_dataplanes(glob, ZONE)) == {"backend-1", "backend-2", "web-1"}, *cps)

    with launch_browser() as browser:
        check_global(glob, tmp_path, browser, b1.envoy, other)
        check_keyboard_and_phone(glob, tmp_path, browser)
        check_zone_gui(zone, tmp_path, browser)
        check_https_login(glob, tmp_path, browser)
        check_zone_down(zone, tmp_path, browser)  # last: the zone control plane stops


def check_global(glob: CpProcess, tmp_path: Path, browser: Any, backend_envoy: EnvoyProcess,
                 other: CpProcess) -> None:
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, errors)
    page.goto(glob.http_url + "/gui")
    count = lambda name: page.locator(f'[data-count="{name}"]')  # noqa: E731
    expect(count("online")).to_have_text("3", timeout=REFRESH_TIMEOUT_MS)
    expect(count("zones online")).to_have_text("2", timeout=REFRESH_TIMEOUT_MS)
    expect(count("zone ingresses")).to_have_text("1", timeout=REFRESH_TIMEOUT_MS)
    assert page.text_content("#zone") == "global"
    for name, want in (("zones offline", "0"), ("dataplanes", "3"), ("offline", "0"), ("services", "2"),
                       ("meshes", "1")):
        assert count(name).text_content() == want, name
    for name in GLOBAL_PAGES:
        page.goto(f"{glob.http_url}/gui#/{name}")
        page.wait_for_selector("main h2")
        shot(page, tmp_path, name.replace("/", "-").replace("?", "-").replace("=", "-") or "overview")

    main = page.locator("main")
    page.goto(f"{glob.http_url}/gui#/zones")
    row = main.locator("tbody tr", has_text=ZONE)
    expect(row).to_contain_text("Online")
    expect(row.locator("td").nth(4)).to_have_text("3")  # its dataplanes, a link to them
    # The KDS counts global -> zone: responses sent, ACKed and NACKed; a healthy zone NACKs nothing. Global
    # writes them into the ZoneInsight every flush interval (the first write, on connect, has none yet).
    expect(row.locator("td").nth(7)).to_have_text(re.compile(r"^[1-9][0-9]* / [1-9][0-9]* / 0$"),
                                                  timeout=REFRESH_TIMEOUT_MS)
    # OTHER_ZONE's dataplane in a mesh global lacks was refused: global's reason is its last NACK.
    expect(main.locator("tbody tr", has_text=OTHER_ZONE).locator("td.nack")).to_contain_text(
        "mesh 'legacy' does not exist here", timeout=REFRESH_TIMEOUT_MS)
    page.goto(f"{glob.http_url}/gui#/zones/{OTHER_ZONE}")  # by type: the Dataplane refused, with the reason
    dataplanes = main.locator("table").last.locator("tbody tr").filter(
        has=page.locator("td:first-child", has_text=re.compile("^Dataplane$")))
    # The zone re-sends it after a back-off, refused each time: one or more.
    expect(dataplanes.locator('td[data-label="Refused from zone"]')).to_have_text(re.compile("^[1-9][0-9]*$"))
    expect(dataplanes.locator("td.nack")).to_contain_text("mesh 'legacy' does not exist here")
    shot(page, tmp_path, "zone-nack")
    page.goto(f"{glob.http_url}/gui#/zones")
    row.get_by_role("link", name=ZONE).click()
    expect(main.locator("h2")).to_have_text(f"Zone {ZONE}")
    expect(page.locator("[data-zone-status]")).to_have_text("Online")
    expect(main.locator("table").first.locator("tbody tr").first).to_contain_text("connected")
    # Per type: the Mesh global sent, and the Dataplanes the zone sent up.
    expect(main.locator("table").last).to_contain_text("Mesh")
    expect(main.locator("table").last).to_contain_text("Dataplane")

    page.goto(f"{glob.http_url}/gui#/services")
    backend = main.locator("tbody tr", has_text="backend")
    expect(backend).to_contain_text(ZONE)
    expect(backend.locator("td").nth(3)).to_have_text("2")
    backend.get_by_role("link", name="backend").click()  # to the dataplanes of that service
    expect(page.locator("#dpcount")).to_have_text("2 dataplanes")

    page.goto(f"{glob.http_url}/gui#/dataplanes")
    expect(page.locator("#dpcount")).to_have_text("3 dataplanes")
    page.select_option('select[name="zone"]', ZONE)
    expect(page.locator("#dpcount")).to_have_text("3 dataplanes")
    assert f"zone={ZONE}" in page.url
    page.fill("#search", "web")
    expect(page.locator("#dpcount")).to_have_text("1 dataplanes")
    page.fill("#search", "")
    # A zone's dataplane is shown by its name in the zone (global stores it as <name>-<hash>) and opens.
    main.get_by_role("link", name="backend-2", exact=True).click()
    expect(main.locator("h2")).to_have_text("Dataplane backend-2")
    expect(page.locator("[data-dp-status]")).to_have_text("online")
    expect(main.locator("dl")).to_contain_text(f"kept by zone {ZONE}")  # global holds a summary insight
    expect(main).to_contain_text("Policies that apply")
    shot(page, tmp_path, "dataplane")

    page.goto(f"{glob.http_url}/gui#/zone-ingresses")
    ingress = main.locator("tbody tr", has_text="ingress-1")
    expect(ingress).to_contain_text(ZONE)
    expect(ingress).to_contain_text("backend")
    expect(ingress).to_contain_text("web")

    # Auto-refresh: the overview stays open (no reload) while a dataplane in the zone stops.
    page.goto(glob.http_url + "/gui")
    backend_envoy.stop()
    expect(count("offline")).to_have_text("1", timeout=REFRESH_TIMEOUT_MS)
    assert count("online").text_content() == "2"
    shot(page, tmp_path, "overview-one-offline")
    # A zone control plane that stops turns Offline on global's pages.
    other.stop()
    expect(count("zones offline")).to_have_text("1", timeout=REFRESH_TIMEOUT_MS)
    assert count("zones online").text_content() == "1"
    page.goto(f"{glob.http_url}/gui#/zones")
    expect(main.locator("tbody tr", has_text=OTHER_ZONE)).to_contain_text("Offline")
    expect(main.locator("tbody tr", has_text=ZONE)).to_contain_text("Online")
    shot(page, tmp_path, "zones-one-offline")
    assert errors == [], errors
    page.context.close()


def check_keyboard_and_phone(glob: CpProcess, tmp_path: Path, browser: Any) -> None:
    """Every page is reachable from the keyboard alone: Tab to the skip link and the nav links, Enter follows."""
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, errors)
    page.goto(glob.http_url + "/gui")
    expect(page.locator('[data-count="zones online"]')).to_have_text("1", timeout=REFRESH_TIMEOUT_MS)  # zone-2 stopped
    focused = page.locator(":focus")
    page.keyboard.press("Tab")
    expect(focused).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    expect(focused).to_have_id("main")
    expect(page.locator("main h2")).to_have_text("Overview")

    def tab_to(what: str, test: Callable[[Any], bool]) -> None:
        for _ in range(40):  # onward from the current focus in the page's tab order (past its end: the browser's)
            page.keyboard.press("Tab")
            if focused.count() and test(focused):
                return
        raise AssertionError(f"Tab never reached {what}")

    for label in ("Zones", "Services", "Dataplanes"):
        tab_to(label, lambda f, label=label: f.text_content() == label)
        page.keyboard.press("Enter")
        expect(page.locator("main h2")).to_have_text(label)
    # A filter changed from the keyboard applies and keeps the focus (the page is rebuilt under it).
    tab_to("the zone filter", lambda f: f.get_attribute("name") == "zone")
    page.keyboard.press("ArrowDown")
    expect(page).to_have_url(re.compile(f"zone={ZONE}$"))
    expect(page.locator("#dpcount")).to_have_text("3 dataplanes")
    expect(focused).to_have_attribute("name", "zone")
    # Into the table: the first dataplane's link opens it.
    tab_to("a dataplane", lambda f: (f.get_attribute("href") or "").startswith("#/dataplanes/"))
    page.keyboard.press("Enter")
    expect(page.locator("main h2")).to_contain_text("Dataplane ")
    shot(page, tmp_path, "keyboard-dataplane")
    page.context.close()

    phone = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    phone.on("pageerror", lambda e: errors.append(str(e)))
    phone.goto(glob.http_url + "/gui#/zones")
    expect(phone.locator("main tbody tr", has_text=ZONE)).to_contain_text("Online", timeout=REFRESH_TIMEOUT_MS)
    # Rows stack on a phone, nothing wider than the screen, each cell labelled with its column.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    expect(phone.locator("main tbody tr", has_text=ZONE).locator('td[data-label="Sent / ACKed / NACKed"]')) \
        .to_be_visible()
    shot(phone, tmp_path, "zones-phone")
    phone.goto(glob.http_url + "/gui")
    expect(phone.locator('[data-count="dataplanes"]')).to_have_text("3", timeout=REFRESH_TIMEOUT_MS)
    shot(phone, tmp_path, "overview-phone")
    phone.context.close()
    assert errors == [], errors


def check_zone_gui(zone: CpProcess, tmp_path: Path, browser: Any) -> None:
    """A zone's own GUI shows its zone and its link to global, and its own dataplanes."""
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, errors)
    page.goto(zone.http_url + "/gui")
    expect(page.locator('[data-count="dataplanes"]')).to_have_text("3", timeout=REFRESH_TIMEOUT_MS)
    assert page.text_content("#zone") == ZONE
    page.goto(zone.http_url + "/gui#/zones")
    expect(page.locator("main")).to_contain_text(f"This is zone {ZONE}")
    shot(page, tmp_path, "zone-cp-zones")
    page.goto(zone.http_url + f"/gui#/dataplanes?zone={ZONE}")
    expect(page.locator("#dpcount")).to_have_text("3 dataplanes")
    page.context.close()
    assert errors == [], errors


def check_https_login(glob: CpProcess, tmp_path: Path, browser: Any) -> None:
    from playwright.sync_api import expect

    r = call("POST", glob.http_url + "/tokens/user", {"name": "gui-test", "groups": ["mesh-system:admin"],
                                                      "validFor": "1h"})
    assert r.status == 200, r.raw
    errors: list[str] = []
    page = open_page(browser, errors, https=True)
    page.goto(glob.https_url + "/gui#/zones")
    page.wait_for_selector('#error[data-status="401"]')
    page.fill("#token", r.raw.decode())
    page.click("#login button")
    expect(page.locator("main tbody tr", has_text=ZONE)).to_contain_text("Online", timeout=REFRESH_TIMEOUT_MS)
    shot(page, tmp_path, "https-zones")
    page.context.close()
    assert [e for e in errors if "401" not in e] == [], errors


def check_zone_down(zone: CpProcess, tmp_path: Path, browser: Any) -> None:
    """A control plane that stops answering is said to be unreachable on the open page, not shown as empty."""
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, errors)
    page.goto(zone.http_url + "/gui#/dataplanes")
    expect(page.locator("#dpcount")).to_have_text("3 dataplanes", timeout=REFRESH_TIMEOUT_MS)
    zone.stop()
    expect(page.locator('#error[data-status="0"]')).to_contain_text("Control plane unreachable",
                                                                     timeout=REFRESH_TIMEOUT_MS)
    shot(page, tmp_path, "zone-cp-down")
    page.context.close()
    # The browser logs the refused fetches; nothing else may be there.
    assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e] == [], errors
