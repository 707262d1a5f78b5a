"""The web dashboard in a real browser (Debian's chromium, driven by chromium-driver through
Selenium) against `dreambuild serve` with the real trainer, registry and template: sign in,
drop photos, watch the training live, find the model, try it, see the prediction in the history."""

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import SAMPLE_PHOTOS
from tests.test_service import ALICE, BOB

selenium = pytest.importorskip("selenium", reason="the test extra installs selenium")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "chromium and chromium-driver are missing: ./dev test installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
    driver.set_window_size(1280, 1000)
    yield driver
    driver.quit()


def wait_until(driver, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate(driver)
        except Exception:  # the view is being replaced: try again
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; page: {driver.find_element('tag name', 'main').text[:2000]}")


def sign_in(driver, url: str, token: str) -> None:
    driver.get(f"{url}/#/signin")
    field = wait_until(driver, lambda d: d.find_element("id", "token"), 20, "the sign-in form")
    field.clear()
    field.send_keys(token)
    driver.find_element("css selector", "#signin button[type=submit]").click()


def text_of(driver, selector: str) -> str:
    return driver.find_element("css selector", selector).text


def test_train_watch_and_try_a_model_in_the_browser(browser, service, tmp_path):
    url = service.url
    driver = browser
    sign_in(driver, url, "not-a-token")
    wait_until(driver, lambda d: "not valid" in text_of(d, "#signin"), 20, "the refusal of a bad token")
    # Signed out: no navigation and no "Sign out" (hidden, whatever the header's own layout says).
    assert not driver.find_element("id", "nav").is_displayed() and not driver.find_element("id", "sign-out").is_displayed()
    sign_in(driver, url, "tok-alice")
    wait_until(driver, lambda d: d.find_element("id", "trainings"), 20, "the trainings list")
    assert driver.execute_script("return location.href").endswith("#/trainings")  # the token is in no URL
    driver.get_log("browser")  # the bad token's 401, expected: later errors are not

    # New training: photos picked (as a drop would), the form's equivalent curl, the upload, the training.
    driver.get(f"{url}/#/new")
    picker = wait_until(driver, lambda d: d.find_element("id", "photos"), 20, "the new-training form")
    picker.send_keys("\n".join(str(p) for p in SAMPLE_PHOTOS))
    steps = driver.find_element("id", "max_train_steps")
    steps.clear()
    steps.send_keys("4")
    driver.find_element("id", "with_prior_preservation").click()  # off: the tiny model needs no class images
    driver.find_element("id", "model").send_keys("alice/dash")
    assert f"{len(SAMPLE_PHOTOS)} file(s)" in text_of(driver, "#photo-list")
    curl = text_of(driver, "#curl")
    assert f"curl -X POST {url}/v1/trainings" in curl and '"model": "alice/dash"' in curl and '"max_train_steps": 4' in curl
    assert "tok-alice" not in curl and "$DREAMBUILD_API_TOKEN" in curl
    # A LoRA is offered only on templates baking the chosen base: this catalog's template bakes none.
    from selenium.webdriver.support.ui import Select

    catalog = httpx.get(f"{url}/v1/catalog", headers=ALICE).json()
    bases = Select(driver.find_element("id", "base_model")).options
    assert [o.text for o in bases] == ["its default base", *sorted(catalog["trainers"][0]["base_digests"])]
    full = [o.get_attribute("value") for o in Select(driver.find_element("id", "template")).options]
    assert full == [t["version"] for t in catalog["templates"] if "full" in t["builds"]] and full
    rank = driver.find_element("id", "lora_rank")
    rank.clear()
    rank.send_keys("4")
    assert not Select(driver.find_element("id", "template")).options and "No template bakes this base" in text_of(driver, "#no-template")
    assert '"lora_rank": 4' in text_of(driver, "#curl")
    rank.clear()
    rank.send_keys("0")
    assert [o.get_attribute("value") for o in Select(driver.find_element("id", "template")).options] == full
    assert "lora_rank" not in text_of(driver, "#curl") and not text_of(driver, "#no-template")
    driver.find_element("id", "start").click()
    wait_until(driver, lambda d: "#/trainings/" in d.current_url, 60, "the new training's page")
    training_id = driver.current_url.rsplit("/", 1)[1]

    # Its page follows it live (server-sent events: the page does not poll) to the end.
    wait_until(driver, lambda d: "succeeded" in text_of(d, "#status"), 600, "the training to succeed")
    assert "step 4/4" in text_of(driver, "#logs") and "4/4" in text_of(driver, ".progress-label")
    assert "done" in text_of(driver, "#stage") or "webhook" in text_of(driver, "#stage")
    assert not driver.find_element("id", "cancel").is_displayed()
    shown = wait_until(
        driver,
        lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#photos img')];"
            "return imgs.length && imgs.every((img) => img.complete && img.naturalWidth > 0) && imgs.length;"
        ),
        30,
        "the photos",
    )
    assert shown == len(SAMPLE_PHOTOS)  # zipped in the browser, read back from the upload
    assert "No samples" in text_of(driver, "#samples")  # none were asked for
    record = httpx.get(f"{url}/v1/trainings/{training_id}", headers=ALICE).json()
    assert record["input"]["instance_data"].startswith(f"{url}/v1/uploads/") and record["input"]["with_prior_preservation"] is False

    # The list, the model and its version.
    driver.get(f"{url}/#/trainings")
    wait_until(driver, lambda d: d.find_element("css selector", f'#trainings tr[data-id="{training_id}"]'), 20, "the training in the list")
    driver.get(f"{url}/#/models")
    wait_until(driver, lambda d: d.find_element("link text", "alice/dash"), 20, "the model").click()
    wait_until(driver, lambda d: d.find_element("link text", "Try it"), 20, "the version").click()

    # Try it: the form comes from the version's schema; the outputs are shown with the seed.
    wait_until(driver, lambda d: d.find_element("id", "in-prompt"), 20, "the version's input form")
    assert driver.find_element("id", "in-scheduler").tag_name == "select"  # an enum is a choice
    assert driver.find_elements("css selector", "#try input[type=range]")  # bounded numbers are sliders
    for name, value in {"num_inference_steps": 2, "seed": 3, "width": 64, "height": 64}.items():
        driver.execute_script("const el = document.getElementById(arguments[0]); if (el) el.value = arguments[1];", f"in-{name}", value)
    prompt = driver.find_element("id", "in-prompt")
    prompt.clear()
    prompt.send_keys("a photo of a cjw toy")
    driver.find_element("id", "in-image").send_keys(str(SAMPLE_PHOTOS[0]))  # a file input: uploaded through /v1/files
    if driver.find_elements("id", "in-disable_safety_check"):
        driver.find_element("id", "in-disable_safety_check").click()
    driver.find_element("id", "run").click()
    wait_until(
        driver,
        lambda d: d.execute_script(
            "const img = document.querySelector('#gallery img'); return img && img.complete && img.naturalWidth > 0 && img.naturalWidth;"
        ),
        300,
        "the output image",
    )
    assert "succeeded" in text_of(driver, "#prediction-status") and text_of(driver, "#seed") == "3"
    python = text_of(driver, "#python-snippet")
    assert "client.run(" in python and "alice/dash:sha256:" in python and '"seed": 3' in python
    assert f'"image": "{url}/v1/files/' in python  # the photo went up as a file of the service
    curl = text_of(driver, "#curl-snippet")
    assert "tok-alice" not in python + curl
    # The snippets run as shown, with the token from the environment.
    ran = subprocess.run(
        [sys.executable, "-c", python], capture_output=True, text=True, timeout=300, env={**os.environ, "REPLICATE_API_TOKEN": "tok-alice"}
    )
    assert ran.returncode == 0 and f"{url}/v1/files/" in ran.stdout, ran.stderr
    ran = subprocess.run(
        ["bash", "-c", curl + " --silent --max-time 120"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DREAMBUILD_API_TOKEN": "tok-alice"},
    )
    assert json.loads(ran.stdout)["status"] == "succeeded", ran.stdout + ran.stderr

    # The predictions history, with its thumbnail.
    driver.get(f"{url}/#/predictions")
    wait_until(
        driver,
        lambda d: d.execute_script(
            "const img = document.querySelector('#predictions img.thumb'); return img && img.complete && img.naturalWidth > 0;"
        ),
        30,
        "the prediction's thumbnail",
    )
    # Each row leads to the prediction's page: its status, version, input, outputs and logs.
    driver.find_element("css selector", "#predictions tbody a[href^='#/predictions/']").click()
    wait_until(driver, lambda d: "succeeded" in text_of(d, "#prediction-status"), 20, "the prediction's page")
    assert "alice/dash:" in text_of(driver, "#prediction") and driver.find_elements("css selector", ".gallery img")
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe  # no script error, no blocked resource (the page's policy allows only itself)

    # Another owner sees none of it.
    driver.find_element("id", "sign-out").click()
    sign_in(driver, url, "tok-bob")
    wait_until(driver, lambda d: d.find_element("id", "trainings"), 20, "bob's trainings list")
    assert not driver.find_elements("css selector", f'#trainings tr[data-id="{training_id}"]')
    assert httpx.get(f"{url}/v1/trainings/{training_id}/events", headers=BOB).status_code == 404
    assert httpx.get(f"{url}/v1/models", headers=BOB).json()["results"] == []
    assert [m["name"] for m in httpx.get(f"{url}/v1/models", headers=ALICE).json()["results"]] == ["dash"]


def test_the_event_stream_follows_a_training_to_its_end(service, tmp_path):
    """The stream a training page reads: the record as server-sent events each time it changes,
    ending by itself once the training is done; another owner's is 404; the catalog and the page."""
    from tests.helpers import photos_zip
    from tests.test_service import TRAIN_INPUT

    url = service.url
    catalog = httpx.get(f"{url}/v1/catalog", headers=ALICE).json()
    assert [t["name"] for t in catalog["trainers"]] == ["dreambooth"] and [t["name"] for t in catalog["templates"]] == ["vanilla"]
    assert httpx.get(f"{url}/v1/catalog").status_code == 401
    uploaded = httpx.post(f"{url}/v1/uploads/photos.zip", content=photos_zip(tmp_path / "photos.zip").read_bytes(), headers=ALICE).json()
    created = httpx.post(
        f"{url}/v1/trainings",
        headers=ALICE,
        json={
            "input": {**TRAIN_INPUT, "instance_data": uploaded["url"], "save_sample_prompt": "a photo of a cjw toy", "save_infer_steps": 2},
            "model": "alice/streamed",
            "trainer_version": catalog["trainers"][0]["version"],
            "template_version": catalog["templates"][0]["version"],
        },
    ).json()
    assert httpx.get(f"{url}/v1/trainings/{created['id']}/events", headers=BOB).status_code == 404
    with httpx.stream("GET", f"{url}/v1/trainings/{created['id']}/events", headers=ALICE, timeout=600) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())  # ends by itself once the training is done
    blocks = [block for block in body.split("\n\n") if block.strip() and not block.startswith(":")]
    assert all(block.startswith("event: training\ndata: {") for block in blocks), blocks[:3]
    states = [json.loads(block.split("data: ", 1)[1]) for block in blocks]
    assert len(states) >= 3 and len({json.dumps(s) for s in states}) == len(states)  # only changes are sent
    assert states[-1]["stage"] == "done" and states[-1]["status"] == "succeeded"
    assert "training" in {s["stage"] for s in states}
    assert any("step 4/4" in s["logs"] for s in states)
    # Its images: the photos of the upload, the samples of output.zip; nothing else is reachable.
    images = f"{url}/v1/trainings/{created['id']}/images"
    photos = httpx.get(f"{images}/photos", headers=ALICE).json()["images"]
    assert sorted(p["name"] for p in photos) == sorted(f"photos/{p.name}" for p in SAMPLE_PHOTOS)
    first = httpx.get(photos[0]["url"], headers=ALICE)
    assert (
        first.headers["content-type"] == "image/jpeg"
        and first.content == SAMPLE_PHOTOS[0].parent.joinpath(photos[0]["name"].removeprefix("photos/")).read_bytes()
    )
    samples = httpx.get(f"{images}/samples", headers=ALICE).json()["images"]
    assert samples and all(httpx.get(s["url"], headers=ALICE).content[:8] == b"\x89PNG\r\n\x1a\n" for s in samples)
    assert httpx.get(photos[0]["url"], headers=BOB).status_code == 404
    for name in ("..%2Foutput.zip", "args.json", "..%2Fargs.json", "%2E%2E/%2E%2E/output.zip", "photos/missing.jpg"):
        assert httpx.get(f"{images}/samples/{name}", headers=ALICE).status_code == 404, name
    assert httpx.get(f"{images}/weights", headers=ALICE).status_code == 422
    page = httpx.get(f"{url}/")
    assert "default-src 'self'" in page.headers["content-security-policy"] and '<script src="/ui/app.js">' in page.text


