"""Screenshots of the real web UI for the README, taken with Chromium.

Starts a fake Ollama and a gateway on a temporary copy of the demo users.toml, puts a day of
usage into the ledger (through the ledger's own API, with past timestamps) plus a few real
requests through the gateway, logs in through the login form, and captures the dashboard and
the chat at 1440 px and 360 px wide into docs/screenshots/.

    python scripts/screenshots.py            # writes docs/screenshots/*.png
    python scripts/screenshots.py --serve    # the same demo, kept running for a look by hand
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gatewayctl.proxy.app import create_app  # noqa: E402
from gatewayctl.proxy.config import ledger_path, load_config  # noqa: E402
from gatewayctl.proxy.demo import DEMO_USERS  # noqa: E402
from gatewayctl.proxy.ledger import Ledger, UsageRecord  # noqa: E402
from playwright.sync_api import Browser, Page  # noqa: E402

from tests.fakes.ollama import FakeOllama  # noqa: E402
from tests.servers import serve_in_thread  # noqa: E402
from tests.webui_browser import chromium, log_in  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
ANSWER = """A token bucket refills at a steady rate and lets short bursts through:

```python
def allow(bucket, now):
    bucket.tokens = min(bucket.size, bucket.tokens + (now - bucket.t) * bucket.rate)
    bucket.t = now
    if bucket.tokens >= 1:
        bucket.tokens -= 1
        return True
    return False
```

With `rps = 2` and `burst = 4`, four requests pass at once, then two per second."""
# (user, typical tokens per request, requests per busy hour): a day that looks like a day.
HISTORY = [("alice", 900, 9), ("bob", 260, 3), ("charlie", 60, 1), ("admin", 400, 1)]


def write_history(config_path: Path) -> None:
    """A day of past usage, recorded through the ledger as the gateway would."""
    rng = random.Random(7)
    ledger = Ledger(ledger_path(load_config(config_path), config_path))
    ledger.open()
    now = time.time()
    budget = {"bob": 13_500, "charlie": 1_700}  # near their quotas, so the bars say something
    for hours_ago in range(24, 0, -1):
        daytime = 0.25 + 0.75 * max(0.0, 1 - abs(hours_ago - 10) / 10)
        for user, size, per_hour in HISTORY:
            for _ in range(rng.randint(0, round(per_hour * daytime * 2))):
                completion = rng.randint(size // 3, size)
                prompt = rng.randint(20, size // 2)
                if user in budget:
                    if budget[user] < prompt + completion:
                        continue
                    budget[user] -= prompt + completion
                ts = now - hours_ago * 3600 + rng.uniform(0, 3600)
                ledger.record(
                    UsageRecord(
                        ts=ts,
                        user=user,
                        model=rng.choice(["llama3.2", "qwen2.5:0.5b"]),
                        endpoint="chat.completions",
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        estimated=False,
                        status=200,
                        outcome="ok",
                        latency_ms=rng.uniform(300, 4000),
                        ttft_ms=rng.uniform(40, 300),
                        request_id=uuid.uuid4().hex,
                    )
                )
    ledger.close()


@contextmanager
def demo() -> Iterator[tuple[str, FakeOllama]]:
    """The fake engine and a gateway on a temporary copy of the demo users.toml."""
    with tempfile.TemporaryDirectory(prefix="gatewayctl-demo-") as tmp:
        config_path = Path(tmp) / "users.toml"
        shutil.copy(ROOT / "users.toml", config_path)
        write_history(config_path)
        fake = FakeOllama()
        with serve_in_thread(fake.app) as upstream:
            app = create_app(config_path, upstream=upstream)
            with serve_in_thread(app) as url:
                for user, count in (("alice", 3), ("bob", 2), ("charlie", 1)):
                    key = DEMO_USERS[user][1]
                    headers = {"authorization": f"Bearer {key}"}
                    for _ in range(count):
                        body = {
                            "model": "llama3.2",
                            "messages": [{"role": "user", "content": "Say something short."}],
                            "max_tokens": 20,
                        }
                        httpx.post(
                            f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10
                        )
                yield url, fake


@contextmanager
def busy(url: str, fake: FakeOllama, user: str) -> Iterator[None]:
    """A slow answer streaming for ``user`` meanwhile, so the dashboard has one in flight."""
    stop = threading.Event()
    headers = {"authorization": f"Bearer {DEMO_USERS[user][1]}"}
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Go on."}],
        "stream": True,
    }

    def run() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            for _ in response.iter_bytes():
                if stop.is_set():
                    return

    fake.token_delay = 0.5
    fake.first_token_sent.clear()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    fake.first_token_sent.wait(10)
    try:
        yield
    finally:
        stop.set()
        fake.token_delay = 0.0
        thread.join(10)


def open_as(browser: Browser, url: str, user: str, width: int) -> Page:
    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    log_in(page, url, user, DEMO_USERS[user][0])
    return page


def shoot(url: str, fake: FakeOllama) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        for width, suffix in ((1440, ""), (360, "-360")):
            page = open_as(browser, url, "admin", width)
            page.locator("#users tr[data-user='charlie']").wait_for()
            page.locator("#chart rect.col").first.wait_for()
            with busy(url, fake, "bob"):
                page.locator("#users tr[data-user='bob'] td[data-label='In flight']").filter(
                    has_text="1"
                ).wait_for()
                page.screenshot(path=OUT / f"dashboard{suffix}.png", full_page=True)
            page.context.close()

            page = open_as(browser, url, "alice", width)
            page.locator("#model option").first.wait_for(state="attached")
            fake.reply_text = "Hello! Ask me anything about the gateway."
            page.get_by_label("Message").fill("Hi there")
            page.keyboard.press("Enter")
            page.locator(".msg.assistant[data-state='done']").wait_for()
            fake.reply_text = ANSWER
            page.get_by_label("Message").fill("How does the rate limit work? Show me in Python.")
            page.keyboard.press("Enter")
            page.locator(".msg.assistant[data-state='done']").nth(1).wait_for()
            page.screenshot(path=OUT / f"chat{suffix}.png", full_page=True)
            page.context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep the demo running")
    args = parser.parse_args()
    with demo() as (url, fake):
        if args.serve:
            print(f"gateway at {url}  (log in as admin/admin123 or alice/alice123; Ctrl-C stops)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return
        shoot(url, fake)
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.png')))} in {OUT}")


if __name__ == "__main__":
    main()
