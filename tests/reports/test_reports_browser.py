"""In Chromium: a resident reports a broken streetlight with a photo, once by typing an
address without touching the map and once by clicking the map; the éclairage agent
acknowledges and resolves it with a reply; the resident's mailbox (a real SMTP server)
receives the confirmation link and both updates. axe-core on every page on the way."""

from __future__ import annotations

import email
import re
import time
from email import policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from conftest import STRONG_PASSWORD, make_agent
from live_server import communs_serve, free_port
from PIL import Image
from test_browser import DEMO_SLUG, assert_no_axe_violations, browser, log_in  # noqa: F401

from communs.core import service as core
from communs.core.db import Database

pytestmark = pytest.mark.browser
RESIDENT = "resident@example.org"
AGENT = "eclairage.agent@example.org"


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def wait_for(self, address: str, subject: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.to(address):
                if subject in message["Subject"]:
                    return message.get_content()
            time.sleep(0.1)
        raise AssertionError(f"no mail to {address} about {subject!r}: {self.subjects()}")

    def subjects(self) -> list[str]:
        return [f"{m['To']}: {m['Subject']}" for m in self.messages]


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture
def site(browser, mailbox, database_url: str, tmp_path: Path):  # noqa: F811
    box, port = mailbox
    env = {
        "COMMUNS_SMTP_HOST": "127.0.0.1",
        "COMMUNS_SMTP_PORT": str(port),
        "COMMUNS_JOB_POLL_SECONDS": "0.1",
    }
    with communs_serve(database_url, tmp_path, "--demo", env=env) as url:
        db = Database(database_url)
        with db.read() as session:
            commune = core.commune_by_slug(session, DEMO_SLUG)
            lighting = next(
                s for s in core.list_services(session, commune.id) if s.slug == "eclairage-public"
            )
        make_agent(db, commune.id, AGENT, service_id=lighting.id)
        db.close()
        context = browser.new_context(base_url=url, locale="fr-FR")
        context.set_default_timeout(15_000)
        yield context.new_page(), box
        context.close()


def photo_file(tmp_path: Path) -> Path:
    path = tmp_path / "lampadaire.jpg"
    Image.new("RGB", (800, 600), (20, 20, 60)).save(path, "JPEG")
    return path


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script> éteint'


def fill_report(page, tmp_path: Path, description: str = "Le lampadaire est éteint.") -> None:
    page.select_option("#field-service_code", "lampadaire-en-panne")
    page.fill("#field-description", description)
    page.set_input_files("#field-photos", str(photo_file(tmp_path)))
    page.fill("#field-email", RESIDENT)


def send_and_confirm(page, box: Mailbox) -> int:
    with page.expect_navigation():
        page.click("#report-form button[type=submit]")
    number = int(re.search(r"numéro de signalement : (\d+)", page.content()).group(1))
    body = box.wait_for(RESIDENT, f"Confirmez votre signalement n° {number}")
    link = re.search(r"/[\w-]+/signalements/\d+/confirmer/\S+", body).group(0)
    page.goto(link)
    assert "confirmé" in page.locator("main .notice").inner_text()
    return number


def test_a_resident_reports_twice_and_the_lighting_agent_resolves(site, tmp_path):
    page, box = site
    form = f"/{DEMO_SLUG}/signalements/nouveau"
    assert_no_axe_violations(page, form)

    # By typing an address, without touching the map.
    page.locator("#address-query").press_sequentially("rue emi", delay=30)
    page.locator("#address-options option").first.wait_for(state="attached")
    label = page.locator("#address-options option").first.get_attribute("value")
    page.fill("#address-query", label)
    page.dispatch_event("#address-query", "change")
    fill_report(page, tmp_path)
    by_address = send_and_confirm(page, box)

    # By clicking the map.
    page.goto(form)
    page.locator("#report-map canvas").wait_for()
    box_of_map = page.locator("#report-map").bounding_box()
    page.mouse.click(
        box_of_map["x"] + box_of_map["width"] / 2, box_of_map["y"] + box_of_map["height"] / 2
    )
    page.wait_for_function("document.getElementById('field-lon').value !== ''")
    assert "Point placé" in page.locator("#location-status").inner_text()
    fill_report(page, tmp_path, HOSTILE)
    by_map = send_and_confirm(page, box)
    page.goto(f"/{DEMO_SLUG}/signalements/{by_map}")
    assert HOSTILE in page.locator(".report-description").inner_text()
    assert page.evaluate("window.pwned") is None  # the markup stayed text

    report_page = f"/{DEMO_SLUG}/signalements/{by_address}"
    assert_no_axe_violations(page, report_page)
    assert page.locator("main img").count() == 1
    assert_no_axe_violations(page, f"/{DEMO_SLUG}/signalements")

    log_in(page, AGENT, STRONG_PASSWORD)
    assert_no_axe_violations(page, f"/{DEMO_SLUG}/admin/signalements")
    queue = page.content()
    for number in (by_address, by_map):
        assert f"/{DEMO_SLUG}/admin/signalements/{number}" in queue
    assert_no_axe_violations(page, f"/{DEMO_SLUG}/admin/signalements/nouveau")
    assert_no_axe_violations(page, f"/{DEMO_SLUG}/signalements/statistiques")
    assert_no_axe_violations(page, f"/{DEMO_SLUG}/admin/signalements/{by_address}")
    page.goto(f"/{DEMO_SLUG}/admin/signalements/{by_map}")
    assert page.evaluate("window.pwned") is None
    page.goto(f"/{DEMO_SLUG}/admin/signalements/{by_address}")
    for status, reply in (
        ("acknowledged", "Nous avons bien reçu votre signalement."),
        ("resolved", "La lampe a été remplacée."),
    ):
        page.select_option("#field-status", status)
        page.fill("#field-reply", reply)
        with page.expect_navigation():
            page.click("form[action$='/statut'] button[type=submit]")
    assert "La lampe a été remplacée." in box.wait_for(
        RESIDENT, f"Signalement n° {by_address} : Résolu"
    )
    assert "bien reçu" in box.wait_for(RESIDENT, f"Signalement n° {by_address} : Pris en compte")
    image = page.goto(f"/{DEMO_SLUG}/signalements/{by_map}")
    assert image is not None and image.status == 200
