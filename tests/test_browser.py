"""End-to-end tests in a real browser: Debian's Chromium driven by Playwright.

A real server (``communs serve --demo``) runs as a subprocess on the test database
(SQLite, and PostgreSQL when COMMUNS_TEST_DATABASE_URL is set). The scenarios are the
acceptance of the shell: login and language switch, tenancy seen from an agent's
browser, no axe-core violation on the public and administration pages, keyboard use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IN_CI, STRONG_PASSWORD
from live_server import communs_serve

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
]
INSTALL_HINT = "apt-get install chromium to run browser tests"
DEMO_SLUG = "belvedere-sur-loire"
DEMO_NAME = "Belvédère-sur-Loire"


@dataclass(frozen=True)
class Server:
    url: str
    credentials: dict[str, str]

    @property
    def admin_email(self) -> str:
        return self.credentials["admin_email"]

    @property
    def admin_password(self) -> str:
        return self.credentials["admin_password"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: the CI image must {INSTALL_HINT}.")
        pytest.skip(INSTALL_HINT)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def server(browser: object, database_url: str, tmp_path: Path) -> Iterator[Server]:
    """``communs serve --demo`` on a free port, on the test database."""
    with communs_serve(database_url, tmp_path, "--demo") as url:
        credentials = json.loads((tmp_path / "demo-credentials.json").read_text())
        yield Server(url, credentials)


@pytest.fixture
def page(browser, server: Server):
    context = browser.new_context(base_url=server.url, locale="fr-FR")
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


# ---------------------------------------------------------------- helpers


def log_in(page, email: str, password: str) -> None:
    page.goto("/login")
    page.fill("#field-email", email)
    page.fill("#field-password", password)
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert page.locator("form[action='/logout'] button").is_visible(), page.content()


def log_out(page) -> None:
    with page.expect_navigation():
        page.click("form[action='/logout'] button")
    assert page.locator(".account a[href='/login']").is_visible()


def status_of(page, path: str) -> int:
    response = page.goto(path)
    assert response is not None
    return response.status


def nav_labels(page) -> list[str]:
    return [text.strip() for text in page.locator(".main-nav a").all_inner_texts()]


def notice(page) -> str:
    return " ".join(page.locator("main .notice").all_inner_texts())


def assert_no_axe_violations(page, path: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    response = page.goto(path)
    assert response is not None and response.status == 200, f"{path}: {response}"
    results = Axe().run(page)
    assert results.violations_count == 0, f"{path}\n{results.generate_report()}"


# ---------------------------------------------------------------- scenarios


def test_keyboard_login_then_language_switch(page, server: Server) -> None:
    # Keyboard only: the first Tab reaches the skip link, Enter moves focus to the content.
    page.goto("/login")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.textContent.trim()")
    assert focused == "Aller au contenu"
    assert page.evaluate("() => document.activeElement.classList.contains('skip-link')")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement.id === 'contenu'")

    # The login form, filled and submitted with Tab, typing and Enter.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "field-email"
    page.keyboard.type(server.admin_email)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "field-password"
    page.keyboard.type(server.admin_password)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == f"{server.url}/"
    logout = page.locator("form[action='/logout'] button")
    assert logout.inner_text().strip() == "Se déconnecter"
    assert page.locator(".account-name").inner_text().strip() == "Administratrice de la démo"
    assert page.locator("html").get_attribute("lang") == "fr"

    # English through the header link: the page, its language and the cookie change.
    with page.expect_navigation():
        page.click(".lang-switch a[hreflang='en']")
    assert page.url == f"{server.url}/"
    assert page.locator("html").get_attribute("lang") == "en"
    cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
    assert cookies.get("communs_lang") == "en"
    assert page.locator(".lang-switch a[hreflang='en']").get_attribute("aria-current") == "true"
    assert page.locator(".lang-switch a[hreflang='fr']").get_attribute("aria-current") is None
    assert logout.is_visible()  # still logged in
    assert logout.inner_text().strip() == "Log out"
    assert page.locator(".skip-link").inner_text().strip() == "Skip to content"
    assert page.locator("h1").inner_text().strip() == "Communs, the shared smart city platform"

    # The language sticks on other pages, then back to French.
    page.goto("/accessibilite")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").inner_text().strip() == "Accessibility statement"
    with page.expect_navigation():
        page.click(".lang-switch a[hreflang='fr']")
    assert page.url == f"{server.url}/accessibilite"
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("h1").inner_text().strip() == "Déclaration d'accessibilité"
    assert logout.inner_text().strip() == "Se déconnecter"
    cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
    assert cookies.get("communs_lang") == "fr"


def test_agent_sees_only_own_commune(page, server: Server) -> None:
    log_in(page, server.admin_email, server.admin_password)

    page.goto("/admin/communes")
    page.fill("#field-name", "Villebrume")
    page.fill("#field-insee_code", "37998")
    page.fill("#field-boundary", "")
    with page.expect_navigation():
        page.click("form[action='/admin/communes'] button[type=submit]")
    assert page.url == f"{server.url}/admin/communes", page.content()
    assert "Villebrume" in notice(page)
    row = page.locator("table.data tr", has_text="Villebrume")
    assert row.locator("code").inner_text() == "villebrume"

    page.goto("/admin/users")
    page.fill("#field-name", "Agathe Agent")
    page.fill("#field-email", "agathe@villebrume.example")
    page.fill("#field-password", STRONG_PASSWORD)
    page.select_option("#field-commune_id", label="Villebrume")
    page.select_option("#field-role", value="agent")
    with page.expect_navigation():
        page.click("form[action='/admin/users'] button[type=submit]")
    assert page.url == f"{server.url}/admin/users", page.content()
    assert "agathe@villebrume.example" in notice(page)
    row = page.locator("table.data tbody tr", has_text="agathe@villebrume.example")
    assert "Villebrume" in row.inner_text()
    log_out(page)

    log_in(page, "agathe@villebrume.example", STRONG_PASSWORD)
    assert page.locator(".account-name").inner_text().strip() == "Agathe Agent"
    labels = nav_labels(page)
    assert "Villebrume" in labels
    assert DEMO_NAME not in labels
    assert "Administration de l'instance" not in labels
    assert page.locator(".main-nav a[href='/villebrume/']").count() == 1
    assert page.locator(f".main-nav a[href='/{DEMO_SLUG}/']").count() == 0

    page.goto("/villebrume/")
    assert page.locator("h1").inner_text().strip() == "Villebrume"
    assert "Administration de la commune" not in nav_labels(page)

    for path in ("/villebrume/admin/", f"/{DEMO_SLUG}/admin/", "/admin/", "/admin/users"):
        assert status_of(page, path) == 403, path
        assert page.locator("h1").inner_text().strip() == "Accès refusé", path


def test_no_axe_violations(page, server: Server) -> None:
    for path in (
        "/",
        "/login",
        "/accessibilite",
        "/mentions-legales",
        "/donnees-personnelles",
        f"/{DEMO_SLUG}/",
    ):
        assert_no_axe_violations(page, path)
    log_in(page, server.admin_email, server.admin_password)
    for path in (
        "/admin/",
        "/admin/communes",
        "/admin/communes/1",
        "/admin/users",
        "/admin/api-keys",
        "/admin/jobs",
        f"/{DEMO_SLUG}/admin/",
    ):
        assert_no_axe_violations(page, path)


def test_pages_fit_a_phone_screen(page, server: Server) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    log_in(page, server.admin_email, server.admin_password)
    for path in ("/", f"/{DEMO_SLUG}/", "/admin/users", f"/{DEMO_SLUG}/admin/"):
        page.goto(path)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"


def test_address_field_suggests_addresses_as_one_types(page, server: Server) -> None:
    page.goto(f"/{DEMO_SLUG}/")
    page.locator("#address-query").press_sequentially("rue emi", delay=30)
    options = page.locator("#address-options option")
    options.first.wait_for(state="attached", timeout=5000)
    values = options.evaluate_all("nodes => nodes.map(n => n.value)")
    assert values and all("Rue Émile Zola" in value for value in values), values
    assert "adresses trouvées" in page.locator("#address-status").inner_text()
