import io
import json
import os
import shutil
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from c100.predict import Predictor
from c100.serve import App, gallery, serve_in_thread


def _png(seed: int, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/api/predict", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tiny_run, cifar_dir):
    os.environ["C100_ANY_SIZE"] = "1"
    predictor = Predictor.from_checkpoint(tiny_run)
    srv, url = serve_in_thread(App(predictor, max_bytes=200_000, gallery_items=gallery(str(cifar_dir), n=6)))
    yield predictor, url
    srv.shutdown()


def test_page_and_prediction(server):
    predictor, url = server
    assert url.startswith("http://127.0.0.1:")  # loopback by default
    with urllib.request.urlopen(url + "/", timeout=10) as r:
        page = r.read().decode()
    assert "Drop an image here" in page and page.count("data:image/png;base64,") == 6
    status, out = _post(url, _png(1))
    assert status == 200 and len(out["top"]) == 5
    direct = predictor.top(np.asarray(Image.open(io.BytesIO(_png(1))).resize((32, 32), Image.Resampling.LANCZOS))
                           .transpose(2, 0, 1)[None])[0]
    assert [t["label"] for t in out["top"]] == [t["label"] for t in direct]


@pytest.mark.parametrize("body, status, message", [
    (b"plain text, not an image", 400, "not an image Pillow can read"),
    (b"", 400, "empty file"),
    (b"\x89PNG" + b"0" * 300_000, 413, "file too large: 0.3 MB, the limit is 0.190735 MB"),
])
def test_bad_uploads(server, body, status, message):
    got, out = _post(server[1], body)
    assert got == status and message in out["error"]


def test_concurrent_requests_get_their_own_answers(server):
    predictor, url = server
    bodies = [_png(seed) for seed in range(12)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _post(url, b), bodies))
    sequential = [_post(url, b) for b in bodies]
    assert all(s == 200 for s, _ in answers)
    assert [a["top"] for _, a in answers] == [a["top"] for _, a in sequential]


def test_in_a_real_browser(server, tmp_path):
    """Load the page in headless Chromium, upload a known image, read the predicted label."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no browser: install Debian's chromium and chromium-driver (.ci/run does) to run this test")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor, url = server
    img = tmp_path / "known.png"
    img.write_bytes(_png(7))
    _, want = _post(url, img.read_bytes())
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
    try:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(img))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        first = browser.find_element(By.CSS_SELECTOR, "#bars .bar.first").get_attribute("data-label")
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert first == want["top"][0]["label"] and len(bars) == 5
        widths = [b.find_element(By.CSS_SELECTOR, ".fill").size["width"] for b in bars]
        assert widths == sorted(widths, reverse=True) and widths[0] > 0  # bars drawn to scale
        assert want["top"][0]["superclass"] in browser.find_element(By.ID, "super").text
        browser.find_element(By.CSS_SELECTOR, "#gallery img").click()  # a gallery image classifies too
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 5)
    finally:
        browser.quit()
