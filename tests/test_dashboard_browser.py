"""The dashboard page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Run with `make test-browser` (installs the two packages when missing); `make test` skips it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmling.testing import SystemProcess
from tests._automation import wait_until
from tests._dashboard import DashboardProcess
from tests.conftest import Systems

pytestmark = pytest.mark.skipif(
    os.environ.get("LLMLING_BROWSER_TESTS") != "1",
    reason="browser test: run `make test-browser` (needs Debian's chromium and chromium-driver)",
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
SYSTEM = """
    agents:
      analyzer: {callback: 'cb:echo', connections: [summarizer]}
      summarizer:
        callback: 'cb:upper'
        triggers:
          - {type: time, name: nightly, cron: "0 3 * * *", prompt: nightly summary}
      flaky: {callback: 'cb:boom'}
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ll-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1050",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        import shutil

        shutil.rmtree(profile, ignore_errors=True)


JS_HELPERS = """
window.__q = (css) => [...document.querySelectorAll(css)];
window.__attrs = (css, names) => __q(css).map((e) => Object.fromEntries(names.map((n) => [n, e.getAttribute(n)])));
"""


class Page:
    """The page through short scripts: it re-renders often, so no element handle is kept across steps."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(JS_HELPERS + script, *args)

    def attrs(self, css: str, *names: str) -> list[dict[str, str | None]]:
        return self.js("return __attrs(arguments[0], arguments[1]);", css, list(names))  # type: ignore[no-any-return]

    def texts(self, css: str) -> list[str]:
        return self.js("return __q(arguments[0]).map((e) => e.textContent);", css)  # type: ignore[no-any-return]

    def click(self, css: str) -> bool:
        return self.js("const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css)  # type: ignore[no-any-return]

    def choose(self, select_id: str, value: str) -> None:
        self.js(
            "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
            "s.dispatchEvent(new Event('change'));",
            select_id,
            value,
        )

    def type(self, input_id: str, text: str) -> None:
        self.js("document.getElementById(arguments[0]).value = arguments[1];", input_id, text)


def test_the_page_in_chromium(systems: Systems, browser: Any) -> None:
    system: SystemProcess = systems.start(SYSTEM)
    shown = DashboardProcess(["dashboard", "--socket", str(system.socket), "--port", "0"], system.env)
    page = Page(browser)
    try:
        browser.get(shown.wait_url())
        assert "token=" not in browser.current_url, "the page drops the token from the address bar"

        # Every agent, ready.
        def rows() -> dict[str, str] | None:
            found = dict(
                page.js("return __q('#agents tbody tr').map((r) => [r.dataset.agent, r.cells[1].textContent]);")
            )
            return found if len(found) == 3 and set(found.values()) == {"ready"} else None

        assert set(wait_until(rows, 30, "three ready agents")) == {"analyzer", "summarizer", "flaky"}

        # A failed run, from the CLI: its trace is marked, and so is its node.
        assert system.cli("send", "flaky", "this one fails").returncode != 0
        wait_until(lambda: page.click("#traces li.failed"), 30, "the failed trace")
        # Marked failed, or dead (a dead letter: its error is not retried, so the journal keeps it as one).
        wait_until(
            lambda: page.attrs('g.node.failed[data-agent="flaky"], g.node.dead[data-agent="flaky"]', "data-run"),
            30,
            "a failed node",
        )

        # A message from the page: the downstream run is drawn under its parent.
        page.choose("send-agent", "analyzer")
        page.type("send-prompt", "ship the quarterly report")
        assert page.click("#send-button")
        wait_until(
            lambda: "echo: ship the quarterly report" in page.texts("#send-result")[0], 30, "the reply on the page"
        )

        def tree() -> tuple[dict[str, Any], dict[str, Any]] | None:
            nodes = page.attrs(
                "svg#trace-tree g.node", "data-agent", "data-run", "data-parent", "data-status", "transform"
            )
            by_agent = {node["data-agent"]: node for node in nodes if node["data-status"] == "ok"}
            if "analyzer" in by_agent and "summarizer" in by_agent:
                return by_agent["analyzer"], by_agent["summarizer"]
            return None

        parent, child = wait_until(tree, 30, "the trace tree of analyzer >> summarizer")
        assert child["data-parent"] == parent["data-run"]

        def x(node: dict[str, Any]) -> float:
            return float(node["transform"].split("(")[1].split(",")[0])

        assert x(child) > x(parent), "the child is drawn one level right of its parent"

        # The live feed shows the runs and filters by agent.
        wait_until(lambda: page.attrs('#feed li[data-event="run_finished"]', "data-agent"), 30, "runs in the feed")
        page.choose("feed-agent", "summarizer")
        shown_agents = wait_until(lambda: page.attrs("#feed li", "data-agent"), 30, "summarizer's events")
        assert {line["data-agent"] for line in shown_agents} == {"summarizer"}
        page.choose("feed-agent", "")

        # Toggle the trigger off from the page; the system says it is off, and so does the page.
        wait_until(lambda: page.click('tr[data-trigger="summarizer/nightly"] button.toggle'), 30, "the trigger")
        wait_until(
            lambda: [t for t in system.request({"t": "triggers"})["triggers"] if not t["enabled"]], 30, "disabled"
        )
        wait_until(lambda: "disabled" in page.texts("td.trigger-state"), 30, "the trigger shown off")

        # Dead letters: retried from the page where the system keeps them (delivery's `dead_letters`/`retry`);
        # a system without them shows "not available" and no button.
        text = wait_until(
            lambda: (lambda t: t if "…" not in t else None)(page.texts("#dead-letters")[0]), 30, "dead letters"
        )
        if "not available" in text:  # only a system without a journal (durability: off) has none
            assert "durability" in text and page.attrs("#dead-letters button.retry") == []
        else:
            letter = wait_until(
                lambda: page.attrs("#dead-table tr[data-run]", "data-run"), 30, "flaky's dead letter"
            )
            run_id = letter[0]["data-run"]
            assert page.click(f'#dead-table tr[data-run="{run_id}"] button.retry')
            wait_until(
                lambda: (
                    len(page.attrs(f'#feed li[data-event="run_started"][data-run="{run_id}"]', "data-run")) >= 2
                ),
                30,
                "the retried dead letter delivered again",
            )

        # History search.
        page.type("history-q", "quarterly")
        assert page.click("#history-form button")
        wait_until(lambda: len(page.attrs("#history li[data-run]", "data-run")) == 2, 30, "two runs found")

        def runs_shown() -> bool:
            cells = dict(
                page.js("return __q('#agents tbody tr').map((r) => [r.dataset.agent, r.cells[6].textContent]);")
            )
            return cells == {"analyzer": "1", "summarizer": "1", "flaky": "0"}

        wait_until(runs_shown, 30, "the runs counted per agent")

        # The screenshot the README shows: the analyzer >> summarizer trace selected.
        wait_until(
            lambda: page.attrs("#traces li.selected", "data-trace"), 30, "the sent message's trace selected"
        )
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
    finally:
        assert shown.stop() == 0, shown.stderr
