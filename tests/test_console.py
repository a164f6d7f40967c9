"""The web console at /console: its files as served, then the whole page in a real
headless browser (Debian's chromium through chromium-driver, driven by selenium)
against a live stack: the API under gunicorn, a real worker on a tiny checkpoint,
Postgres, Redis and the moto S3 server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from service.api.routes.console import ASSETS, STATIC
from tests.helpers import (
    IDLE,
    TEST_IMAGE_SIZE,
    TINY,
    assert_error_shape,
    make_key,
    png_bytes,
    start_api,
    start_worker,
)


def test_console_page_and_files_are_served_without_a_key(client) -> None:
    page = client.get("/console")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and page.headers["X-Content-Type-Options"] == "nosniff"
    html = page.get_data(as_text=True)
    # Nothing from another origin: the page works offline.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    referenced = re.findall(r'(?:src|href)="console/([^"]+)"', html)
    assert {"app.js", "style.css"} <= set(referenced)
    for name in referenced:
        served = client.get(f"/console/{name}")
        assert served.status_code == 200, name
        assert served.headers["Content-Security-Policy"] == csp
    assert client.get("/console/app.js").mimetype == "text/javascript"
    assert client.get("/console/style.css").mimetype == "text/css"


@pytest.mark.parametrize("path", [
    "/console/nope.js", "/console/index.html", "/console/__init__.py", "/console/",
    "/console/..%2F__init__.py", "/console//app.js",
])
def test_console_serves_only_its_own_files(client, path) -> None:
    assert_error_shape(client.get(path), 404, "not_found")


def test_every_module_the_scripts_import_is_served() -> None:
    # The scripts are ES modules with relative imports: a missing file is a blank page.
    for name in (n for n in ASSETS if n.endswith(".js")):
        source = (STATIC / name).read_text()
        assert "http://" not in source and "https://" not in source, name
        for target in re.findall(r'from "\./([^"]+)"', source):
            assert target in ASSETS, f"{name} imports {target}, which is not served"


# -- the browser --------------------------------------------------------------------


def _installed() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _install() -> str:
    """apt-get install the browser where we may; what went wrong otherwise."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return "no apt-get, or not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium",
               "chromium-driver"]
    for step in ([install], [["apt-get", "update"], install]):
        for command in step:
            out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if _installed():
            return ""
    return out.stderr[-500:]


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    found = _installed()
    if found is None:
        why = _install()
        found = _installed()
        if found is None:
            pytest.skip(f"chromium and chromium-driver cannot be installed here: {why}")
    return found


