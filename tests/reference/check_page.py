"""The status page in a real browser: headless Chromium (Debian's chromium and chromium-driver),
driven by Selenium (PyPI).
Usage: check_page.py URL TOKEN_FILE MOVIES ADMIN_TOKEN_FILE OUTPUT_DIR [SCREENSHOT.png]

Checks: the page asks for the token and keeps it in sessionStorage (never in the URL); with it,
the workers table fills, every plot has a point per movie, the movie table has a row per movie
and sorts when a header is clicked, and clicking a movie shows its numbers, trajectory, thumbnail
and power spectrum. A threshold on the fit resolution changes the selection count and the plot
(hollow points, a dashed line); export is refused with the view token, asks for the admin token
and then writes OUTPUT_DIR/micrographs_ctf_selected.star (read back with `starfile`) and
selection.json, which the page shows again after a reload. A wrong token is refused with the
controller's message. Prints one line per check; exits 1 on the
first failure.
"""
import json
import os
import sys
import tempfile
import time

import starfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, token_file, movies = sys.argv[1], sys.argv[2], int(sys.argv[3])
token = open(token_file).read().strip()
admin = open(sys.argv[4]).read().strip()
out_dir = sys.argv[5]


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
    for e in driver.get_log("browser"):
        print("browser console:", e.get("level"), e.get("message"))
    for i in ["summary", "export-result", "selection-count"]:
        try:
            print(f"#{i}:", driver.find_element(By.ID, i).text)
        except Exception:
            pass
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

    def loaded(img_id):
        return driver.execute_script(
            f"const i = document.getElementById('{img_id}'); return i && i.complete && i.naturalWidth")
    w = wait(driver, "the thumbnail", lambda: loaded("picture-thumbnail"))
    check(w > 0, f"and its thumbnail ({w} px wide)")
    w = wait(driver, "the power spectrum", lambda: loaded("picture-spectrum"))
    check(w > 0, f"and its power spectrum ({w} px wide)")

    # The selection: a fit-resolution threshold between two movies' values.
    check(driver.find_element(By.ID, "selection").is_displayed(), "the selection form is shown")
    driver.find_element(By.CSS_SELECTOR, "#movies th[data-key='res']").click()
    res = sorted(float(x) for x in column(6))
    gaps = [(res[i + 1] - res[i], i) for i in range(len(res) - 1)]
    gap, i = max(gaps)
    check(gap >= 0.02, f"two movies' fit resolutions differ: {res}")
    threshold = round((res[i] + res[i + 1]) / 2, 3)
    expected = sum(1 for r in res if r <= threshold)
    box = driver.find_element(By.ID, "t-max_resolution_A")
    box.clear()
    box.send_keys(str(threshold))
    count = wait(driver, "the selection count",
                 lambda: (c := driver.find_element(By.ID, "selection-count").get_attribute("data-selected")) == str(expected) and c)
    check(count == str(expected), f"fit res. ≤ {threshold} Å: {expected} of {movies} selected")
    hollow = len(driver.find_elements(By.CSS_SELECTOR, "#plot-resolution circle.point.rejected"))
    check(hollow == movies - expected, f"{hollow} hollow point(s) on the resolution plot")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#plot-resolution line.limit")) == 1,
          "the threshold is a line on the plot")

    driver.find_element(By.ID, "export").click()
    wait(driver, "the admin token field", lambda: driver.find_element(By.ID, "admin-label").is_displayed())
    msg = driver.find_element(By.ID, "export-result").text
    check("admin token" in msg, f"export with the view token asks for the admin token: {msg!r}")
    star_path = os.path.join(out_dir, "micrographs_ctf_selected.star")
    check(not os.path.exists(star_path), "and writes nothing")
    driver.find_element(By.ID, "admin-token").send_keys(admin)
    driver.find_element(By.ID, "export").click()
    done = wait(driver, "the export", lambda: driver.find_element(By.ID, "export-result").get_attribute("data-selected"))
    check(done == str(expected), f"export: {driver.find_element(By.ID, 'export-result').text!r}")
    table = starfile.read(star_path, always_dict=True)["micrographs"]
    check(len(table) == expected, f"{star_path}: {len(table)} row(s)")
    check(all(table["rlnCtfMaxResolution"] <= threshold + 1e-6), "every selected movie passes the threshold")
    saved = json.load(open(os.path.join(out_dir, "selection.json")))
    check(saved == {"max_resolution_A": threshold}, f"selection.json: {saved}")

    driver.refresh()
    wait(driver, "the main view again", lambda: driver.find_element(By.ID, "main").is_displayed())
    again = wait(driver, "the saved threshold", lambda: driver.find_element(By.ID, "t-max_resolution_A").get_attribute("value"))
    check(float(again) == threshold, f"after a reload the page shows the saved threshold ({again})")

    if len(sys.argv) > 6:  # a screenshot, for a person to look at
        driver.set_window_size(1400, 1900)
        rows = wait(driver, "movie rows", lambda: driver.find_elements(By.CSS_SELECTOR, "#movies tbody tr"))
        rows[0].click()
        wait(driver, "the pictures", lambda: loaded("picture-spectrum"))
        driver.save_screenshot(sys.argv[6])
        print("screenshot:", sys.argv[6])
    # The refusals the checks provoked (wrong token, export with the view token) are expected.
    logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"
            and "401" not in e.get("message", "") and "403" not in e.get("message", "")]
    check(not logs, f"no errors in the browser console: {logs}")
finally:
    driver.quit()
