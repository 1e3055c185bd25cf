"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_env import LocalEnv

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "tests" / "artifacts" / "dashboard.png"
README_COPY = ROOT / "docs" / "dashboard.png"
RED = "rgb(207, 34, 46)"  # --red in dashboard.css
AMBER = "rgb(191, 135, 0)"


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt when missing (tests run as root on CI)."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0:
            pytest.skip("chromium is missing and installing it needs root")
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=apt, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], check=True, env=apt, capture_output=True
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def demo(stack: Any) -> Iterator[LocalEnv]:
    """A fresh FlagMeter holding only the three demo tenants, with an API and a worker."""
    env = LocalEnv.create(stack)
    subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", "seed"],
        env={**stack.env, **env.env},
        check=True,
        capture_output=True,
    )
    env.start_api()
    env.start_worker()
    yield env
    env.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def _row(page: Any, tenant: str) -> Any:
    return page.locator(f'li.tenant[data-id="{tenant}"]')


def test_operator_logs_in_and_watches_usage_change_live(demo: LocalEnv, browser: Any) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

    page.goto(f"{demo.api_url}/")
    expect(page.locator("form[action='/login']")).to_be_visible()
    assert page.locator("li.tenant").count() == 0
    page.fill("#token", demo.stack.admin_token)
    errors.clear()  # the login page itself is a 401, which Chromium logs
    page.click("button[type=submit]")
    expect(page.locator("li.tenant")).to_have_count(3)
    for name in ("Acme Corp", "Globex", "Initech"):
        expect(page.locator("li.tenant .name", has_text=name)).to_be_visible()

    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    acme = _row(page, "acme")
    demo.post("acme", 250_000, 150_000, feature="chat")
    demo.post("acme", 100_000, feature="embeddings")
    expect(acme.locator(".used")).to_have_text("500,000", timeout=10_000)
    expect(acme.locator(".percent")).to_have_text("50 %")
    assert acme.locator(".bar .fill").get_attribute("width") == "50"

    demo.post("acme", 350_000, feature="chat")  # 85 %
    demo.post("globex", 300_000, 50_000, feature="summarize")  # 70 %
    demo.post("initech", 30_000, feature="chat")  # 12 %
    expect(acme.locator(".percent")).to_have_text("85 %", timeout=10_000)
    expect(_row(page, "globex").locator(".percent")).to_have_text("70 %", timeout=10_000)
    expect(_row(page, "initech").locator(".percent")).to_have_text("12 %", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True

    fill = acme.locator(".bar .fill")
    assert fill.evaluate("node => getComputedStyle(node).fill") == RED
    assert _row(page, "globex").locator(".bar .fill").evaluate("node => getComputedStyle(node).fill") == AMBER
    assert page.locator("li.tenant").evaluate_all("rows => rows.map(r => r.dataset.id)") == [
        "acme",
        "globex",
        "initech",
    ]
    acme.locator("summary").click()
    expect(acme.locator(".features tbody tr")).to_have_count(2)
    expect(acme.locator(".features tbody tr").first).to_contain_text("chat")
    expect(acme.locator(".features tbody tr").first).to_contain_text("750,000")

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACT), full_page=True)
    if os.environ.get("FLAGMETER_UPDATE_SCREENSHOT") == "1":  # refresh the README's copy on purpose only
        shutil.copyfile(ARTIFACT, README_COPY)
    assert errors == []
    page.close()


def test_the_dashboard_fits_a_phone(demo: LocalEnv, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.set_extra_http_headers({"Authorization": f"Bearer {demo.stack.admin_token}"})
    page.goto(f"{demo.api_url}/")
    assert page.locator("li.tenant").count() == 3
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(ARTIFACT.with_name("dashboard-phone.png")), full_page=True)
    context.close()


def test_the_tenant_page_draws_the_period_chart(demo: LocalEnv, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 900, "height": 700})
    page.set_extra_http_headers({"Authorization": f"Bearer {demo.stack.admin_token}"})
    demo.post("initech", 1_000, feature="chat")
    demo.wait_total("initech", 31_000)
    page.goto(f"{demo.api_url}/tenants/initech")
    chart = page.locator("svg.chart polyline.usage")
    assert chart.count() == 1
    assert len(chart.get_attribute("points").split()) >= 4
    assert page.locator("svg.chart").bounding_box()["width"] > 600
    page.screenshot(path=str(ARTIFACT.with_name("tenant.png")), full_page=True)
    page.close()


