"""The playground: GET / serves one static chat page where the spec turns it on (by default on
loopback hosts only), without a key even where the API needs one. The page itself is driven
in a real headless Chromium against a real `mlxdeploy up` of the demo model."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlxdeploy.spec.settings import Spec
from tests.conftest import scripted_app, write_spec
from tests.servers import RunningServer, start_server

DEMO_SPEC = Path(__file__).parent.parent / "configs" / "demo.yaml"
DEMO_MODEL = "smollm2-135m-instruct"
KEY_ENV = "TEST_PLAYGROUND_API_KEYS"
KEY = "sk-playground-7d41c0e9b2"
TITLE = "<title>mlxdeploy playground</title>"
# Set to skip the browser tests where no Chromium can be installed; CI never sets it.
SKIP_BROWSER = "MLXDEPLOY_SKIP_BROWSER_TESTS"
# Set to a path to save a screenshot of the page after an answer streamed (docs/playground.png).
SCREENSHOT = "MLXDEPLOY_PLAYGROUND_SCREENSHOT"
WAIT_S = 120
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("host", "playground", "enabled"),
    [
        ("127.0.0.1", None, True),
        ("localhost", None, True),
        ("::1", None, True),
        ("0.0.0.0", None, False),
        ("::", None, False),
        ("10.1.2.3", None, False),
        ("0.0.0.0", True, True),
        ("127.0.0.1", False, False),
    ],
)
def test_playground_defaults_to_loopback_hosts_only(
    host: str, playground: bool | None, enabled: bool
) -> None:
    spec = Spec(model="owner/model", host=host, playground=playground)
    assert spec.playground_enabled is enabled


def test_playground_is_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXDEPLOY_PLAYGROUND", "false")
    assert Spec(model="owner/model").playground_enabled is False


# --------------------------------------------------------------------------- in-process


def get_page(tmp_path: Path, **fields: Any) -> httpx.Response:
    spec = write_spec(tmp_path / "spec.yaml", "owner/model", name="m", **fields)
    with scripted_app(spec) as app:
        return app.http.get("/")


def assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["message"]


def test_page_is_served_on_loopback_by_default(tmp_path: Path) -> None:
    response = get_page(tmp_path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert TITLE in response.text
    assert "/v1/chat/completions" in response.text and "/v1/models" in response.text


def test_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    """No CDN: every URL in the page is this server's own, and the policy says so too."""
    response = get_page(tmp_path)
    assert not re.search(r"(src|href)\s*=", response.text)
    assert not re.search(r"https?://", response.text)
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy


def test_policy_runs_exactly_the_page_script(tmp_path: Path) -> None:
    response = get_page(tmp_path)
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"].split("style-src")[0]


def test_page_is_not_served_when_turned_off(tmp_path: Path) -> None:
    assert_not_found(get_page(tmp_path, playground=False))


def test_page_is_not_served_on_other_hosts_by_default(tmp_path: Path) -> None:
    assert_not_found(get_page(tmp_path, host="0.0.0.0"))


def test_page_is_served_on_any_host_when_turned_on(tmp_path: Path) -> None:
    response = get_page(tmp_path, host="0.0.0.0", playground=True)
    assert response.status_code == 200 and TITLE in response.text


@pytest.fixture
def api_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return {"api_keys_env": KEY_ENV}


def test_page_needs_no_key_but_the_api_still_does(tmp_path: Path, api_keys: Any) -> None:
    """The page holds no secrets; the user enters the key and the page sends it as Bearer."""
    spec = write_spec(tmp_path / "spec.yaml", "owner/model", name="m", auth=api_keys)
    with scripted_app(spec) as app:
        page = app.http.get("/")
        assert page.status_code == 200 and TITLE in page.text
        assert "Authorization" in page.text and "Bearer" in page.text
        assert app.http.get("/v1/models").status_code == 401
        assert app.http.post("/", json={}).status_code == 405  # only GET / is open
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert app.http.get("/v1/models", headers=bearer).status_code == 200


def test_with_keys_and_no_playground_the_root_needs_a_key(tmp_path: Path, api_keys: Any) -> None:
    """Off, `/` is an unknown route like any other: 401 without a key, 404 with one."""
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="m", auth=api_keys, playground=False)
    with scripted_app(spec) as app:
        assert app.http.get("/").status_code == 401
        assert_not_found(app.http.get("/", headers={"Authorization": f"Bearer {KEY}"}))


# --------------------------------------------------------------------------- in Chromium


