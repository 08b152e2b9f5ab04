"""End to end in a real browser: Debian's Chromium driven by Playwright, the Streamlit app
started as `streamlit run`, the backend on 127.0.0.1. Screenshots of the main states go to
test-artifacts/ (not committed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, Serve, fake_model, free_port, ingest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPLY = "Glaciers retreat because winters warm [1]."
SHORTER = "Winters warm [1]."

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (scripts/test.sh installs it)",
)


@pytest.fixture
def model():
    return fake_model([REPLY, SHORTER])


@contextmanager
def streamlit_app(backend_url: str, port: int | None = None) -> Iterator[str]:
    """`streamlit run frontend/app.py` against the backend, on 127.0.0.1:`port`."""
    port = port or free_port()
    env = {**os.environ, "BACKEND_URL": backend_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "frontend/app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextmanager
def chromium_page() -> Iterator:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


@pytest.fixture
def frontend(server: LiveServer) -> Iterator[str]:
    with streamlit_app(server.url) as url:
        yield url


@pytest.fixture
def page(frontend: str) -> Iterator:
    with chromium_page() as page:
        yield page


def sign_up(page, frontend: str, username: str, password: str) -> None:
    from playwright.sync_api import expect

    page.goto(frontend)
    page.get_by_role("tab", name="Create account").click()
    page.get_by_label("Username", exact=True).last.fill(username)
    page.get_by_label("Password (8 characters or more)").fill(password)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_text("Signed in as")).to_be_visible()


def test_sign_up_ask_see_sources_give_feedback_and_find_it_again(
    page, frontend: str, server: LiveServer, client: httpx.Client
) -> None:
    from playwright.sync_api import expect

    sign_up(page, frontend, "browser-user", "browser-password")
    page.screenshot(path=ARTIFACTS / "1-signed-in.png")

    token = client.post(
        "/auth/token", data={"username": "browser-user", "password": "browser-password"}
    )
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    ingest(
        client,
        headers,
        {
            "id": "ice",
            "text": "Glaciers retreat because winters warm.",
            "metadata": {"title": "Ice report"},
        },
    )

    page.get_by_test_id("stChatInputTextArea").fill("Why do glaciers retreat?")
    page.keyboard.press("Enter")
    expect(page.get_by_text(REPLY).first).to_be_visible()
    page.get_by_text("Sources (1)").click()
    expect(page.get_by_text("[1] Ice report")).to_be_visible()
    page.wait_for_timeout(500)  # let the expander finish opening
    page.screenshot(path=ARTIFACTS / "2-answer-with-sources.png", full_page=True)

    page.get_by_role("button", name="Good").click()
    expect(page.get_by_text("You rated this 👍")).to_be_visible()
    conversation = client.get("/conversations", headers=headers).json()["data"][0]
    stored = client.get(f"/conversations/{conversation['id']}", headers=headers).json()["messages"]
    assert stored[1]["feedback"]["rating"] == 1

    # A reload is a new session: sign in again and the conversation is there.
    page.reload()
    page.get_by_label("Username", exact=True).first.fill("browser-user")
    page.get_by_label("Password", exact=True).first.fill("browser-password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Why do glaciers retreat?").click()
    expect(page.get_by_text(REPLY).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "3-after-reload.png", full_page=True)


def test_revise_an_answer_and_switch_between_its_versions(page, frontend: str) -> None:
    from playwright.sync_api import expect

    sign_up(page, frontend, "reviser", "reviser-password")
    page.get_by_test_id("stChatInputTextArea").fill("Why do glaciers retreat?")
    page.keyboard.press("Enter")
    expect(page.get_by_text(REPLY).first).to_be_visible()

    page.get_by_text("✎ Revise this answer").click()
    page.get_by_role("button", name="Shorter").click()
    expect(page.get_by_text(SHORTER, exact=True).first).to_be_visible()
    expect(page.get_by_text("Revised: Shorter")).to_be_visible()
    expect(page.get_by_text("2 / 2")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "4-revised.png", full_page=True)

    page.get_by_role("button", name="‹").click()
    expect(page.get_by_text("1 / 2")).to_be_visible()
    expect(page.get_by_text(REPLY).first).to_be_visible()
    expect(page.get_by_text(SHORTER, exact=True)).to_have_count(0)


def test_sign_in_with_the_providers_button(serve: Serve, oidc_provider: str) -> None:
    """The app's "Sign in with …" button: the backend's login, the provider's form, back in
    the app signed in (the ticket traded for a token), the account the provider's."""
    from playwright.sync_api import expect

    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    server = serve(
        model=fake_model([REPLY]),
        oidc_issuer=oidc_provider,
        oidc_client_id="ragstream-browser",
        oidc_client_secret="browser-secret",
        oidc_provider_name="Test ID",
        oidc_next_origins=[app_url],
    )
    response = httpx.put(
        f"{oidc_provider}/users/sub-browser",
        json={"sub": "sub-browser", "preferred_username": "ada-from-test-id"},
    )
    assert response.status_code == 204
    with streamlit_app(server.url, port) as frontend, chromium_page() as page:
        page.goto(frontend)
        button = page.get_by_role("link", name="Sign in with Test ID")
        expect(button).to_be_visible()
        page.screenshot(path=ARTIFACTS / "5-sign-in-with-provider.png")
        button.click()
        page.locator('input[name="sub"]').fill("sub-browser")
        page.get_by_role("button", name="Authorize").click()
        expect(page.get_by_text("Signed in as")).to_be_visible()
        expect(page.get_by_text("ada-from-test-id")).to_be_visible()
        assert "sign_in=" not in page.url  # the ticket is spent and off the address bar
        page.get_by_test_id("stChatInputTextArea").fill("Hello?")
        page.keyboard.press("Enter")
        expect(page.get_by_text(REPLY).first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "6-signed-in-with-provider.png", full_page=True)
