"""report.html and a latent dashboard rendered in real headless Chromium: every image decodes, every table
and histogram is there, sorting works, and the page logs no console error or uncaught exception.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (NUL-terminated JSON on
file descriptors 3 and 4), which needs nothing beyond the standard library. CI installs Chromium with
`.ci/install-chromium.sh`; without it these tests skip and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from randsae.model_sweep import ModelOutcome, save_outcomes
from randsae.report import write_report
from randsae.report.latent_data import HISTOGRAM_BINS, N_TOP_WINDOWS
from randsae.report.sweep import write_sweep_report
from randsae.run_dir import RunDir
from tests.helpers import build_report_run

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Chromium is not installed (CI installs it with .ci/install-chromium.sh)"
    ),
]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
TIMEOUT_S = 60.0


class Browser:
    """One headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path):
        assert CHROMIUM is not None  # the tests that start a browser skip without it
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes() -> None:  # in the child: DevTools reads fd 3 and writes fd 4
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire_pipes,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _send(self, message: dict) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium sent nothing in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, *, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, path: Path) -> None:
        """Navigate and wait for the load event (all embedded images decoded)."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=path.resolve().as_uri())
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._receive(deadline))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")  # absent when the expression is undefined

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-logged errors (e.g. a failed resource load)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(arg.get("value")) for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def close(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = build_report_run(tmp_path_factory.mktemp("browser"), layers=(0, 1))
    write_report(run, progress=False)
    return run


@pytest.fixture(scope="module")
def browser():
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(Path(profile))
        yield browser
        browser.close()


IMAGES = "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
TABLES = (
    "Object.fromEntries(Array.from(document.querySelectorAll('table')).map((t, n) => "
    "[t.id || 'table' + n, t.tBodies[0] ? t.tBodies[0].rows.length : 0]))"
)


def test_report_renders_every_plot_and_table_without_errors(run, browser):
    browser.open(run / "report.html")
    images = browser.evaluate(IMAGES)
    assert len(images) == 4  # metrics by layer, fuzzing ROC, detection ROC, entropy vs AUROC
    assert all(image["complete"] and image["width"] > 100 for image in images), images
    tables = browser.evaluate(TABLES)
    metrics = json.loads((run / "metrics.json").read_text())
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert tables["quality"] == len(metrics)
    assert tables["interp"] == len(json.loads((run / "interp" / "token" / "interp.json").read_text())["saes"])
    assert tables["analysis"] == len(analysis["saes"])
    assert tables["separation"] == sum(row["layer"] == "all" for row in analysis["separation"])
    assert browser.errors() == []


def test_clicking_a_header_sorts_the_table(run, browser):
    browser.open(run / "report.html")
    column = "Array.from(document.querySelectorAll('#quality tbody tr')).map(r => parseFloat(r.cells[2].dataset.sort))"
    browser.evaluate("document.querySelectorAll('#quality th')[2].click()")
    first = browser.evaluate(column)
    assert first == sorted(first, reverse=True)
    browser.evaluate("document.querySelectorAll('#quality th')[2].click()")
    second = browser.evaluate(column)
    assert second == sorted(second) and sorted(first) == sorted(second)
    assert browser.errors() == []


def test_latent_dashboard_renders_with_its_histogram_windows_and_links(run, browser):
    page = next((run / "dashboards" / "trained" / "layer1").glob("latent*.html"))
    browser.open(page)
    bars = browser.evaluate("document.querySelectorAll('svg.histogram rect').length")
    assert bars == HISTOGRAM_BINS
    windows = browser.evaluate("document.querySelectorAll('.window').length")
    feature = json.loads(page.with_suffix(".json").read_text())
    assert windows == len(feature["activations"]) and windows > N_TOP_WINDOWS // 2
    assert browser.evaluate("document.querySelectorAll('.window .tok').length") > 0
    links = browser.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.href)")
    for variant in ("step0", "rerandomized", "control"):
        assert any(link.endswith(f"layer1.html#{variant}") for link in links)
    assert browser.errors() == []
    browser.open(run / "dashboards" / "layer1.html")
    assert browser.evaluate("document.querySelectorAll('table.sortable').length") == 4
    assert browser.errors() == []


def test_sweep_report_renders_the_grid_the_gap_and_each_model(tmp_path, browser):
    """Two synthetic runs of different sizes as a multi-model run's parts, one more model that failed."""
    root = tmp_path / "sweep"
    outcomes = []
    for label, size, seed in (("small", 1_000_000, 0), ("large", 9_000_000, 1)):
        part = build_report_run(tmp_path / label, variants=("trained", "rerandomized", "control"), seed=seed)
        (root / "models").mkdir(parents=True, exist_ok=True)
        part.rename(root / "models" / label)
        outcomes.append(ModelOutcome(label, label, "done", size, 3, (0, 1, 2)))
    outcomes.append(ModelOutcome("broken", "broken", "failed", error="could not load it"))
    save_outcomes(RunDir(root), outcomes)
    browser.open(write_sweep_report(root, progress=False))
    images = browser.evaluate(IMAGES)
    assert [image["alt"] for image in images] == [
        "measurements against layer, one column per model",
        "trained-minus-variant gap against model parameters",
    ]
    assert all(image["complete"] and image["width"] > 300 for image in images), images
    tables = browser.evaluate(TABLES)
    assert tables["means-small"] == tables["means-large"] == 3  # one row per variant
    assert tables["verdict-small"] > 0 and "means-broken" not in tables
    assert browser.evaluate("document.querySelectorAll('h3[id^=model-]').length") == 3
    assert browser.errors() == []


def test_the_error_check_sees_console_errors_exceptions_and_missing_images(tmp_path, browser):
    """Guards the checks above: a page with each kind of error must be reported."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png">'
        '<script>console.error("logged error"); notDefined();</script></body></html>'
    )
    browser.open(page)
    errors = browser.errors()
    assert any("logged error" in e for e in errors)
    assert any("notDefined" in e or "Uncaught" in e for e in errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors
