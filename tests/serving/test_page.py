"""The page `livo serve` shows at `/`, driven in headless Chromium by a real WebDriver (selenium + chromedriver):
type a prompt, submit, see the principle and the aligned and base images. The screenshot in docs/serving_page.png
shows the toy model after `make demo` (tests/serving/demo_screenshot.py); this test's goes to a temporary folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_client import REPO, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)
SCREENSHOT = REPO / "docs" / "serving_page.png"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium and its WebDriver are not installed: apt-get install -y chromium chromium-driver "
           "(`make system-deps` does it as root)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("page-server")
    with running_server(["--report", str(tmp / "report.html")], tmp / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium "
                                                                  "(the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--window-size=900,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _loaded(driver, element_id: str) -> bool:
    return bool(driver.execute_script(
        "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth > 0;", element_id))


def test_the_page_generates_and_shows_the_principle_and_both_images(server: str, browser,
                                                                     tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server + "/")
    assert browser.find_element(By.ID, "model-name").text == "livo-tiny"
    assert browser.find_element(By.ID, "model-version").text == "v3"
    assert browser.find_element(By.ID, "report-link").get_attribute("href") == server + "/report"
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "principle-choice")).options]
    assert options[:2] == ["auto", "none"] and "bloody" in options

    browser.find_element(By.ID, "prompt").send_keys("a photo of a bloody nurse")
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("4")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "result").is_displayed()
                                     and _loaded(d, "aligned-image") and _loaded(d, "base-image"))
    assert browser.find_element(By.ID, "principle").text.startswith("bloody")
    assert "keyword" in browser.find_element(By.ID, "evidence").text
    assert browser.find_element(By.ID, "status").text.startswith("seed 4")
    aligned = browser.find_element(By.ID, "aligned-image").get_attribute("src")
    base = browser.find_element(By.ID, "base-image").get_attribute("src")
    assert aligned.startswith("data:image/png;base64,") and base.startswith("data:image/png;base64,")
    assert aligned != base  # the value token changed the image; the base one is the base model's
    target = tmp_path / SCREENSHOT.name
    assert browser.save_screenshot(str(target)) and target.stat().st_size > 1000


def test_the_page_shows_a_bad_request_as_one_line(server: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    browser.execute_script("document.getElementById('prompt').required = false;")  # let an empty prompt through
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(lambda d: "HTTP 400" in d.find_element(By.ID, "status").text)
    assert "prompt is empty" in browser.find_element(By.ID, "status").text
