"""The web page in a real browser: headless Chromium (Debian's package, driven by Playwright) loads the
page from a server on 127.0.0.1, uploads real photos, and the numbers it shows equal the API's.

Skips, saying why, when Playwright or a Chromium binary is missing (CI installs Debian's chromium).
Screenshots of the three views go to a temporary folder, or to docs/ with ROBUSTSIM_UPDATE_SCREENSHOTS=1.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from conftest import REPO, real_photo  # noqa: E402

import robustsim  # noqa: E402
from robustsim.images import save_image  # noqa: E402
from robustsim.retrieval.index import build_index  # noqa: E402
from robustsim.serve.app import ServeConfig, create_app  # noqa: E402
from robustsim.serve.background import BackgroundServer  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _chromium() -> str:
    for cand in (os.environ.get("ROBUSTSIM_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    pytest.skip("no Chromium binary found (apt-get install chromium, or set ROBUSTSIM_CHROMIUM)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("page")
    g = d / "gallery"
    g.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        save_image(real_photo(name, 96), g / f"{name}.png")
    ref = real_photo("chelsea", 96)
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    save_image(ref, d / "ref.png")
    save_image((ref + 0.04 * noise).clamp(0, 1), d / "x0.png")  # mild noise: the closer one for both metrics
    save_image(torch.roll(ref, shifts=3, dims=-1), d / "x1.png")  # shifted by 3 pixels
    save_image(real_photo("coffee", 96).flip(-1), d / "query.png")
    metric = robustsim.load("lipsim-default")
    ix = build_index(metric, g, progress=False)
    return d, ix.save(d / "g.rsidx"), metric


@pytest.fixture(scope="module")
def server(photos):
    app = create_app(ServeConfig(index=str(photos[1]), baseline="auto", preloaded={"lipsim-default": photos[2]}))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server):
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(120_000)
        yield pg
        browser.close()


def _shots() -> Path:
    if os.environ.get("ROBUSTSIM_UPDATE_SCREENSHOTS") == "1":
        return REPO / "docs"
    return Path(os.environ.get("PYTEST_TMP_SHOTS", "/tmp")) / "robustsim_serve_shots"


def _value(loc) -> float:
    return float(loc.get_attribute("data-value"))


def _shown(loc) -> float:
    return float(loc.inner_text().replace("−", "-"))


def _files(d: Path, *names):
    return {k: (f"{k}.png", (d / f"{n}.png").read_bytes(), "image/png") for k, n in names}


def test_page_compare_attack_search_match_the_api(server, page, photos):
    d = photos[0]
    shots = _shots()
    shots.mkdir(parents=True, exist_ok=True)
    api = httpx.Client(base_url=server.url, timeout=120)
    health = api.get("/api/health").json()
    metrics = [health["metric"]] + ([health["baseline"]] if health["baseline"] else [])

    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('server').textContent.startsWith('metric')")
    for key in ("ref", "x0", "x1"):
        page.set_input_files(f"#file-{key}", str(d / f"{key}.png"))
    page.click("#btn-compare")
    page.wait_for_selector("#compare-table")
    assert page.inner_text("#compare-status") == "done"
    for name in metrics:
        want = api.post("/api/compare", files=_files(d, ("ref", "ref"), ("x0", "x0"), ("x1", "x1")), data={"metric": name}).json()
        row = page.locator(f'#compare-table tr[data-metric="{name}"]')
        for field in ("d0", "d1"):
            cell = row.locator(f'[data-field="{field}"]')
            assert _value(cell) == want[field]  # the exact number the API returns
            assert _shown(cell) == pytest.approx(want[field], rel=1e-3)  # and what a person reads
        assert row.locator('[data-field="closer"]').get_attribute("data-value") == want["closer"]
        if want["certificate"]:
            cell = row.locator('[data-field="radius"]')
            assert _value(cell) == want["certificate"]["radius"]
            assert page.locator(f'.scale[data-metric="{name}"] svg.radiusbar').count() == 1
        if want.get("spatial_map"):
            assert page.locator(f'.maps[data-metric="{name}"] img').count() == 2
    page.screenshot(path=str(shots / "serve_compare.png"), full_page=True)

    page.fill("#attack-eps", "0.25")  # below lipsim-default's radius here, enough to flip LPIPS
    page.fill("#attack-steps", "10")
    with page.expect_response(lambda r: r.url.endswith("/api/attack")) as got:  # an attack is seconds: use the page's own answer
        page.click("#btn-attack")
    want = got.value.json()
    page.wait_for_selector("#attack-results .card")
    assert page.inner_text("#attack-status") == "done"
    assert [r["metric"] for r in want["results"]] == metrics and want["eps"] == 0.25 and want["steps"] == 10
    for row in want["results"]:
        card = page.locator(f'#attack-results .card[data-metric="{row["metric"]}"]')
        assert card.locator('[data-field="changed"]').get_attribute("data-value") == str(row["changed"]).lower()
        assert _value(card.locator('[data-field="perturbation_l2"]')) == pytest.approx(row["perturbation_l2"], rel=1e-6)
        assert _value(card.locator('[data-field="adv-d0"]')) == pytest.approx(row["adversarial"]["d0"], rel=1e-6)
        assert card.locator("img.adv").evaluate("i => i.complete && i.naturalWidth > 0")
        if row["certified"]:
            assert _value(card.locator('[data-field="certified_radius"]')) == row["certified_radius"]
    page.screenshot(path=str(shots / "serve_attack.png"), full_page=True)

    page.click("#tab-search")
    page.set_input_files("#file-query", str(d / "query.png"))
    page.fill("#search-k", "4")
    page.fill("#search-tau", "0.05")
    page.click("#btn-search")
    page.wait_for_selector("#neighbours .card")
    page.wait_for_function("Array.from(document.querySelectorAll('#neighbours img')).every(i => i.complete && i.naturalWidth > 0)")
    want = api.post("/api/search", files={"query": ("q.png", (d / "query.png").read_bytes(), "image/png")},
                    data={"k": "4", "tau": "0.05"}).json()
    cards = page.locator("#neighbours .card")
    assert cards.count() == len(want["neighbours"]) == 4
    for i, n in enumerate(want["neighbours"]):
        card = cards.nth(i)
        assert card.get_attribute("data-row") == str(n["row"])
        assert _value(card.locator('[data-field="distance"]')) == n["distance"]
        assert card.locator('[data-field="duplicate"]').get_attribute("data-value") == str(n["duplicate"]).lower()
        if n["duplicate_radius"] is not None:
            assert _value(card.locator('[data-field="duplicate_radius"]')) == n["duplicate_radius"]
    if want["top1_radius"] is not None:
        assert _value(page.locator('[data-field="top1_radius"]')) == want["top1_radius"]
    page.screenshot(path=str(shots / "serve_search.png"), full_page=True)
    api.close()


def test_page_shows_api_errors(server, page, photos):
    d = photos[0]
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('server').textContent.startsWith('metric')")
    bad = d / "bad.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#file-ref", str(bad))
    page.set_input_files("#file-x0", str(d / "x0.png"))
    page.set_input_files("#file-x1", str(d / "x1.png"))
    page.click("#btn-compare")
    page.wait_for_function("document.getElementById('compare-status').classList.contains('error')")
    assert "field 'ref'" in page.inner_text("#compare-status")
