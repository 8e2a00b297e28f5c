"""Login, landing pages, throttling and role checks, in Chromium against a real gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.conftest import Running
from tests.webui_browser import chromium, log_in, submit_login

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    yield context
    context.close()


def test_admin_lands_on_the_dashboard_and_a_user_on_the_chat(gw: Running, browser: Browser) -> None:
    for name, home, heading in (("root", "/admin", "Users"), ("alice", "/chat", None)):
        context = browser.new_context()
        page = context.new_page()
        log_in(page, gw.url, name)
        assert page.url == gw.url + home
        expect(page.locator("#whoami")).to_have_text(f"Signed in as {name}")
        if heading:
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            expect(page.locator("#users tr[data-user='alice']")).to_be_visible()
        else:
            expect(page.get_by_label("Message")).to_be_visible()
        page.goto(gw.url + "/")
        assert page.url == gw.url + home
        context.close()


def test_wrong_password_is_refused_then_throttled(gw: Running, context: BrowserContext) -> None:
    page = context.new_page()
    submit_login(page, gw.url, "alice", "wrong-password")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    assert page.url == gw.url + "/login"
    for _ in range(2):
        page.get_by_label("Password").fill("another-wrong-one")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_enabled()
    page.get_by_label("Password").fill("secret-pw")  # the right one, too soon
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("Too many failed logins for this account")
    assert page.url == gw.url + "/login"


def test_a_user_cannot_open_the_dashboard_or_its_api(gw: Running, context: BrowserContext) -> None:
    page = context.new_page()
    log_in(page, gw.url, "alice")
    response = page.goto(gw.url + "/admin")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading", name="Admins only")).to_be_visible()
    # Straight to the API from the logged-in page, with a valid CSRF token: refused on the server.
    statuses = page.evaluate(
        """async () => {
            const session = await (await fetch("/ui/api/session")).json();
            const headers = {"x-csrf-token": session.csrf, "content-type": "application/json"};
            const state = await fetch("/ui/api/admin/state");
            const patch = await fetch("/ui/api/admin/users/alice", {
                method: "PATCH", headers, body: JSON.stringify({quota: ""}),
            });
            return [state.status, patch.status];
        }"""
    )
    assert statuses == [403, 403]


def test_logout_ends_the_session(gw: Running, context: BrowserContext) -> None:
    page = context.new_page()
    log_in(page, gw.url, "root")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(gw.url + "/login")
    page.goto(gw.url + "/admin")
    assert page.url == gw.url + "/login"
