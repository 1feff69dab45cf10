"""The status page in a real browser: headless Chromium (Debian's chromium and chromium-driver),
driven by Selenium (PyPI). Usage: check_page.py URL TOKEN_FILE MOVIES [SCREENSHOT.png]

Checks: the page asks for the token and keeps it in sessionStorage (never in the URL); with it,
the workers table fills, every plot has a point per movie, the movie table has a row per movie
and sorts when a header is clicked, and clicking a movie shows its numbers and trajectory. A
wrong token is refused with the controller's message. Prints one line per check; exits 1 on the
first failure.
"""
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, token_file, movies = sys.argv[1], sys.argv[2], int(sys.argv[3])
token = open(token_file).read().strip()


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


def wait(driver, what, f, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = f()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.2)
    print("FAIL: timed out waiting for", what)
    print(driver.page_source[:4000])
    sys.exit(1)


opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--user-data-dir=" + tempfile.mkdtemp(prefix="warp-page-")]:
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(url)
    form = wait(driver, "the token form", lambda: driver.find_element(By.ID, "login").is_displayed())
    check(form, "the page asks for the token")

    driver.find_element(By.ID, "token").send_keys("wrong-token")
    driver.find_element(By.ID, "watch").click()
    msg = wait(driver, "the refusal", lambda: driver.find_element(By.ID, "login-error").text)
    check("token" in msg.lower(), f"a wrong token is refused: {msg!r}")

    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "watch").click()
    wait(driver, "the main view", lambda: driver.find_element(By.ID, "main").is_displayed())
    stored = driver.execute_script("return sessionStorage.getItem('warp-view-token')")
    check(stored == token, "the token is kept in sessionStorage")
    check(token not in driver.current_url, "the token is not in the URL")

    rows = wait(driver, "worker rows", lambda: driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr"))
    check(len(rows) >= 1, f"{len(rows)} worker row(s)")
    rows = wait(driver, f"{movies} movie rows",
                lambda: (r := driver.find_elements(By.CSS_SELECTOR, "#movies tbody tr")) and len(r) == movies and r)
    check(len(rows) == movies, f"{movies} movie rows")
    for plot, per_movie in [("plot-defocus", 2), ("plot-astig", 1), ("plot-resolution", 1), ("plot-motion", 1)]:
        n = len(driver.find_elements(By.CSS_SELECTOR, f"#{plot} circle.point"))
        check(n == per_movie * movies, f"{plot}: {n} points")
    bars = driver.find_elements(By.CSS_SELECTOR, "#throughput rect.bar")
    check(len(bars) == 60, "throughput: 60 one-minute bars")

    def column(i):
        return [r.find_elements(By.TAG_NAME, "td")[i].text
                for r in driver.find_elements(By.CSS_SELECTOR, "#movies tbody tr")]

    res_header = driver.find_element(By.CSS_SELECTOR, "#movies th[data-key='res']")
    res_header.click()
    asc = [float(x) for x in column(6)]
    check(asc == sorted(asc), f"sorted by fit resolution, ascending: {asc}")
    driver.find_element(By.CSS_SELECTOR, "#movies th[data-key='res']").click()
    desc = [float(x) for x in column(6)]
    check(desc == sorted(desc, reverse=True), f"and descending on a second click: {desc}")

    first = driver.find_elements(By.CSS_SELECTOR, "#movies tbody tr")[0]
    name = first.find_elements(By.TAG_NAME, "td")[1].text
    first.click()
    detail = wait(driver, "the movie detail", lambda: driver.find_element(By.ID, "detail").is_displayed())
    text = driver.find_element(By.ID, "detail").text
    check(name in text and "defocus U / V" in text, f"clicking {name} shows its numbers")
    line = driver.find_elements(By.CSS_SELECTOR, "#trajectory polyline")
    check(len(line) == 1 and len(line[0].get_attribute("points").split()) >= 2,
          "and its motion trajectory")
    if len(sys.argv) > 4:  # a screenshot, for a person to look at
        driver.set_window_size(1400, 1200)
        driver.save_screenshot(sys.argv[4])
    logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "401" not in e.get("message", "")]
    check(not logs, f"no errors in the browser console: {logs}")
finally:
    driver.quit()
