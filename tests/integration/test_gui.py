"""The GUI in a real browser (Debian's chromium, driven by Playwright) against a real kuma-cp with real
dataplanes (Envoy bootstrapped from the dp-server): pages load without console errors and show the counts,
a stopped dataplane turns offline, the HTTPS token login works and a bad token shows the 401 state, and a tag
value holding HTML is shown as text."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.apps.runner import App
from tests.integration.api_client import call
from tests.integration.cp_process import start_cp
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness
from tests.requirements import unavailable

XSS = "<img/src=x/onerror=document.title=`pwned`>"
# Tags, labels and names follow Kuma's character rules, so free text reaches the GUI through a policy: a header
# value a MeshHTTPRoute sets, shown on the policies page.
_SET_HEADER = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-note", "value": XSS}]}}
XSS_ROUTE = {"type": "MeshHTTPRoute", "mesh": "default", "name": "xss",
             "spec": {"targetRef": {"kind": "Mesh"},
                      "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                              "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                         "default": {"filters": [_SET_HEADER]}}]}]}}
REFRESH_TIMEOUT_MS = 30_000  # several refresh intervals (5 s): the browser polls, nothing else to wait for
PAGES = ["", "zones", "meshes", "services", "dataplanes", "policies", "zone-ingresses"]


@contextmanager
def launch_browser() -> Iterator[Any]:
    """Started after the mesh is set up: Playwright's sync API keeps an event loop running on this thread,
    and the harness's bootstrap calls use asyncio.run."""
    exe = shutil.which("chromium")
    if exe is None:
        unavailable("chromium", "Debian's chromium is not installed (scripts/setup.sh installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("chromium", "playwright is not installed (pip install -e .[dev])")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


def open_page(browser: Any, errors: list[str], *, https: bool = False) -> Any:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=https)
    page = ctx.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return page


def test_pages_counts_offline_and_xss(tmp_path: Path, envoy_factory: Callable[..., EnvoyProcess],
                                      app_factory: Callable[..., App]) -> None:
    with start_cp(tmp_path) as cp:
        mesh = MeshHarness(cp, envoy_factory, app_factory)
        backend = mesh.app("echo_http", "--name", "backend")
        b1 = mesh.dataplane("backend-1", "backend", app_port=backend.port)
        mesh.apply(json.dumps(XSS_ROUTE))
        mesh.dataplane("web-1", "web", app_port=backend.port, outbounds={"backend": 0})
        with launch_browser() as browser:
            check_pages(cp.http_url, tmp_path, browser, b1.envoy)


def check_pages(url: str, tmp_path: Path, browser: Any, backend_envoy: EnvoyProcess) -> None:
    # Locator waits, not wait_for_function: the GUI's Content-Security-Policy forbids eval, and stays on.
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, errors)
    page.goto(url + "/gui")
    expect(page.locator('[data-count="online"]')).to_have_text("2", timeout=REFRESH_TIMEOUT_MS)
    assert page.text_content('[data-count="dataplanes"]') == "2"
    assert page.text_content('[data-count="meshes"]') == "1"
    assert page.text_content('[data-count="services"]') == "2"
    assert page.text_content("#zone") == "standalone"
    for name in PAGES:
        page.goto(f"{url}/gui#/{name}")
        page.wait_for_selector("main h2")
        if name == "zones":  # zones are a global's to list
            expect(page.locator("main")).to_contain_text("This is a standalone control plane")
        if name == "policies":  # the default policies, as YAML, each with the dataplanes it selects
            expect(page.locator("main")).to_contain_text("type: MeshTimeout")
            expect(page.locator("main")).to_contain_text("Selects 2 dataplanes")
        shot = tmp_path / f"gui-{name or 'overview'}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    page.goto(f"{url}/gui#/policies")
    expect(page.locator("main")).to_contain_text("x-note")
    # The header value is text on the page, not an element, and its handler never ran.
    assert XSS in page.inner_text("main")
    assert page.locator("main img").count() == 0
    assert page.title() != "pwned"
    page.goto(f"{url}/gui#/dataplanes")
    expect(page.locator("#dpcount")).to_have_text("2 dataplanes")
    page.goto(f"{url}/gui#/dataplanes/default/backend-1")
    page.wait_for_selector("text=Policies that apply")
    expect(page.locator("main table").last).to_contain_text("mesh-timeout-all-default")
    # The xDS responses of its current connection, from its DataplaneInsight (written every heartbeat).
    expect(page.locator("main dl")).to_contain_text(re.compile(r"sent [1-9][0-9]*, ACKed [1-9][0-9]*, NACKed 0"),
                                                    timeout=REFRESH_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "gui-dataplane.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'gui-dataplane.png'}")

    phone = page.context.browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(url + "/gui#/dataplanes")
    expect(phone.locator("#dpcount")).to_have_text("2 dataplanes")
    phone.screenshot(path=str(tmp_path / "gui-dataplanes-phone.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'gui-dataplanes-phone.png'}")
    phone.close()

    page.goto(url + "/gui")
    backend_envoy.stop()
    expect(page.locator('[data-count="offline"]')).to_have_text("1", timeout=REFRESH_TIMEOUT_MS)
    assert page.text_content('[data-count="online"]') == "1"
    assert errors == [], errors


def test_https_token_login(tmp_path: Path) -> None:
    with start_cp(tmp_path) as cp, launch_browser() as browser:
        r = call("POST", cp.http_url + "/tokens/user",
                 {"name": "gui-test", "groups": ["mesh-system:admin"], "validFor": "1h"})
        assert r.status == 200, r.raw
        token = r.raw.decode()
        errors: list[str] = []
        page = open_page(browser, errors, https=True)
        page.goto(cp.https_url + "/gui")
        page.wait_for_selector('#error[data-status="401"]')
        assert page.is_visible("#login")
        page.screenshot(path=str(tmp_path / "gui-login.png"))
        print(f"screenshot: {tmp_path / 'gui-login.png'}")

        page.fill("#token", "not-a-token")
        page.click("#login button")
        page.wait_for_selector('#error[data-status="401"]')
        page.fill("#token", token)
        page.click("#login button")
        page.wait_for_selector('[data-count="meshes"]', timeout=REFRESH_TIMEOUT_MS)
        assert page.text_content('[data-count="meshes"]') == "1"
        assert page.is_hidden("#login")
        # The browser logs failed fetches (the 401s) as console errors; nothing else may be there.
        assert [e for e in errors if "401" not in e] == [], errors
