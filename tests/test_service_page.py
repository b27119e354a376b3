"""The page at `/` in a real headless Chromium (Debian's, driven by Playwright): a job submitted from the form on
the tiny model, its progress changing in the queue, its preview playing as windows finish, the finished video
playing in the gallery, "again with changes" filling the form from its settings, and a bad value shown on the
form naming its field. A screenshot is kept beside the test's files (and in $SKYREELS_SCREENSHOTS when set)."""

import os
import shutil
import time
from pathlib import Path

import pytest

from .service_helpers import Server, need_ray

pytestmark = pytest.mark.slow  # a browser and a service: about half a minute

CHROMIUM = os.environ.get("SKYREELS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("SKYREELS_REQUIRE_BROWSER"):
            pytest.fail(f"no Chromium at {CHROMIUM}: CI installs it (apt-get install chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SKYREELS_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def play(video) -> dict:
    """Play a <video> element for a moment: its duration, where it got to, and whether it is playing."""
    return video.evaluate("""async (v) => {
        v.muted = true;
        if (v.readyState < 1) await new Promise((ok, no) => { v.onloadedmetadata = ok; v.onerror = no; });
        await v.play();
        const start = performance.now();
        while (v.currentTime === 0 && performance.now() - start < 5000) await new Promise(r => setTimeout(r, 50));
        return {duration: v.duration, time: v.currentTime, paused: v.paused, width: v.videoWidth};
    }""")


@pytest.mark.parametrize("workers", [[], ["--ray", "local"]], ids=["processes", "ray-local"])
def test_a_job_from_the_page_shows_progress_and_plays(hub_models, browser, tmp_path, workers):
    if workers:
        need_ray()
    with Server(tmp_path / "state", "--model", "tiny", *workers) as server:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url + "/")
        page.wait_for_selector("#advanced-fields label[data-field='steps']", state="attached")
        page.select_option("#command", "extend")
        page.wait_for_selector("#advanced-fields label[data-field='base_frames']", state="attached")
        page.fill("#prompt", "a red fox running through snow")
        page.select_option("#length-unit", "frames")
        page.fill("#length", "97")
        page.fill("#seed", "7")
        page.click("#advanced summary")
        for name, value in (("steps", "6"), ("base_frames", "17"), ("overlap", "5"), ("height", "48"),
                            ("width", "48")):
            page.fill(f"#advanced-fields [name={name}]", value)
        page.click("#submit")

        item = page.locator("#jobs li").first
        item.wait_for(timeout=60_000)
        job_id = item.get_attribute("data-id")
        progress, previews = [], 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and page.locator(f"#jobs li[data-id='{job_id}']").count():
            text = page.locator(f"#jobs li[data-id='{job_id}'] .progress").text_content(timeout=1000) or ""
            if text and (not progress or progress[-1] != text):
                progress.append(text)
            preview = page.locator(f"#jobs li[data-id='{job_id}'] video.preview")
            if not previews and preview.count():
                page.screenshot(path=str(tmp_path / "page-running.png"), full_page=True)
                previews = 1
            time.sleep(0.1)
        values = [int(t.rstrip("%")) for t in progress]
        assert len(set(values)) >= 2 and any(0 < v < 100 for v in values), progress
        assert values == sorted(values), "progress only goes forward"
        assert previews, "the preview appeared once a window was finished"

        video = page.locator(f"#videos .card[data-id='{job_id}'] video")
        video.wait_for(timeout=60_000)
        played = play(video)
        assert played["duration"] > 0 and played["time"] > 0 and played["width"] == 48, played
        assert server.job(job_id)["status"] == "completed"
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("SKYREELS_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["SKYREELS_SCREENSHOTS"]) / "service-page.png")

        # "again with changes": the form filled from the video's recorded settings
        page.click(f"#videos .card[data-id='{job_id}'] button.again-with-changes")
        page.wait_for_function("document.querySelector('#prompt').value.length > 0")
        assert page.input_value("#prompt") == "a red fox running through snow"
        assert page.input_value("#command") == "extend" and page.input_value("#seed") == "7"
        assert page.input_value("#advanced-fields [name=base_frames]") == "17"
        assert page.input_value("#length") == "97"

        # a bad value: one line naming the field, the field marked, nothing queued
        before = len(server.call("GET", "/v1/videos")[1]["data"])
        page.fill("#length", "-4")
        page.click("#submit")
        page.wait_for_function("document.querySelector('#form-error').textContent.length > 0")
        assert "frames" in page.text_content("#form-error")
        assert "invalid" in (page.get_attribute("#length", "class") or "")
        assert len(server.call("GET", "/v1/videos")[1]["data"]) == before
        assert not errors, errors
        page.close()


def test_the_page_opened_with_its_token_submits_and_reads(hub_models, browser, tmp_path):
    token = "page-token-0123"
    with Server(tmp_path / "state", "--model", "tiny", "--workers", "0", "--token", token, token=token) as server:
        page = browser.new_page()
        page.goto(server.url + "/")  # without the token: the page loads, the API answers 401
        page.wait_for_function("document.querySelector('#health').textContent.includes('needs its token')")
        page.close()
        page = browser.new_page()  # (the same address with only a new #fragment would not load it again)
        page.goto(server.url + f"/#token={token}")
        page.wait_for_selector("#advanced-fields label[data-field='steps']", state="attached")
        assert "token" not in page.url, "the token leaves the address bar"
        page.fill("#prompt", "a cat on a wall")
        page.click("#submit")
        item = page.locator("#jobs li .status").first
        item.wait_for(timeout=30_000)
        assert item.text_content() == "queued (#1)"
        [job] = server.call("GET", "/v1/videos")[1]["data"]
        assert job["prompt"] == "a cat on a wall" and job["status"] == "queued"
        page.close()
