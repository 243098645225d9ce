"""The web page end to end in headless Chromium (Debian's, driven by Playwright; no browser
download): token, teach from the file picker and the camera, predict, delete."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # a fake camera (a moving test pattern) that needs no permission prompt
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest.fixture(scope="module")
def page(shared_server):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium) to run the browser test")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = browser.new_context(permissions=["camera"])
            page = context.new_page()
            page.errors = []
            page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.on("dialog", lambda d: d.accept())  # "Delete the class ...?"
            page.goto(shared_server.url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=20000)
            yield page
        finally:
            browser.close()


def picture(kit, seed: int) -> dict:
    return {"name": f"teal{seed}.png", "mimeType": "image/png", "buffer": kit.image_bytes((40, 200, 200), seed=seed)}


def test_page_teach_predict_delete(page, shared_server, kit):
    from playwright.sync_api import expect

    status = page.locator("#status")
    expect(page.locator("#model-info")).to_contain_text("conv4")
    expect(page.locator("#token-section")).to_be_visible()  # this server wants a token for writes
    expect(page.locator("tr[data-name='base_a'] td").nth(1)).to_have_text("base")
    expect(page.locator("tr[data-name='base_a'] button")).to_have_count(0)  # base classes cannot be deleted

    # teach from the file picker, first with a wrong token
    page.fill("#token", "wrong")
    page.fill("#class-name", "page teal")
    page.set_input_files("#teach-files", [picture(kit, s) for s in (300, 301, 302)])
    expect(page.locator("#teach-pending img")).to_have_count(3)
    page.click("#teach-btn")
    expect(status).to_contain_text("wrong token")
    page.fill("#token", kit.TOKEN)
    page.click("#teach-btn")
    expect(status).to_contain_text('"page teal" created: 3 examples')
    expect(page.locator("tr[data-name='page teal'] td").nth(2)).to_have_text("3")
    expect(page.locator("#teach-pending img")).to_have_count(0)

    # a picture from the camera, added to the class
    page.click("#camera-start")
    page.wait_for_selector("body[data-camera='ready']", timeout=15000)
    page.click("#snap-teach")
    expect(page.locator("#teach-pending img")).to_have_count(1)
    page.click("#teach-btn")
    expect(status).to_contain_text('"page teal" updated: 4 examples')
    expect(page.locator("tr[data-name='page teal'] td").nth(2)).to_have_text("4")
    stored = shared_server.client().get("/classes/page teal").json()["stored_examples"]
    assert [e["filename"] for e in stored] == ["teal300.png", "teal301.png", "teal302.png", "camera-1.jpg"]

    # the top predictions of a picture: the page shows what the API answers
    probe = picture(kit, 301)
    page.fill("#top-k", "3")
    page.set_input_files("#predict-files", [probe])
    page.click("#predict-btn")
    result = page.locator("#predictions .result")
    expect(result).to_have_count(1)
    expect(result.locator("tbody tr")).to_have_count(3)
    api = shared_server.client().post("/predict", params={"k": 3}, files=kit.files((probe["name"], probe["buffer"])))
    top = api.json()["predictions"][0]["top"]
    assert "page teal" in [t["class"] for t in top]
    rows = result.locator("tbody tr")
    for i, t in enumerate(top):
        cells = rows.nth(i).locator("td")
        expect(cells.nth(1)).to_have_text(t["class"])
        expect(cells.nth(2)).to_have_text(f"{100 * t['probability']:.1f}%")
        expect(cells.nth(3)).to_have_text(f"{t['cosine']:.3f}")

    # predict straight from the camera
    page.click("#snap-predict")
    expect(page.locator("#predictions caption")).to_contain_text("camera-2.jpg")
    expect(page.locator("#predictions tbody tr")).to_have_count(3)
    page.click("#camera-stop")

    # delete the class
    page.click("tr[data-name='page teal'] button.delete")
    expect(status).to_contain_text('Deleted "page teal"')
    expect(page.locator("tr[data-name='page teal']")).to_have_count(0)
    names = [c["name"] for c in shared_server.client().get("/classes").json()["classes"]]
    assert "page teal" not in names

    # no script errors and no content-security-policy violations (failed 401 fetches aside)
    assert [e for e in page.errors if "Failed to load resource" not in e] == []


def test_page_examples_remove_one_and_rename(page, shared_server, kit):
    """The examples panel: thumbnails, removing one (the API then has the class of the others)
    and renaming; the verdict line shows the calibrated probability or "unknown"."""
    from playwright.sync_api import expect

    status = page.locator("#status")
    page.fill("#token", kit.TOKEN)
    page.fill("#class-name", "edit teal")
    page.set_input_files("#teach-files", [picture(kit, s) for s in (400, 401, 402)])
    page.click("#teach-btn")
    expect(status).to_contain_text('"edit teal" created: 3 examples')

    page.click("tr[data-name='edit teal'] button.examples")
    panel = page.locator("tr.examples-row[data-for='edit teal']")
    expect(panel.locator("figure.example img")).to_have_count(3)
    ids = shared_server.client().get("/classes/edit teal/examples").json()["examples"]
    panel.locator(f"figure.example[data-id='{ids[0]['id']}'] button.remove-example").click()
    expect(status).to_contain_text('"edit teal" has 2 examples')
    expect(panel.locator("figure.example")).to_have_count(2)
    expect(page.locator("tr[data-name='edit teal'] td").nth(2)).to_have_text("2")
    left = shared_server.client().get("/classes/edit teal/examples").json()["examples"]
    assert [e["id"] for e in left] == [e["id"] for e in ids[1:]]

    panel.locator("input.rename-input").fill("edit teal 2")
    panel.locator("button.rename").click()
    expect(status).to_contain_text('Renamed "edit teal" to "edit teal 2"')
    expect(page.locator("tr[data-name='edit teal 2'] td").nth(2)).to_have_text("2")
    expect(page.locator("tr.examples-row[data-for='edit teal 2'] figure.example")).to_have_count(2)

    page.set_input_files("#predict-files", [picture(kit, 401)])
    page.click("#predict-btn")
    verdict = page.locator("#predictions .verdict")
    expect(verdict).to_have_count(1)
    api = shared_server.client().post("/predict", params={"k": 1}, files=kit.files(("p.png", picture(kit, 401)["buffer"])))
    p = api.json()["predictions"][0]
    best = p["top"][0]
    text = f"{best['class']}: {100 * best['probability']:.1f}%"
    expect(verdict).to_have_text(f"unknown (closest: {best['class']}, {100 * best['probability']:.1f}%)"
                                 if p["unknown"] else text)

    page.click("tr[data-name='edit teal 2'] button.delete")
    expect(page.locator("tr[data-name='edit teal 2']")).to_have_count(0)
    assert [e for e in page.errors if "Failed to load resource" not in e] == []


def test_docs_render_with_no_network(page, shared_server):
    """Swagger UI at /docs renders the endpoints while every request to another host fails."""
    from playwright.sync_api import expect

    outside = []

    def block(route):
        if not route.request.url.startswith(shared_server.url):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", block)
    try:
        page.goto(shared_server.url + "/docs")
        expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=20000)
        expect(page.locator(".swagger-ui")).to_contain_text("/classes/{name}/examples")
    finally:
        page.unroute("**/*")
    assert outside == []


def test_page_calibrates_and_shows_sets_and_not_one_of_my_classes(page, conv4_model, start_server, tmp_path, kit):
    """On a server of its own (calibrating changes the scale): teach three colours from the
    page, calibrate (the guaranteed false-reject rate is said), then predict: the page's "could
    be" line is the API's set for the same picture, and a picture whose set is empty reads
    "Not one of my classes"."""
    from playwright.sync_api import expect

    server = start_server(conv4_model, tmp_path / "sets.sqlite")
    colours = {"set red": (220, 30, 30), "set green": (30, 200, 40), "set blue": (30, 40, 220)}
    context = page.context.browser.new_context()  # the module's browser, a page of its own
    try:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=20000)
        status = page.locator("#status")
        for i, (name, colour) in enumerate(colours.items()):  # 3 x 7 = 21 examples: enough for 5 %
            page.fill("#class-name", name)
            page.set_input_files("#teach-files", [
                {"name": f"{i}-{s}.png", "mimeType": "image/png", "buffer": kit.image_bytes(colour, seed=50 * i + s)}
                for s in range(7)])
            page.click("#teach-btn")
            expect(status).to_contain_text(f'"{name}" created: 7 examples')
        page.click("#calibrate-btn")
        expect(status).to_contain_text("Calibrated on 21 pictures")
        expect(status).to_contain_text("at most 5 % of taught pictures called unknown")

        # a random conv4 tells colours apart only roughly: which pictures get an empty set is
        # asked of the API, and the page must show each as the API answers it
        candidates = [("red.png", kit.image_bytes((220, 30, 30), seed=999))] + [
            (f"odd{s}.png", kit.image_bytes(c, seed=s, noise=120))
            for s, c in enumerate([(128, 128, 128), (250, 250, 20), (0, 0, 0), (255, 255, 255), (200, 40, 200)])]
        answers = {name: server.client().post("/predict", params={"k": 3, "coverage": 0.9},
                                              files=kit.files((name, data))).json()["predictions"][0]
                   for name, data in candidates}
        empty = [name for name, a in answers.items() if a["set"] == []]
        full = [name for name, a in answers.items() if a["set"]]
        assert full and empty, answers  # the page is shown a set with classes, and an empty one
        for name in (full[0], empty[0]):
            data = dict(candidates)[name]
            page.set_input_files("#predict-files", [{"name": name, "mimeType": "image/png", "buffer": data}])
            page.click("#predict-btn")
            line = page.locator("#predictions .set")
            expect(line).to_have_count(1)
            want = answers[name]["set"]
            expect(line).to_have_text(f"Could be (90 % sets): {', '.join(want)}" if want
                                      else "Not one of my classes (an empty 90 % set)")
        assert errors == []
    finally:
        context.close()
