"""Screenshot of the page `livo serve` shows, on the toy model `make demo` registered (docs/serving_page.png).

    .venv/bin/python tests/serving/demo_screenshot.py "a photo of a bloody nurse in a hospital" 3 docs/serving_page.png

Serves livo-toy@latest from the demo's store (LIVO_RUNS_DIR, default runs/) on port 8097, types the prompt and seed
into the page in headless Chromium (selenium + chromedriver), waits for both images, prints the principle line and
saves the screenshot. The page's behaviour is tested in test_page.py; this only makes the picture for the docs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

PORT = 8097
BOTH_IMAGES_LOADED = ("const a = document.getElementById('aligned-image'), b = document.getElementById('base-image');"
                      " return a.complete && a.naturalWidth > 0 && b.complete && b.naturalWidth > 0;")


def wait_ready(base: str, seconds: int = 240) -> None:
    for _ in range(seconds):
        try:
            urllib.request.urlopen(base + "/v2/health/ready", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"livo serve did not get ready within {seconds} s")


def main(prompt: str, seed: str, target: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVO_S3_")}
    env.setdefault("LIVO_RUNS_DIR", "runs")
    env["LIVO_TRACKING"] = "none"
    base = f"http://127.0.0.1:{PORT}"
    server = subprocess.Popen([sys.executable, "-m", "livo.cli", "serve", "livo-toy@latest", "--port", str(PORT)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(base)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=900,760"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            driver.get(base + "/")
            driver.find_element(By.ID, "prompt").send_keys(prompt)
            seed_box = driver.find_element(By.ID, "seed")
            seed_box.clear()
            seed_box.send_keys(seed)
            driver.find_element(By.ID, "submit").click()
            WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "result").is_displayed()
                                             and d.execute_script(BOTH_IMAGES_LOADED))
            print(" | ".join(driver.find_element(By.ID, name).text for name in ("principle", "evidence", "status")))
            driver.save_screenshot(target)
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main(*sys.argv[1:4])
