"""The chat page in Chromium: streaming, Stop, limits and errors explained, multi-turn with a
system prompt, and model output that stays text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gatewayctl.proxy import accounts
from gatewayctl.proxy.config import Config
from gatewayctl.proxy.store import Store
from playwright.sync_api import Browser, Locator, Page, expect

from tests.conftest import Running, StartGateway
from tests.fakes.ollama import FakeOllama
from tests.servers import serve_in_thread
from tests.webui_browser import chromium, log_in

pytestmark = pytest.mark.browser
Fake = tuple[FakeOllama, str]
ADMIN = {"role": "admin"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[Any]:
    contexts = []

    def open_as(running: Running, name: str = "alice", width: int = 1280) -> Page:
        context = browser.new_context(viewport={"width": width, "height": 900})
        contexts.append(context)
        page = context.new_page()
        log_in(page, running.url, name)
        expect(page.locator("#model option").first).to_be_attached()
        return page

    yield open_as
    for context in contexts:
        context.close()


def change(running: Running, edit: Callable[[Config], tuple[Config, Any]]) -> None:
    """Change users.toml as the CLI does, and wait (bounded) until the gateway applied it."""
    Store(running.config_path).update(edit)
    wanted = Store(running.config_path).load().users
    deadline = time.monotonic() + 5
    while running.gateway.config.users != wanted:
        assert time.monotonic() < deadline, "the gateway did not reload users.toml"
        time.sleep(0.02)


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def answer(page: Page, n: int = 0) -> Locator:
    return page.locator(".msg.assistant").nth(n)


def test_the_answer_streams_into_the_bubble(
    fake: Fake, start_gateway: StartGateway, open_chat: Any
) -> None:
    upstream, url = fake
    upstream.reply_text = "one two three four five six seven eight nine ten"
    upstream.token_delay = 0.3
    with start_gateway(url) as gw:
        page = open_chat(gw)
        send(page, "Count to ten")
        bubble = answer(page).locator(".bubble")
        expect(bubble).to_contain_text("one two")
        # Text is on screen while the engine is still generating the rest.
        assert not upstream.finished.is_set()
        expect(bubble).to_have_class("bubble streaming")
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        expect(answer(page)).to_have_attribute("data-state", "done", timeout=15_000)
        expect(bubble).to_have_text("one two three four five six seven eight nine ten")
        expect(answer(page).locator(".meta")).to_contain_text(
            "13 prompt + 10 completion = 23 tokens"
        )
        assert gw.wait_for_totals("alice", 1) == (1, 13, 10)


def test_stop_cancels_the_generation_and_it_is_charged(
    fake: Fake, start_gateway: StartGateway, open_chat: Any
) -> None:
    upstream, url = fake
    upstream.token_delay = 0.3
    with start_gateway(url, {"root": ADMIN, "alice": {"quota": 10_000}}) as gw:
        page = open_chat(gw)
        expect(page.locator("#quota-text")).to_have_text("10,000 of 10,000 tokens left")
        send(page, "Tell me a long story")
        expect(answer(page).locator(".bubble")).to_contain_text("quick brown")
        page.get_by_role("button", name="Stop").click()
        assert upstream.cancelled.wait(10), "the gateway did not cancel the upstream stream"
        expect(answer(page)).to_have_attribute("data-state", "stopped")
        expect(answer(page).locator(".meta")).to_contain_text("stopped")
        expect(page.get_by_role("button", name="Send")).to_be_visible()
        requests, prompt, completion = gw.wait_for_totals("alice", 1)
        assert requests == 1
        assert 2 <= completion < 48  # what was streamed before Stop, not the whole answer
        used = prompt + completion
        expect(page.locator("#quota-text")).to_have_text(f"{10_000 - used:,} of 10,000 tokens left")


def test_rate_limit_shows_when_to_retry(
    fake: Fake, start_gateway: StartGateway, open_chat: Any
) -> None:
    with start_gateway(fake[1], {"root": ADMIN, "alice": {"rps": 0.02, "burst": 1}}) as gw:
        page = open_chat(gw)
        send(page, "first")
        expect(answer(page, 0)).to_have_attribute("data-state", "done")
        send(page, "second")
        error = answer(page, 1).locator(".msg-error")
        expect(error).to_contain_text("Rate limit reached: try again in")
        expect(error).to_contain_text("0.02 requests per second")
        expect(page.get_by_label("Message")).to_have_value("second")  # kept for the retry


def test_quota_suspension_and_upstream_failures_are_explained(
    fake: Fake, start_gateway: StartGateway, open_chat: Any
) -> None:
    upstream, url = fake
    with start_gateway(url, {"root": ADMIN, "alice": {"quota": 0}}) as gw:
        page = open_chat(gw)
        expect(page.locator("#quota-text")).to_have_text("0 of 0 tokens left")
        send(page, "hello")
        expect(answer(page, 0).locator(".msg-error")).to_contain_text("Your token quota is used up")
        change(gw, lambda c: accounts.set_limits(c, "alice", {"quota": None}))
        upstream.mode = "drop"  # the engine dies after three tokens

        def answered_with_error(n: int, text: str) -> None:
            page.get_by_label("Message").fill("hello again")
            page.get_by_label("Message").press("Enter")
            expect(answer(page, n).locator(".msg-error")).to_contain_text(text)

        answered_with_error(1, "The model server failed in the middle of the answer")
        expect(answer(page, 1).locator(".bubble")).to_contain_text("The quick brown")
        upstream.mode = "ollama"
        change(gw, lambda c: accounts.set_suspended(c, "alice", True))
        answered_with_error(2, "Your account is suspended")


def test_multi_turn_with_a_system_prompt_and_shift_enter(
    fake: Fake, start_gateway: StartGateway, open_chat: Any
) -> None:
    upstream, url = fake
    upstream.reply_text = "Sure."
    with start_gateway(url) as gw:
        page = open_chat(gw, width=360)
        page.locator("summary", has_text="System prompt").click()
        page.get_by_label("System prompt").fill("Answer briefly.")
        box = page.get_by_label("Message")
        box.fill("line one")
        box.press("Shift+Enter")
        box.press_sequentially("line two")
        assert box.input_value() == "line one\nline two"
        box.press("Enter")
        expect(answer(page, 0)).to_have_attribute("data-state", "done")
        send(page, "And then?")
        expect(answer(page, 1)).to_have_attribute("data-state", "done")
        messages = upstream.requests_to("/v1/chat/completions")[-1].body["messages"]
        assert messages == [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "line one\nline two"},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "And then?"},
        ]
        # Only the user's own model list, and nothing is kept in localStorage but the model name.
        stored = page.evaluate("Object.keys(localStorage)")
        assert stored in ([], ["gatewayctl.model"])


def test_model_output_and_model_names_stay_text(
    start_gateway: StartGateway, open_chat: Any
) -> None:
    hostile_model = '<img src=x onerror="window.__pwned=3">'
    upstream = FakeOllama(models=("llama3.2", hostile_model))
    upstream.reply_text = (
        '<img src=x onerror="window.__pwned=1;alert(1)"> and '
        "<script>window.__pwned=2</script> and `<b>not bold</b>` and\n\n"
        "```html\n<iframe src=javascript:alert(4)></iframe>\n```"
    )
    with serve_in_thread(upstream.app) as url, start_gateway(url) as gw:
        page = open_chat(gw)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        expect(page.locator("#model option", has_text=hostile_model)).to_have_count(1)
        page.locator("#model").select_option("llama3.2")
        send(page, "be evil")
        expect(answer(page)).to_have_attribute("data-state", "done")
        bubble = answer(page).locator(".bubble")
        expect(bubble).to_contain_text('<img src=x onerror="window.__pwned=1;alert(1)">')
        expect(bubble).to_contain_text("<script>window.__pwned=2</script>")
        expect(bubble.locator("code").first).to_have_text("<b>not bold</b>")
        expect(bubble.locator("pre code")).to_have_text("<iframe src=javascript:alert(4)></iframe>")
        assert page.locator("main img, main script, main iframe, main b").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert dialogs == []
