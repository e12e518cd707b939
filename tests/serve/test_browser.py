"""The page at / in a real browser: Debian's chromium, headless, driven by selenium through the
chromium-driver package (no browser download). It picks a generated AVWorld mp4, streams it in real
time (frames from a canvas, audio through WebAudio), asks a question, and the test reads the tick
labels and the answer from the page. Skips when chromium / chromedriver / selenium are missing."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ssm_mm.media import write_media

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="Debian's chromium + chromium-driver are not installed (scripts/setup.sh --dev installs them)",
)


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,800",
        "--mute-audio",
    ):
        opts.add_argument(a)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _wait(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_streams_a_file_and_shows_labels_and_an_answer(browser, make_server, world, model, tmp_path):
    from selenium.webdriver.common.by import By

    srv = make_server()
    # a 4-s clip of the generated stream: the page plays it in real time
    from ssm_mm.media import decode_audio, decode_video

    v, a = decode_video(world[0]), decode_audio(world[0], sample_rate=16000)
    keep = v.timestamps < 4.0
    clip = write_media(
        tmp_path / "clip.mp4",
        frames=v.frames[keep].numpy(),
        timestamps=v.timestamps[keep].numpy(),
        fps=4.0,
        audio=a.samples[: 4 * 16000].numpy(),
        sample_rate=16000,
    )
    browser.get(srv.url)
    browser.find_element(By.ID, "file").send_keys(str(clip))
    browser.find_element(By.ID, "start-file").click()
    ticks = lambda: browser.find_elements(By.CSS_SELECTOR, "#strip .tick")  # noqa: E731
    _wait(lambda: len(ticks()) >= 3, 20, "the first labels on the page")
    browser.find_element(By.ID, "question").send_keys("how many times did the bell ring?")
    browser.find_element(By.ID, "ask").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "body[data-closed]"), 20, "the end of the stream")
    labels = [(int(e.get_attribute("data-tick")), e.get_attribute("data-label")) for e in ticks()]
    answers = browser.find_elements(By.CSS_SELECTOR, "#timeline .row.answer")
    status = browser.find_element(By.ID, "status").text
    shot = os.environ.get("SSM_MM_SERVE_SCREENSHOT") or str(tmp_path / "serve.png")
    browser.save_screenshot(shot)
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#timeline .row.error")]
    assert not errors, errors
    # every tick of the ~4 s stream, in order, each a label of the model
    assert [k for k, _ in labels] == list(range(len(labels))), labels
    assert 6 <= len(labels) <= 10, labels
    assert all(name in model.labels for _, name in labels)
    assert len(answers) == 1, browser.find_element(By.ID, "timeline").text
    t_answer = float(answers[0].get_attribute("data-t"))
    assert 1.0 <= t_answer <= 5.0  # asked at the end of the tick holding the playback time
    assert status.startswith("stream ended:"), status
