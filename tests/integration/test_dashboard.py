"""The web dashboard in a real browser (Debian's chromium, driven by Selenium through
chromium-driver) against a real ``streamjob run`` seen through ``streamjob ui``.

Without a browser these tests skip, unless ``STREAMJOB_REQUIRE_BROWSER=1`` (``scripts/test``
sets it), where a missing browser fails them. ``STREAMJOB_SCREENSHOTS=DIR`` saves a screenshot
of each page (how ``docs/img/dashboard-*.png`` were made).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import PYPATH

pytestmark = pytest.mark.integration

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 60  # seconds: generous for a loaded machine; every wait is for a condition


def _missing(why: str) -> None:
    if os.environ.get("STREAMJOB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why} (STREAMJOB_REQUIRE_BROWSER=1)")
    pytest.skip(why)


@pytest.fixture
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        _missing("Debian's chromium and chromium-driver are not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_until(driver, condition, what: str):
    """``condition(driver)`` once it is truthy. The page redraws its tables every 2 s, so an
    element found a moment ago may be gone: such a try is simply repeated."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=f"timed out waiting for {what}")


def click(driver, css: str) -> None:
    from selenium.webdriver.common.by import By

    wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True,
               f"a click on {css}")


def shot(driver, name: str) -> None:
    folder = os.environ.get("STREAMJOB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, max(600, min(height + 40, 1600)))
        driver.save_screenshot(str(Path(folder) / f"dashboard-{name}.png"))


@pytest.fixture
def ui_proxy():
    procs: list[subprocess.Popen[str]] = []

    def start(job) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "streamjob", "ui", job.name],
                                cwd=job.cwd, env=dict(job.env, PYTHONPATH=PYPATH),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        line = proc.stdout.readline()  # the proxy prints its address once it listens
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, f"no address from streamjob ui: {line!r}"
        return found.group(0)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_dashboard_pages_in_a_browser_against_a_real_run(run_job, ui_proxy, browser,
                                                         tmp_path):
    from selenium.webdriver.common.by import By

    job = run_job("tests.integration.jobs:wordcount_failing_once",
                  args={"records": 50_000_000, "words": 1000, "rate": 40_000,
                        "marker": str(tmp_path / "failed-once")},
                  checkpoint={"interval": "1s"})
    job.wait_for(lambda s: s.get("state") == "RUNNING", what="the job running")
    base = ui_proxy(job)

    # -- overview: the live state and rates of the job
    browser.get(base)
    assert browser.current_url == base + "ui/"
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, '.tile [data-field="state"]')
               .text == "RUNNING", "RUNNING on the overview")
    wait_until(browser, lambda d: d.find_element(
        By.CSS_SELECTOR, '[data-field="records_per_second"]').text.endswith("/s")
        and d.find_element(By.CSS_SELECTOR, '[data-field="records_in"]').text != "0",
        "records/s on the overview")
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="parallelism"]').text == "2"
    shot(browser, "overview")

    # -- job graph: one box per task, one row per subtask
    browser.find_element(By.LINK_TEXT, "Job graph").click()
    boxes = browser.find_elements(By.CSS_SELECTOR, "#job-graph g.task")
    names = [b.find_element(By.CSS_SELECTOR, ".task-name").text for b in boxes]
    assert len(boxes) == 2, names
    assert names[0].startswith("Source") and names[1].startswith("Keyed count"), names
    assert len(browser.find_elements(By.CSS_SELECTOR, "#job-graph rect.subtask")) == 4
    assert browser.find_element(By.CSS_SELECTOR, "#job-graph .edge-label").text == "KEYED"
    # live per-subtask metrics (GET /api/v1/tasks): records/s, busy and backpressured shares
    # as text, and as the colour of the row
    label = wait_until(browser, lambda d: d.find_element(By.ID, "sttext-t0-1").text
                       if "busy" in d.find_element(By.ID, "sttext-t0-1").text else None,
                       "metrics of subtask t0[1]")
    assert re.fullmatch(r"\[1\] [\d.]+ ?[kM]?/s in · busy \d+% · bp \d+%", label), label
    wait_until(browser, lambda d: all(
        d.find_element(By.ID, f"st-{t}-{i}").get_attribute("fill").startswith("rgb(")
        for t in ("t0", "t1") for i in (0, 1)), "every subtask coloured by its metrics")
    shot(browser, "graph")

    # -- checkpoints: a completed one shows up without a reload; its timeline opens
    browser.find_element(By.LINK_TEXT, "Checkpoints").click()
    first = browser.find_element(By.ID, "checkpoint-rows").text
    cid = wait_until(browser, lambda d: next(
        (r.text.split()[0] for r in d.find_elements(By.CSS_SELECTOR, "#checkpoint-rows tr")
         if "COMPLETED" in r.text and r.text not in first), None),
        "a newly completed checkpoint in the list")
    shot(browser, "checkpoints")
    click(browser, f'#checkpoint-rows a[href="/ui/checkpoints/{cid}"]')
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Checkpoint {cid}"
    svg = browser.find_element(By.CSS_SELECTOR, "#timeline svg")
    assert svg.size["width"] > 300
    rows = browser.find_elements(By.CSS_SELECTOR, "#subtask-rows tr")
    assert sorted(r.text.split()[0] for r in rows) == ["t0[0]", "t0[1]", "t1[0]", "t1[1]"]
    shot(browser, "checkpoint")

    # -- savepoints: one taken now appears in the list
    out = subprocess.run([sys.executable, "-m", "streamjob", "savepoint", job.name],
                         cwd=job.cwd, env=dict(job.env, PYTHONPATH=PYPATH),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    uri = out.stdout.strip().splitlines()[-1]
    browser.find_element(By.LINK_TEXT, "Savepoints").click()
    wait_until(browser, lambda d: uri in d.find_element(By.ID, "savepoint-rows").text,
               "the savepoint in the list")
    shot(browser, "savepoints")

    # -- failures: the user function's failure, with its exception text
    browser.find_element(By.LINK_TEXT, "Failures").click()
    text = wait_until(browser, lambda d: next(
        (r.text for r in d.find_elements(By.CSS_SELECTOR, "#failure-rows tr")
         if "bad record" in r.text), None), "the failure in the list")
    assert "ValueError: bad record" in text and "restart" in text
    click(browser, "#failure-rows summary")           # stays open across redraws
    trace = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#failure-rows pre")
                       .text, "the exception text")
    assert "Traceback (most recent call last)" in trace and "format_count" in trace
    shot(browser, "failures")

    # -- configuration: the manifest as applied
    browser.find_element(By.LINK_TEXT, "Configuration").click()
    manifest = browser.find_element(By.CSS_SELECTOR, "pre.manifest").text
    assert "pipeline: tests.integration.jobs:wordcount_failing_once" in manifest
    assert "parallelism: 2" in manifest and "interval: 1.0" in manifest
    shot(browser, "config")

    assert console_errors(browser) == []

    # -- without the token (the coordinator's own port): 401 and no data
    port = job.status()["coordinator"]["api_port"]
    browser.get(f"http://127.0.0.1:{port}/ui/")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "unauthorized" in body and "wordcount" not in body and "RUNNING" not in body
    for path in ("/ui/", "/ui/config", "/ui/checkpoints/1", "/ui/static/dashboard.js"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30)
        assert err.value.code == 401, path


def test_the_proxy_forwards_only_what_the_dashboard_reads(run_job, ui_proxy):
    job = run_job(args={"records": 50_000_000, "words": 100, "rate": 20_000})
    job.wait_for(lambda s: s.get("state") == "RUNNING", what="the job running")
    base = ui_proxy(job)
    for method, path, code in (("POST", "api/v1/savepoints", 405), ("GET", "metrics", 404),
                               ("GET", "api/v1/nothing", 404)):
        req = urllib.request.Request(base + path, method=method, data=b"{}"
                                     if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == code, path
    with urllib.request.urlopen(base + "api/v1/job", timeout=30) as resp:
        assert json.loads(resp.read())["state"] == "RUNNING"  # the token was added