def test_the_tenant_page_follows_new_events_without_a_reload(demo: LocalEnv, browser: Any) -> None:
    from playwright.sync_api import expect

    tenant = demo.create_tenant(quota=1_000)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.set_extra_http_headers({"Authorization": f"Bearer {demo.stack.admin_token}"})
    page.goto(f"{demo.api_url}/tenants/{tenant}")
    expect(page.locator("#used")).to_have_text("0")
    expect(page.locator("#alerts tr.none")).to_have_count(1)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    demo.post(tenant, 600, feature="chat")
    expect(page.locator("#used")).to_have_text("600", timeout=10_000)
    expect(page.locator("#percent")).to_have_text("60 %")
    demo.post(tenant, 5_000_000, feature="embed")  # far over quota
    expect(page.locator("#percent")).to_have_text("500,060 %", timeout=10_000)
    expect(page.locator("#features tr")).to_have_count(2)
    expect(page.locator("#alerts tr")).to_have_count(2, timeout=10_000)  # 80 % and 100 %
    assert page.evaluate("window.__sameDocument") is True
    assert "level-red" in (page.locator("#percent").get_attribute("class") or "")

    first = page.locator("#alerts time").first
    assert first.get_attribute("title") == first.get_attribute("datetime")
    assert first.inner_text().endswith(" UTC") and "." not in first.inner_text()
    labels = page.locator("svg.chart g.ticks text").all_text_contents()
    assert len(labels) >= 3 and labels[0] == "0" and all("e+" not in label for label in labels), labels
    boxes = [box for box in (t.bounding_box() for t in page.locator("svg.chart g.ticks text").all()) if box]
    assert len({round(box["y"]) for box in boxes}) == len(boxes), "labels stacked on each other"

    _screenshot_at(page, 1400, "tenant-1400.png")
    _screenshot_at(page, 390, "tenant-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    label = page.locator("svg.chart g.ticks text").first.bounding_box()
    assert label and label["height"] >= 9, f"axis labels unreadably small at 390 px: {label}"
    assert errors == []
    page.close()


def _screenshot_at(page: Any, width: int, name: str) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACT.with_name(name)), full_page=True)


def test_an_unknown_tenant_page_links_home(demo: LocalEnv, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 700})
    page.set_extra_http_headers({"Authorization": f"Bearer {demo.stack.admin_token}"})
    page.goto(f"{demo.api_url}/tenants/no-such-tenant")
    page.click("main a[href='/']")
    page.wait_for_url(f"{demo.api_url}/")
    assert page.locator("li.tenant").count() >= 3
    page.close()


def test_the_tenant_page_shows_reserved_tokens_and_active_reservations_live(
    demo: LocalEnv, browser: Any
) -> None:
    from playwright.sync_api import expect

    tenant = demo.create_tenant(quota=10_000)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_extra_http_headers({"Authorization": f"Bearer {demo.stack.admin_token}"})
    page.goto(f"{demo.api_url}/tenants/{tenant}")
    expect(page.locator("#reserved")).to_have_text("0")
    expect(page.locator("#reservations tr.none")).to_have_text("No active reservations.")
    page.evaluate("window.__sameDocument = true")

    for ident, tokens in (("llm-call-1", 1_500), ("llm-call-2", 250)):
        status, body, _ = demo.request(
            "POST", "/v1/reservations", {"tenant": tenant, "tokens": tokens, "id": ident, "ttl_seconds": 600}
        )
        assert status == 201, body
    expect(page.locator("#reserved")).to_have_text("1,750", timeout=10_000)
    expect(page.locator("#reservations tr")).to_have_count(2)
    expect(page.locator("#reservations tr").first).to_contain_text("llm-call-1")
    expires = page.locator("#reservations time").first
    assert expires.get_attribute("title") == expires.get_attribute("datetime")
    assert expires.inner_text().endswith(" UTC")

    status, _, _ = demo.request("DELETE", f"/v1/reservations/llm-call-1?tenant={tenant}")
    assert status == 204
    expect(page.locator("#reserved")).to_have_text("250", timeout=10_000)
    expect(page.locator("#reservations tr")).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True
    page.close()
