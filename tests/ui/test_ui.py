"""The /ui page: login by API key, escaping, results CSV under the session, tenant isolation,
and the plot as headless Chromium draws it (band and flagged points counted in a screenshot)."""

from __future__ import annotations

import io
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import KEYS, client_for, form_token, wait_for
from PIL import Image

from api.ui import BAND, FLAGGED, PLOT_POINTS, plotted, secret_key
from core import keys

T0 = 1_790_000_000
HISTORY_ROWS = 300
EXTREMES = 3
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT_DIR = Path("/tmp/vigil-ui")


def import_history(client: httpx.Client, event_type: str, field: str, n: int = HISTORY_ROWS) -> dict:
    """n accepted events of `field` ~ N(100, 10), spread over one day."""
    values = np.random.default_rng(11).normal(100, 10, n)
    events = [{"timestamp": T0 + i * 86_400 // n, "payload": {field: float(v)}}
              for i, v in enumerate(values)]
    response = client.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def seeded(api_url, worker) -> dict:
    """An alpha event type with history and EXTREMES flagged events (one validation job)."""
    event_type = f"ui-{uuid.uuid4().hex[:10]}"
    with client_for(api_url, "alpha") as alpha:
        import_history(alpha, event_type, "amount")
        # Hours apart inside the history's day: separate red points on the plot.
        events = [{"event_type": event_type, "timestamp": T0 + 3600 * (5 + 6 * k),
                   "event_id": f"extreme-{k}", "payload": {"amount": 400.0}} for k in range(EXTREMES)]
        response = alpha.post("/v1/jobs", json={"events": events})
        assert response.status_code == 202, response.text
        job = wait_for(alpha, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    assert job["summary"]["invalid"] == EXTREMES, job
    return {"event_type": event_type, "job_id": job["job_id"]}


def login(client: httpx.Client, api_key: str) -> httpx.Response:
    return client.post("/ui/login", data={"api_key": api_key, "csrf_token": form_token(client)})


@contextmanager
def logged_in(api_url: str, tenant: str) -> Iterator[httpx.Client]:
    """A client holding only the session cookie /ui/login set (no Authorization header)."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        response = login(client, KEYS[tenant])
        assert response.status_code == 303, response.text
        assert response.headers["Location"] == "/ui"
        yield client


# --- HTTP ---------------------------------------------------------------------------------------

def test_without_session_shows_only_the_login_form(api_url, seeded):
    with httpx.Client(base_url=api_url, timeout=30) as anonymous:
        page = anonymous.get("/ui")
        assert page.status_code == 200
        assert page.headers["Content-Type"].startswith("text/html")
        assert 'name="api_key"' in page.text and 'action="/ui/login"' in page.text
        assert seeded["event_type"] not in page.text and seeded["job_id"] not in page.text
        assert "Latest jobs" not in page.text and "tenant" not in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["Cache-Control"] == "no-store"
        # Data routes answer 401 instead of the page.
        csv = anonymous.get(f"/ui/jobs/{seeded['job_id']}/results.csv")
        assert csv.status_code == 401 and seeded["event_type"] not in csv.text
        plot = anonymous.get("/ui/plot.png", params={"event_type": seeded["event_type"],
                                                     "field": "amount"})
        assert plot.status_code == 401
        # A forged cookie is no session.
        anonymous.cookies.set("vigil_ui", "eyJ0ZW5hbnQiOiJhbHBoYSJ9.forged.sig", path="/ui")
        assert 'name="api_key"' in anonymous.get("/ui").text


def test_wrong_key_shows_the_form_again_with_401(api_url):
    with httpx.Client(base_url=api_url, timeout=30) as client:
        token = {"csrf_token": form_token(client)}
        for data in ({"api_key": "not-a-key"}, {"api_key": ""}, {}, {"api_key": "x" * 5000}):
            response = client.post("/ui/login", data={**data, **token})
            assert response.status_code == 401, data
            assert "That API key is not valid." in response.text
            assert 'name="api_key"' in response.text
            assert "set-cookie" not in response.headers
        # Not a form at all: still the form and a 401, never a 500.
        response = client.post("/ui/login", content=b"\xff\xfe{",
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and "sign in again" in response.text


def test_login_sets_a_hardened_cookie_and_shows_the_tenants_data(api_url, seeded):
    with httpx.Client(base_url=api_url, timeout=30) as client:
        response = login(client, KEYS["alpha"])
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("vigil_ui=")
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui" in cookie
        page = client.get("/ui", params={"type": seeded["event_type"]})
        assert page.status_code == 200
        assert "tenant <b>alpha</b>" in page.text
        section = page.text.split(f'data-event-type="{seeded["event_type"]}"', 1)[1]
        assert f'<b class="accepted">{HISTORY_ROWS}</b>' in section
        assert f'<b class="invalid">{EXTREMES}</b>' in section
        assert f"{EXTREMES} flagged" in section
        assert 'data-field="amount"' in section
        assert f'data-job-id="{seeded["job_id"]}"' in page.text
        plot = client.get("/ui/plot.png", params={"event_type": seeded["event_type"], "field": "amount"})
        assert plot.status_code == 200 and plot.headers["Content-Type"] == "image/png"
        assert plot.content.startswith(b"\x89PNG")
        # Logging out (the page's form, with its token) ends it.
        assert client.post("/ui/logout", data={"csrf_token": form_token(client)}).status_code == 303
        assert 'name="api_key"' in client.get("/ui").text
        assert client.get(f"/ui/jobs/{seeded['job_id']}/results.csv").status_code == 401


def test_bearer_header_works_without_a_session(api_url, seeded):
    with client_for(api_url, "alpha") as alpha:
        page = alpha.get("/ui", params={"type": seeded["event_type"]})
        assert page.status_code == 200 and "tenant <b>alpha</b>" in page.text
        assert "Sign out" not in page.text
        assert alpha.get(f"/ui/jobs/{seeded['job_id']}/results.csv").status_code == 200


def test_results_csv_link_serves_the_api_csv_under_the_session(api_url, seeded):
    with logged_in(api_url, "alpha") as client, client_for(api_url, "alpha") as alpha:
        page = client.get("/ui", params={"type": seeded["event_type"]}).text
        href = f"/ui/jobs/{seeded['job_id']}/results.csv"
        assert f'href="{href}"' in page
        # No link the session does not cover (/v1 wants a Bearer header a browser lacks).
        assert 'href="/v1/' not in page
        assert f'href="/ui/jobs/{seeded["job_id"]}"' in page
        csv = client.get(href)
        assert csv.status_code == 200
        assert csv.headers["Content-Type"].startswith("text/csv")
        assert csv.headers["Content-Disposition"] == f'attachment; filename="{seeded["job_id"]}.csv"'
        lines = csv.text.strip().splitlines()
        assert lines[0].startswith("index,event_id,event_type,timestamp,valid,anomaly_score")
        assert len(lines) == 1 + EXTREMES and all(",false," in line for line in lines[1:])
        assert csv.text == alpha.get(f"/v1/jobs/{seeded['job_id']}/results.csv").text
        assert client.get("/ui/jobs/0123456789abcdef0123456789abcdef/results.csv").status_code == 404
        assert client.get("/ui/jobs/not-a-job/results.csv").status_code == 404


def test_job_json_under_the_session_and_jobs_of_the_chosen_type(api_url, seeded):
    other = f"ui-{uuid.uuid4().hex[:10]}"
    with logged_in(api_url, "alpha") as client, client_for(api_url, "alpha") as alpha:
        accepted = alpha.post("/v1/events/validate", json={
            "event_type": other, "timestamp": T0, "payload": {"amount": 1.0}}).json()
        wait_for(alpha, accepted["status_url"])
        # The job's JSON link: the document /v1 answers, under the session alone.
        job = client.get(f"/ui/jobs/{seeded['job_id']}")
        assert job.status_code == 200 and job.headers["Content-Type"] == "application/json"
        assert job.json() == alpha.get(f"/v1/jobs/{seeded['job_id']}").json()
        assert client.get("/ui/jobs/0123456789abcdef0123456789abcdef").status_code == 404
        with httpx.Client(base_url=api_url, timeout=30) as anonymous:
            assert anonymous.get(f"/ui/jobs/{seeded['job_id']}").status_code == 401

        # A chosen type lists its own jobs only; timestamps as people read them.
        page = client.get("/ui", params={"type": seeded["event_type"]}).text
        jobs = page.split('<section class="jobs">', 1)[1]
        assert f'data-job-id="{seeded["job_id"]}"' in jobs
        assert f'data-job-id="{accepted["job_id"]}"' not in jobs
        assert re.search(r'<td class="muted">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</td>', jobs)
        assert "+00:00" not in page
        assert "in history (imported + accepted)" in page
        page = client.get("/ui", params={"type": other}).text
        jobs = page.split('<section class="jobs">', 1)[1]
        assert f'data-job-id="{accepted["job_id"]}"' in jobs
        assert f'data-job-id="{seeded["job_id"]}"' not in jobs


def test_other_tenants_see_nothing(api_url, seeded):
    with logged_in(api_url, "beta") as beta:
        page = beta.get("/ui", params={"type": seeded["event_type"]}).text
        assert "tenant <b>beta</b>" in page and seeded["event_type"] not in page
        assert seeded["job_id"] not in page
        assert beta.get(f"/ui/jobs/{seeded['job_id']}/results.csv").status_code == 404
        assert beta.get("/ui/plot.png", params={"event_type": seeded["event_type"],
                                                "field": "amount"}).status_code == 404


def test_field_names_are_escaped(api_url, worker):
    event_type = f"ui-esc-{uuid.uuid4().hex[:8]}"
    field = '<b>bold</b>"&<script>alert(1)</script>'
    with client_for(api_url, "alpha") as alpha:
        import_history(alpha, event_type, field, n=40)
    with logged_in(api_url, "alpha") as client:
        page = client.get("/ui", params={"type": event_type}).text
        assert "<b>bold</b>" not in page and "<script>" not in page
        assert "&lt;b&gt;bold&lt;/b&gt;&#34;&amp;&lt;script&gt;alert(1)&lt;/script&gt;" in page
        [src] = re.findall(r'<img src="([^"]+)"', page)
        assert "<" not in src and '"' not in src
        plot = client.get(src.replace("&amp;", "&"))
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_session_key_is_stable_random_and_kept_in_redis(redis_server):
    r = redis_server.client()
    key = secret_key(r, {})
    assert key == secret_key(r, {}) and len(key) == 64
    assert r.get(keys.ui_session_key()).decode() == key
    assert secret_key(r, {"VIGIL_SECRET_KEY": "explicit"}) == "explicit"


# --- in Chromium ---------------------------------------------------------------------------------

def near(pixels: np.ndarray, colour: str, tolerance: int = 40) -> np.ndarray:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return np.abs(pixels.astype(int) - rgb).max(axis=2) <= tolerance


def blobs(mask: np.ndarray) -> int:
    """Connected regions (8-neighbourhood) of a boolean mask."""
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny in range(max(cy - 1, 0), min(cy + 2, mask.shape[0])):
                for nx in range(max(cx - 1, 0), min(cx + 2, mask.shape[1])):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


@pytest.fixture(scope="module")
def browser():
    # Not a skip: `make test` installs them, and a plot nobody checked is not a passing test.
    assert Path(CHROMEDRIVER).exists() and shutil.which(CHROMIUM), (
        "needs chromium and chromium-driver: apt-get install -y chromium chromium-driver "
        "(make test does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_plot_in_chromium_shows_band_and_flagged_points(api_url, seeded, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{api_url}/ui")
    browser.find_element(By.NAME, "api_key").send_keys(KEYS["alpha"])
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/login'] button").click()
    wait.until(lambda d: d.find_elements(By.ID, "type"))
    # Other tests' types may outnumber ours: pick it in the selector.
    Select(browser.find_element(By.ID, "type")).select_by_value(seeded["event_type"])
    show = browser.find_element(By.CSS_SELECTOR, "nav.types button")
    show.click()
    # Wait on the address, not on the old button going stale: asked about a node while the
    # page is being replaced, chromedriver can answer "Node ... does not belong to the
    # document" (an unknown error, not a StaleElementReference), which failed CI once.
    wait.until(lambda d: f"type={seeded['event_type']}" in d.current_url)
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    selector = f'section[data-event-type="{seeded["event_type"]}"] .plot[data-field="amount"] img'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))
    img = browser.find_element(By.CSS_SELECTOR, selector)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
    wait.until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 0

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT_DIR / "page.png"))
    (SCREENSHOT_DIR / "plot.png").write_bytes(img.screenshot_as_png)
    pixels = np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("RGB"))
    band, red = near(pixels, BAND), near(pixels, FLAGGED)
    print(f"plot {pixels.shape[1]}x{pixels.shape[0]}: band {band.mean():.1%}, "
          f"red {int(red.sum())} px in {blobs(red)} blobs")
    assert band.mean() > 0.05, "the mean ± 3σ band is not drawn"
    # One legend marker plus the flagged events, hours apart: separate red blobs.
    assert blobs(red) >= 1 + EXTREMES, "the flagged events are not drawn as red points"


def test_a_plot_shows_the_latest_events_and_only_the_flags_its_field_raised():
    history = [{"ts": float(i), "v": {"a": 1.0, "b": 2.0}} for i in range(PLOT_POINTS + 100)]
    flagged = [{"ts": 50.0, "v": {"a": 9.0, "b": 2.0}, "fields": ["a"]},       # before the span
               {"ts": 300.0, "v": {"a": 1.0, "b": 9.0}, "fields": ["b"]},
               {"ts": 400.0, "v": {"a": 9.0, "b": 2.0}, "codes": ["out_of_range"]}]  # older row
    shown, marked = plotted(history, flagged, "a", whole=False)
    assert len(shown) == PLOT_POINTS and shown[0]["ts"] == 100.0
    assert [row["ts"] for row in marked] == [400.0]
    shown, marked = plotted(history, flagged, "a", whole=True)
    assert len(shown) == PLOT_POINTS + 100 and [row["ts"] for row in marked] == [50.0, 400.0]
    assert [row["ts"] for row in plotted(history, flagged, "b", whole=True)[1]] == [300.0, 400.0]


def test_feedback_and_backtest_from_the_page_in_chromium(api_url, seeded, browser):
    """The flagged list's "false alarm" button marks the event (as the API then says), and
    the backtest form starts a backtest whose table the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    event_type = seeded["event_type"]
    browser.get(f"{api_url}/ui?type={event_type}")
    if browser.find_elements(By.NAME, "api_key"):
        browser.find_element(By.NAME, "api_key").send_keys(KEYS["alpha"])
        browser.find_element(By.CSS_SELECTOR, "form[action='/ui/login'] button").click()
        wait.until(lambda d: d.find_elements(By.ID, "type"))
        browser.get(f"{api_url}/ui?type={event_type}")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.flagged-event")
    assert len(rows) == EXTREMES
    assert {row.get_attribute("data-job-id") for row in rows} == {seeded["job_id"]}
    index = rows[0].get_attribute("data-index")
    rows[0].find_element(By.CSS_SELECTOR, "button[value='false_alarm']").click()
    marked = f"tr.flagged-event[data-index='{index}'] .label"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, marked))
    assert browser.find_element(By.CSS_SELECTOR, marked).text == "false alarm"
    with client_for(api_url, "alpha") as alpha:
        summary = alpha.get(f"/v1/event-types/{event_type}/feedback").json()
    assert summary["false_alarm"] == 1
    assert summary["items"][0]["by"].startswith("ui:")

    Select(browser.find_element(By.NAME, "setting")).select_by_value("z_threshold")
    browser.find_element(By.NAME, "value").send_keys("80")
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/backtest'] button").click()

    def table_shown(driver) -> bool:
        if driver.find_elements(By.CSS_SELECTOR, "table.backtest"):
            return True
        driver.refresh()
        return False

    wait.until(table_shown)
    cells = {row.find_elements(By.TAG_NAME, "td")[0].text:
             [td.text for td in row.find_elements(By.TAG_NAME, "td")[1:]]
             for row in browser.find_elements(By.CSS_SELECTOR, "table.backtest tbody tr")}
    assert cells["events"][0] == cells["events"][1]
    assert cells["false alarms flagged"][1].endswith("of 1")
    assert "z_threshold=80" in browser.find_element(By.ID, "backtest").find_element(
        By.XPATH, "following-sibling::p").text
    # A value that is no number comes back as a notice, not an error page.
    browser.find_element(By.NAME, "value").send_keys("many")
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/backtest'] button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".notice"))
    assert "z_threshold takes a number" in browser.find_element(By.CSS_SELECTOR, ".notice").text
