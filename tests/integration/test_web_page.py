"""The page at /ui/ in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): a fake microphone plays a real utterance from a WAV file, the page records it over the
Realtime WebSocket, and the final transcript appears; a file given to the file input shows its
streamed (stream=true) transcript."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio, encode_wav_pcm16

from .conftest import TOKENS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# CI sets SPLITASR_REQUIRE_BROWSER=1: there a missing browser fails these tests instead of skipping them
pytestmark = pytest.mark.skipif(
    (CHROMIUM is None or CHROMEDRIVER is None) and os.environ.get("SPLITASR_REQUIRE_BROWSER") != "1",
    reason="needs Debian's chromium and chromium-driver (bash scripts/install-system-deps.sh)",
)
WAIT_S = 45


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory, real_speech) -> Path:
    """What the fake microphone plays (in a loop): silence, 'go forward ten meters', silence."""
    [row] = [r for r in real_speech if r["audio_filepath"] == "misc/goforward.flac"]
    silence = np.zeros(SAMPLE_RATE_HZ, np.float32)
    audio = np.concatenate([silence / 2, decode_audio(row["path"]), silence, silence])
    path = tmp_path_factory.mktemp("mic") / "goforward.wav"
    path.write_bytes(encode_wav_pcm16(audio))
    return path


@pytest.fixture(scope="module")
def browser(microphone_wav):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={microphone_wav}",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _console(driver) -> str:
    from selenium.common.exceptions import WebDriverException

    try:
        return "\n".join(entry["message"] for entry in driver.get_log("browser"))
    except WebDriverException:  # a driver without the log endpoint
        return ""


def _open_page(browser, rest_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{rest_server.url}/ui/")
    key = browser.find_element(By.CSS_SELECTOR, "[data-testid=api-key]")
    key.clear()
    key.send_keys(TOKENS["alice"], Keys.TAB)  # "change" fires: models and adapters load with the key
    # read in one script: the page may replace the options (a refresh) while they are read
    models = "return [...document.querySelectorAll('[data-testid=model] option')].map(o => o.value)"
    WebDriverWait(browser, WAIT_S).until(lambda d: "tiny.en" in d.execute_script(models))
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=status]").get_attribute("data-state") == "ready")


def _wait_for_line(browser, selector: str, words: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(driver):
        for line in driver.find_elements(By.CSS_SELECTOR, f"[data-testid=transcript] {selector}"):
            if words in line.text.lower():
                return line.text
        return False

    try:  # a line that turns final while being read is stale for a moment
        return WebDriverWait(browser, WAIT_S, ignored_exceptions=[StaleElementReferenceException]).until(found)
    except TimeoutException:
        transcript = browser.find_element(By.CSS_SELECTOR, "[data-testid=transcript]").text
        error = browser.find_element(By.CSS_SELECTOR, "[data-testid=error]").text
        pytest.fail(f"no {selector} line with {words!r}; transcript {transcript!r}, error {error!r}\n"
                    f"{_console(browser)}")


def test_chromium_records_the_microphone_and_shows_the_transcript(browser, rest_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, rest_server)
    record = browser.find_element(By.CSS_SELECTOR, "[data-testid=record]")
    stop = browser.find_element(By.CSS_SELECTOR, "[data-testid=stop]")
    record.click()
    WebDriverWait(browser, WAIT_S).until(lambda d: stop.is_enabled())
    text = _wait_for_line(browser, ".line.live.final", "forward")  # the VAD ended the utterance
    stop.click()
    WebDriverWait(browser, WAIT_S).until(lambda d: record.is_enabled())
    assert "10 meters" in text.lower() or "ten meters" in text.lower(), text
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid=error]").get_attribute("hidden"), \
        browser.find_element(By.CSS_SELECTOR, "[data-testid=error]").text


def test_chromium_streams_a_dropped_file(browser, rest_server, real_speech):
    from selenium.webdriver.common.by import By

    _open_page(browser, rest_server)
    [row] = [r for r in real_speech if r["audio_filepath"] == "librivox/0880.flac"]
    browser.find_element(By.CSS_SELECTOR, "[data-testid=file]").send_keys(str(row["path"]))
    text = _wait_for_line(browser, ".line.file.final", "young man")
    assert text.lower().startswith("he was not"), text


def test_chromium_is_the_one_the_install_script_names():
    script = (Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh").read_text()
    assert "chromium" in script and "chromium-driver" in script
    assert subprocess.run([CHROMIUM, "--version"], capture_output=True, check=False, timeout=30).returncode == 0