@pytest.fixture()
def driver(browser_paths, tmp_path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser  # both paths given: selenium downloads nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,960", "--lang=en-US", "--no-first-run"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    chrome.downloads = downloads  # type: ignore[attr-defined]
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def live_api(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    api, base = start_api(settings, tmp_path_factory.mktemp("console-api") / "api.log")
    yield base
    api.stop()


# A fixed default (var/ is git-ignored): under xdist a worker's printed line is not
# shown, so the folder must be findable without it.
SHOTS = Path(__file__).resolve().parent.parent / "var" / "console-screenshots"


@pytest.fixture()
def shots(capsys):  # type: ignore[no-untyped-def]
    folder = Path(os.environ.get("JANUS_CONSOLE_SCREENSHOTS") or SHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    with capsys.disabled():
        print(f"\nconsole screenshots: {folder}")
    return folder


class Steps:
    """What a person does in the console, one method per page; screenshots as it goes."""

    def __init__(self, driver, base: str, shots: Path) -> None:  # type: ignore[no-untyped-def]
        self.d, self.base, self.shots, self.count = driver, base, shots, 0

    # -- plumbing
    def wait(self, condition, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(
            lambda d: condition(), f"timed out waiting for {what}")

    def find(self, css: str):  # type: ignore[no-untyped-def]
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list:  # type: ignore[type-arg]
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        found = self.all(css)
        return found[0].text.strip() if found else ""

    def select(self, css: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        self.wait(lambda: self.all(f'{css} option[value="{value}"]'), f"{value} in {css}")
        Select(self.find(css)).select_by_value(value)

    def type(self, css: str, value: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def go(self, hash_: str) -> None:
        self.d.execute_script("location.hash = arguments[0]", hash_)

    def shot(self, name: str) -> None:
        self.count += 1
        self.d.save_screenshot(str(self.shots / f"{self.count:02d}-{name}.png"))

    def browser_log(self) -> str:
        return "\n".join(e["message"] for e in self.d.get_log("browser"))

    def images_loaded(self, css: str) -> bool:
        return bool(self.d.execute_script(
            "const i = [...document.querySelectorAll(arguments[0])];"
            "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0);", css))

    def job_page(self, status: str = "succeeded", timeout: float = 60) -> str:
        found = self.wait(lambda: re.search(r"#/jobs/(job_\w+)$", self.d.current_url),
                          "the job page")
        self.wait(lambda: self.text("#job-status") == status, f"job {status}", timeout)
        return found.group(1)

    # -- pages
    def open(self) -> None:
        self.d.get(f"{self.base}/console")
        self.wait(lambda: self.all("#key-input"), "the key form")
        self.shot("key")

    def paste_key(self, key: str, accepted: bool = True) -> None:
        self.type("#key-input", key)
        self.find("#key-save").click()
        if accepted:
            self.wait(lambda: self.all("#submit-form") and self.all("#key-shown"), "sign-in")
        else:
            self.wait(lambda: "refused" in self.text("#key-form .error"), "the refusal")
            assert self.d.execute_script("return sessionStorage.getItem('janus.apiKey')") is None

    def new_job(self, task: str, model: str) -> None:
        self.go("#/")
        self.wait(lambda: self.all("#submit-form"), "the submit form")
        self.select("#task", task)
        self.select("#model", model)

    def generate(self, model: str, prompt: str, num_images: int, seed: int) -> str:
        self.new_job("generate", model)
        self.type("#prompt", prompt)
        self.type("#num_images", str(num_images))
        self.type('#submit-form input[name="seed"]', str(seed))
        self.shot("submit")
        self.find("#submit-job").click()
        job_id = self.job_page()
        self.wait(lambda: self.images_loaded("#output-images img"), "the pictures")
        return job_id

    def output_image_sizes(self) -> list[tuple[int, int]]:
        sizes = self.d.execute_script(
            "return [...document.querySelectorAll('#output-images img')]"
            ".map(i => [i.naturalWidth, i.naturalHeight]);")
        return [tuple(s) for s in sizes]

    def queued_then_canceled(self, model: str) -> None:
        """A job nobody serves stays queued: the live view says so; Cancel ends it."""
        self.new_job("generate", model)
        self.type("#prompt", "waits for a worker that never comes")
        self.find("#submit-job").click()
        self.job_page("queued")
        self.wait(lambda: self.text("#live-note").startswith("Queued"), "the queue note")
        # The API serves /v1/jobs/{id}/events, so the live view must stream, not poll.
        self.wait(lambda: self.text("#live-mode") == "(streaming)", "the live view to stream")
        self.shot("queued")
        self.find("#cancel-job").click()
        self.wait(lambda: self.text("#job-status") == "canceled", "the cancel")
        assert not self.find("#cancel-job").is_displayed()

    def understand(self, model: str, image: Path, question: str) -> str:
        self.new_job("understand", model)
        self.find("#image").send_keys(str(image))
        self.type("#question", question)
        self.type('#submit-form input[name="max_new_tokens"]', "8")
        self.find("#submit-job").click()
        job_id = self.job_page()
        self.wait(lambda: self.text("#output-text"), "the answer")
        self.shot("understand")
        return job_id

    def gallery(self, *job_ids: str) -> None:
        self.go("#/gallery")
        cards = [f'.card[data-job-id="{j}"]' for j in job_ids]
        self.wait(lambda: all(self.all(c) for c in cards), "the cards")
        self.wait(lambda: self.images_loaded(f"{cards[0]} img"), "the thumbnail")
        self.shot("gallery")
        self.select("#filter-status", "failed")
        self.wait(lambda: "status=failed" in self.d.current_url and self.all("#gallery-empty"),
                  "the failed filter")
        self.select("#filter-status", "succeeded")
        self.wait(lambda: all(self.all(c) for c in cards), "the succeeded filter")
        self.select("#filter-model", IDLE)
        self.wait(lambda: self.all("#gallery-empty") and not self.all(cards[0]),
                  "the model filter")
        self.select("#filter-model", TINY)
        self.wait(lambda: self.all(cards[0]), "the model filter, again")

    def batch(self, path: Path) -> list[dict]:  # type: ignore[type-arg]
        self.go("#/batches")
        self.wait(lambda: self.all("#batch-file"), "the batch form")
        self.find("#batch-file").send_keys(str(path))
        self.find("#batch-upload").click()
        self.wait(lambda: re.search(r"#/batches/batch_\w+$", self.d.current_url),
                  "the batch page")
        self.wait(lambda: self.text("#batch-status") == "completed", "the batch", 90)
        assert self.text('[data-count="succeeded"] b') == "3"
        self.wait(lambda: len(self.all("#batch-results tr[data-job-id]")) == 3, "the results")
        self.wait(lambda: self.images_loaded("#batch-results img"), "the result thumbnails")
        self.shot("batch")
        self.find("#download-results").click()
        downloads = self.d.downloads

        def saved() -> list[Path]:
            return [p for p in downloads.iterdir() if p.suffix == ".jsonl"]

        self.wait(saved, "the results download")
        return [json.loads(line) for line in saved()[0].read_text().splitlines()]

    def overview(self, cards: int) -> None:
        """Every job so far in the gallery (docs/console.png is this screenshot)."""
        self.go("#/gallery")
        self.wait(lambda: len(self.all(".card")) >= cards, f"{cards} cards")
        self.wait(lambda: self.images_loaded(".card img"), "the thumbnails")
        self.shot("overview")

    def key_survives_reload_and_is_forgotten(self) -> None:
        self.d.refresh()
        self.wait(lambda: self.all("#key-shown"), "the page, still signed in")
        assert not self.all("#key-form")
        self.find("#forget-key").click()
        self.wait(lambda: self.all("#key-form"), "the key form again")
        assert self.d.execute_script("return sessionStorage.getItem('janus.apiKey')") is None


@pytest.mark.slow
def test_console_in_a_browser(driver, live_api, settings, spawn, shots, tmp_path) -> None:
    key = make_key(settings, "console")
    start_worker(spawn, settings)
    steps = Steps(driver, live_api, shots)
    try:
        steps.open()
        steps.paste_key("not-a-key", accepted=False)
        steps.paste_key(key)
        assert driver.execute_script("return sessionStorage.getItem('janus.apiKey')") == key
        assert driver.execute_script("return localStorage.length") == 0

        job_id = steps.generate(TINY, "a red fox in snow", num_images=4, seed=7)
        assert steps.output_image_sizes() == [(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)] * 4
        steps.shot("job")
        steps.queued_then_canceled(IDLE)

        image = tmp_path / "blue.png"
        image.write_bytes(png_bytes((48, 40), "blue"))
        asked = steps.understand(TINY, image, "What is in the picture?")
        answer = requests.get(f"{live_api}/v1/jobs/{asked}", timeout=10,
                              headers={"Authorization": f"Bearer {key}"}).json()
        assert steps.text("#output-text") == answer["output"]["text"].strip()

        steps.gallery(job_id, asked)

        lines = [{"custom_id": c, "model": TINY, "task": "generate",
                  "input": {"prompt": f"a {c} in snow", "seed": i}}
                 for i, c in enumerate(["fox", "cat", "owl"])]
        jobs = tmp_path / "three.jsonl"
        jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
        results = steps.batch(jobs)
        assert [r["custom_id"] for r in results] == ["fox", "cat", "owl"]
        assert {r["status"] for r in results} == {"succeeded"}
        steps.overview(cards=6)

        steps.key_survives_reload_and_is_forgotten()
    except Exception as exc:
        steps.shot("failure")
        raise AssertionError(f"{exc}\nbrowser log:\n{steps.browser_log()}") from exc
    # Failed requests (the refused key; the event stream where none is served) are
    # logged too, but no script may have thrown.
    assert "Uncaught" not in steps.browser_log()


# The stream client alone, in the browser, over scripted responses (pure client logic:
# SSE parsing across chunk boundaries, resuming with Last-Event-ID after a break, and
# polling where no event stream is served): tests/data/console_stream_client.js.
STREAM_CLIENT = Path(__file__).parent / "data" / "console_stream_client.js"


@pytest.mark.slow
def test_console_stream_client_in_a_browser(driver, live_api) -> None:
    driver.get(f"{live_api}/console")
    driver.set_script_timeout(30)
    got = driver.execute_async_script(STREAM_CLIENT.read_text())
    assert "error" not in got, got.get("error")
    assert got["parsed"] == [
        {"event": "progress", "data": '{"step": 1, "steps": 2}', "id": "1"},
        {"event": "token", "data": "a\nb", "id": "2"},
        {"event": "token", "data": "c", "id": None},
    ]  # the heartbeat is skipped, and an event cut off before its blank line is dropped
    # The stream broke after event 2-0: the client resumed from there, nothing repeated.
    assert got["asked"] == [None, "2-0"]
    assert got["streamed"]["seen"] == [
        ["queued", {"queue_position": 3}], ["started", {}], ["token", {"text": "hi"}],
        ["completed", {"id": "job_a", "status": "succeeded"}]]
    assert got["streamed"]["modes"] == ["stream", "stream", "done"]
    # No event stream here (404): the job is polled until it ends.
    assert got["polled"]["seen"] == [["snapshot", "queued"], ["snapshot", "running"],
                                     ["snapshot", "succeeded"]]
    assert got["polled"]["modes"] == ["polling", "done"]