def test_cancel_from_the_training_page(browser, service, tmp_path):
    from tests.helpers import photos_zip
    from tests.test_service import TRAIN_INPUT

    url = service.url
    catalog = httpx.get(f"{url}/v1/catalog", headers=ALICE).json()
    uploaded = httpx.post(f"{url}/v1/uploads/photos.zip", content=photos_zip(tmp_path / "photos.zip").read_bytes(), headers=ALICE).json()
    created = httpx.post(
        f"{url}/v1/trainings",
        headers=ALICE,
        json={
            "input": {**TRAIN_INPUT, "instance_data": uploaded["url"], "max_train_steps": 100_000},
            "model": "alice/long",
            "trainer_version": catalog["trainers"][0]["version"],
            "template_version": catalog["templates"][0]["version"],
        },
    ).json()
    sign_in(browser, url, "tok-alice")
    wait_until(browser, lambda d: d.find_element("id", "trainings"), 20, "the trainings list")
    browser.get(f"{url}/#/trainings/{created['id']}")
    wait_until(browser, lambda d: "ETA" in text_of(d, ".progress-label"), 300, "the trainer's progress")  # live, with its ETA
    browser.find_element("id", "cancel").click()
    wait_until(browser, lambda d: "canceled" in text_of(d, "#status"), 120, "the training to be canceled")
    assert httpx.get(f"{url}/v1/trainings/{created['id']}", headers=ALICE).json()["status"] == "canceled"