def chromium_paths() -> tuple[str, str]:
    """Chromium and its chromedriver; missing, the test fails unless SKIP_BROWSER is set."""
    browser = next(
        (p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None
    )
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = (
        "headless Chromium is needed: install Debian's chromium and chromium-driver "
        "(`make install` runs scripts/install-chromium.sh), "
        f"or set {SKIP_BROWSER}=1 to skip the browser tests"
    )
    if os.environ.get(SKIP_BROWSER):
        pytest.skip(message)
    pytest.fail(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,800")
    options.add_argument("--force-device-scale-factor=1")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def demo(cache_dir: Path) -> Iterator[RunningServer]:
    with start_server(DEMO_SPEC) as server:  # demo.yaml binds 127.0.0.1: the page is on
        yield server


class Playground:
    """The playground in the browser, by the ids and classes its HTML gives."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT_S)
        driver.get(url)
        self.wait.until(lambda d: self.options("#model option"))

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def options(self, css: str) -> list[str]:
        from selenium.webdriver.common.by import By

        return [o.get_attribute("value") for o in self.driver.find_elements(By.CSS_SELECTOR, css)]

    def fill(self, element_id: str, text: str) -> None:
        field = self.find(f"#{element_id}")
        field.clear()
        field.send_keys(text)

    def ask(self, question: str) -> Any:
        """Type the question, press Enter, and wait until the answer has streamed to its end."""
        from selenium.webdriver.common.keys import Keys

        before = len(self.driver.find_elements("css selector", ".msg.assistant"))
        self.fill("prompt", question)
        self.find("#prompt").send_keys(Keys.ENTER)
        self.wait.until(lambda d: len(self.answers()) > before)
        answer = self.answers()[-1]
        self.wait.until(lambda d: answer.get_attribute("data-state") != "streaming")
        assert answer.get_attribute("data-state") == "done", answer.text
        return answer

    def answers(self) -> list[Any]:
        return list(self.driver.find_elements("css selector", ".msg.assistant"))


@pytest.mark.process
def test_browser_streams_an_answer_from_the_demo_model(browser: Any, demo: RunningServer) -> None:
    page = Playground(browser, demo.base_url + "/")
    assert DEMO_MODEL in page.options("#model option")
    page.fill("max-tokens", "24")
    question = "What is the capital of France?"
    answer = page.ask(question)

    streamed = answer.find_element("css selector", ".content").text
    assert "Paris" in streamed
    # The page applied the SSE chunks one by one: at least one with text, then the usage one
    # (a reader that falls behind may get the text as one piece).
    assert int(answer.get_attribute("data-chunks")) >= 2
    meta = answer.find_element("css selector", ".meta").text
    assert "completion tokens" in meta and "finish: " in meta
    # What the page showed is the answer the API gives the same request (the demo is greedy).
    client = openai.OpenAI(base_url=demo.api_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=DEMO_MODEL, messages=[{"role": "user", "content": question}], max_tokens=24
    )
    assert streamed == (reply.choices[0].message.content or "").strip()
    user = browser.find_elements("css selector", ".msg.user .content")[-1].text
    assert user == question
    if os.environ.get(SCREENSHOT):
        time.sleep(0.3)  # let the cursor animation settle
        browser.save_screenshot(os.environ[SCREENSHOT])


@pytest.mark.process
def test_browser_shows_tool_calls(browser: Any, demo: RunningServer) -> None:
    page = Playground(browser, demo.base_url + "/")
    page.find("#clear").click()
    page.fill("max-tokens", "48")
    page.fill("tools", json.dumps([WEATHER_TOOL]))
    page.wait.until(lambda d: "fn:get_weather" in page.options("#tool-choice option"))
    page.find("#tool-choice option[value='required']").click()
    answer = page.ask("What is the weather in Paris?")

    card = answer.find_element("css selector", ".tool-call")
    assert "get_weather" in card.find_element("css selector", ".name").text
    arguments = json.loads(card.find_element("css selector", ".arguments").text)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert "finish: tool_calls" in answer.find_element("css selector", ".meta").text
    # The call's result goes back with the next turn, as a tool message the server accepts.
    card.find_element("css selector", ".tool-result").send_keys('{"sky": "sunny"}')
    page.find("#tool-choice option[value='none']").click()
    page.fill("max-tokens", "8")
    follow_up = page.ask("Thanks.")
    assert follow_up.get_attribute("data-state") == "done"


@pytest.mark.process
def test_browser_json_mode_pretty_prints(browser: Any, demo: RunningServer) -> None:
    page = Playground(browser, demo.base_url + "/")
    page.find("#clear").click()
    page.fill("tools", "")
    page.fill("max-tokens", "64")
    page.find("#json-mode").click()
    try:
        answer = page.ask("Give the capital of France as JSON.")
    finally:
        page.find("#json-mode").click()
    shown = answer.find_element("css selector", ".content pre.json").text
    value = json.loads(shown)
    assert isinstance(value, dict)
    assert shown == json.dumps(value, indent=2, ensure_ascii=False)  # pretty-printed


@pytest.fixture(scope="module")
def keyed_demo(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    spec_dir = tmp_path_factory.mktemp("keyed")
    spec = spec_dir / "keyed.yaml"
    spec.write_text(f"extends: {DEMO_SPEC}\nauth:\n  api_keys_env: {KEY_ENV}\n")
    with start_server(spec, env={**os.environ, KEY_ENV: KEY}) as server:
        yield server.base_url


@pytest.mark.process
def test_browser_sends_the_key_it_is_given(browser: Any, keyed_demo: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(keyed_demo + "/")
    # On a loaded machine the page may still be arriving when get() returns.
    status = WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements("css selector", "#status")
    )[0]
    WebDriverWait(browser, WAIT_S).until(lambda d: "API key" in status.text)
    assert status.get_attribute("class") == "hint error"
    key = browser.find_element("css selector", "#api-key")
    key.send_keys(KEY)
    browser.find_element("css selector", "#remember-key").click()
    browser.find_element("css selector", "#system").click()  # leaving the field loads models
    page = Playground(browser, keyed_demo + "/")  # reloaded: the remembered key is used again
    page.fill("max-tokens", "8")
    answer = page.ask("Hi!")
    assert answer.find_element("css selector", ".content").text
    browser.execute_script("localStorage.clear()")