def test_a_zip_dropped_on_the_page_is_uploaded_as_it_is(browser, service, tmp_path):
    """Dropping one zip (a drop event with a file, as a desktop drag gives) uploads it unchanged."""
    import base64

    from tests.helpers import photos_zip

    url = service.url
    archive = photos_zip(tmp_path / "mine.zip").read_bytes()
    sign_in(browser, url, "tok-alice")
    wait_until(browser, lambda d: d.find_element("id", "trainings"), 20, "the trainings list")
    browser.get(f"{url}/#/new")
    wait_until(browser, lambda d: d.find_element("id", "drop"), 20, "the drop zone")
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "my photos.zip", { type: "application/zip" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    """,
        base64.b64encode(archive).decode(),
    )
    assert "1 file(s): my photos.zip" in text_of(browser, "#photo-list")
    browser.find_element("id", "model").send_keys("alice/dropped")
    browser.find_element("id", "start").click()
    wait_until(browser, lambda d: "#/trainings/" in d.current_url, 60, "the new training's page")
    training = httpx.get(f"{url}/v1/trainings/{browser.current_url.rsplit('/', 1)[1]}", headers=ALICE).json()
    httpx.post(training["urls"]["cancel"], headers=ALICE)
    assert training["input"]["instance_data"].endswith("/my_photos.zip")
    assert httpx.get(training["input"]["instance_data"]).content == archive


def test_a_tenants_page_never_runs_in_a_signed_in_tab(browser, service):
    """Issue 26, class 3, in the browser: an upload holding a script (as HTML, and as SVG, which
    browsers also run), opened in the tab where the dashboard keeps its token, is downloaded, not
    rendered: its script never runs, so it reads no token."""
    script = b"<script>document.title = 'PWNED ' + sessionStorage.getItem('dreambuild.token')</script>"
    pages = {
        "notes.html": b"<html><body>" + script + b"</body></html>",
        "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg">'
        + script.replace(b"<script>", b"<script><![CDATA[").replace(b"</script>", b"]]></script>")
        + b"</svg>",
    }
    sign_in(browser, service.url, "tok-alice")
    wait_until(browser, lambda d: d.find_element("id", "trainings"), 20, "the trainings list")
    assert browser.execute_script("return sessionStorage.getItem('dreambuild.token')") == "tok-alice"
    for name, page in pages.items():
        url = httpx.post(f"{service.url}/v1/uploads/{name}", content=page, headers=ALICE).json()["url"]
        browser.get(url)
        time.sleep(1)  # a script that runs has had its time
        assert "PWNED" not in browser.title and "PWNED" not in browser.page_source, (name, browser.title)


def test_a_trainings_likeness_is_charted_beside_its_samples(browser, service, tmp_path):
    """measure_likeness: the training page draws each score over the steps (an SVG line each) and
    lists the same numbers; keep_best's step is marked."""
    from tests.helpers import photos_zip
    from tests.test_service import TRAIN_INPUT

    url = service.url
    catalog = httpx.get(f"{url}/v1/catalog", headers=ALICE).json()
    uploaded = httpx.post(f"{url}/v1/uploads/photos.zip", content=photos_zip(tmp_path / "photos.zip").read_bytes(), headers=ALICE).json()
    extra = {"measure_likeness": True, "keep_best": True, "validation_steps": 2, "save_infer_steps": 2}
    created = httpx.post(
        f"{url}/v1/trainings",
        headers=ALICE,
        json={
            "input": {**TRAIN_INPUT, "instance_data": uploaded["url"], **extra},
            "model": "alice/charted",
            "trainer_version": catalog["trainers"][0]["version"],
            "template_version": catalog["templates"][0]["version"],
        },
    ).json()
    done = service.wait(created["id"])
    assert done["status"] == "succeeded", done["error"]
    likeness = done["metrics"]["likeness"]
    sign_in(browser, url, "tok-alice")
    wait_until(browser, lambda d: d.find_element("id", "trainings"), 20, "the trainings list")
    browser.get(f"{url}/#/trainings/{created['id']}")
    wait_until(browser, lambda d: d.find_elements("css selector", "#likeness-chart polyline"), 30, "the likeness chart")
    lines = browser.find_elements("css selector", "#likeness-chart polyline")
    assert sorted(line.get_attribute("data-score") for line in lines) == ["clip_i", "clip_t", "dino", "prior_drift"]
    assert all(len(line.get_attribute("points").split()) == len(likeness["steps"]) for line in lines)
    rows = browser.find_elements("css selector", "#likeness-table tbody tr")
    assert [row.find_elements("tag name", "td")[0].text for row in rows] == [str(e["step"]) for e in likeness["steps"]]
    assert rows[-1].find_elements("tag name", "td")[1].text == f"{likeness['final']['dino']:.3f}"
    kept = [row.find_elements("tag name", "td")[0].text for row in rows if "kept" in row.get_attribute("class")]
    assert kept == ([str(likeness["kept_step"])] if likeness["kept_step"] is not None else []), likeness
