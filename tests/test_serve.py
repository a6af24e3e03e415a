"""`robustsim serve`: the API against the library, every bad input as a one-line 4xx, limits (413, 503,
504), atomic index updates (a failed request writes nothing; a killed server loses no committed entry),
and a small load run. Servers bind to 127.0.0.1 only; every loop is bounded."""
from __future__ import annotations

import hashlib
import io as stdio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("faiss")
httpx = pytest.importorskip("httpx")

from conftest import REPO, real_photo  # noqa: E402

import robustsim  # noqa: E402
from robustsim import certify  # noqa: E402
from robustsim.images import save_image  # noqa: E402
from robustsim.retrieval.index import build_index, load_index, save_sharded  # noqa: E402
from robustsim.serve.app import ServeConfig, create_app  # noqa: E402
from robustsim.serve.background import BackgroundServer  # noqa: E402
from robustsim.serve.limits import Gate, Limits, Overloaded, TimedOut  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # five distinct photos (skimage's cat is chelsea)


def png_bytes(x: torch.Tensor) -> bytes:
    from PIL import Image

    a = (x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = stdio.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def decoded(data: bytes, tmp: Path) -> torch.Tensor:
    """What the server decodes from an upload (the same robustsim.images decoder)."""
    from robustsim.images import load_image

    p = tmp / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
    p.write_bytes(data)
    return load_image(p)


@pytest.fixture(scope="module")
def lipsim():
    """One instance for the module: certified metrics pay a one-time set-up per instance (rounding bounds)."""
    return robustsim.load("lipsim-default")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, lipsim):
    root = tmp_path_factory.mktemp("serve")
    g = root / "gallery"
    g.mkdir()
    for name in PHOTOS:
        save_image(real_photo(name, 64), g / f"{name}.png")
    ix = build_index(lipsim, g, progress=False)
    path = ix.save(root / "g.rsidx")
    return root, path


@pytest.fixture(scope="module")
def client(gallery, lipsim):
    from fastapi.testclient import TestClient

    root, path = gallery
    app = create_app(ServeConfig(index=str(path), baseline=None, preloaded={"lipsim-default": lipsim},
                                 limits=Limits(max_upload_bytes=2_000_000, max_pixels=200_000, timeout_s=60)))
    with TestClient(app) as c:
        c.svc = app.service
        yield c


@pytest.fixture(scope="module")
def triplet():
    ref = real_photo("astronaut", 64)
    x0 = (ref + 0.03 * torch.sin(torch.arange(64.0))[None, None, None]).clamp(0, 1)
    x1 = real_photo("coffee", 64)
    return [png_bytes(t) for t in (ref, x0, x1)]


def assert_one_line_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    text = r.text.strip()
    assert "\n" not in text and "Traceback" not in text
    body = json.loads(text)
    assert set(body) == {"error", "status"} and body["status"] == status and body["error"]
    return body["error"]


# ------------------------------------------------------------------------------------ endpoints
def test_health_models_and_openapi(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["metric"] == "lipsim-default" and h["index"]["count"] == len(PHOTOS)
    names = {m["name"]: m for m in client.get("/api/models").json()}
    assert names["lipsim-default"]["loaded"] and names["lipsim-default"]["certified"]
    spec = client.get("/openapi.json").json()
    for p in ("/api/health", "/api/models", "/api/distance", "/api/compare", "/api/attack", "/api/search",
              "/api/index/add"):
        assert p in spec["paths"], p
    assert client.svc.warm_up() >= 0  # the start-up certificate runs on the loaded certified metric
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    page = client.get("/")
    assert page.status_code == 200 and "<title>robustsim" in page.text and client.get("/app.js").status_code == 200


def test_distance_and_compare_equal_the_library(client, triplet, tmp_path):
    m = client.svc.metrics["lipsim-default"]
    ref, x0, x1 = (decoded(t, tmp_path) for t in triplet)
    r = client.post("/api/distance", files={"a": triplet[0], "b": triplet[2]}, data={"eps": "0.05", "tau": "0.3"})
    assert r.status_code == 200, r.text
    body = r.json()
    with torch.no_grad():
        assert body["distance"] == pytest.approx(float(m(ref, x1)[0]), rel=1e-6)
        lo, hi = certify.distance_interval(m, ref, x1, 0.05)
        th = certify.threshold(m, ref, x1, 0.3)
    assert body["interval"]["lo"] == pytest.approx(float(lo[0]), rel=1e-6)
    assert body["interval"]["hi"] == pytest.approx(float(hi[0]), rel=1e-6)
    assert body["interval"]["lo"] <= body["distance"] <= body["interval"]["hi"]
    assert body["threshold"]["duplicate"] == bool(th.decision[0])
    assert body["threshold"]["radius"] == pytest.approx(float(th.radius[0]), rel=1e-6, abs=1e-12)

    r = client.post("/api/compare", files=dict(zip(("ref", "x0", "x1"), triplet)))
    assert r.status_code == 200, r.text
    body = r.json()
    with torch.no_grad():
        c = certify.two_afc(m, ref, x0, x1)
    assert body["closer"] == "x0" == body["certificate"]["closer"]
    assert body["certificate"]["radius"] == pytest.approx(float(c.radius[0]), rel=1e-6, abs=1e-12)
    sc = body["certificate"]["scale"]
    assert sc["values"] == 3 * 64 * 64 and sc["rms_per_pixel"] == pytest.approx(body["certificate"]["radius"] / np.sqrt(3 * 64 * 64))


def test_search_equals_the_library_and_serves_thumbnails(client, gallery, tmp_path):
    from robustsim.retrieval.search import search

    root, path = gallery
    q = real_photo("chelsea", 64)
    r = client.post("/api/search", files={"query": png_bytes(q)}, data={"k": "3", "tau": "0.05"})
    assert r.status_code == 200, r.text
    body = r.json()
    lib = search(load_index(path), client.svc.metrics["lipsim-default"], [decoded(png_bytes(q), tmp_path)], k=3, tau=0.05)[0]
    assert [n["name"] for n in body["neighbours"]] == [Path(n.path).name for n in lib.neighbours]
    assert body["neighbours"][0]["name"] == "chelsea.png" and body["neighbours"][0]["duplicate"] is True
    assert body["top1_radius"] == pytest.approx(lib.top1_radius, rel=1e-9) and body["top1_radius"] > 0
    for got, want in zip(body["neighbours"], lib.neighbours):
        assert got["distance"] == pytest.approx(want.distance, rel=1e-9, abs=1e-15)
        assert got["duplicate_radius"] == pytest.approx(want.duplicate_radius, rel=1e-9)
    t = client.get(body["neighbours"][0]["thumb"])
    assert t.status_code == 200 and t.headers["content-type"] == "image/png" and t.content[:4] == b"\x89PNG"
    assert_one_line_error(client.get("/api/index/thumb/999"), 404)


def test_attack_shows_certified_next_to_baseline(gallery, triplet, lipsim):
    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(baseline="effnet-lite0-cosine", preloaded={"lipsim-default": lipsim}))
    with TestClient(app) as c:
        assert c.get("/api/health").json()["baseline"] == "effnet-lite0-cosine"
        r = c.post("/api/attack", files=dict(zip(("ref", "x0", "x1"), triplet)), data={"eps": "0.5", "steps": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
    rows = {row["metric"]: row for row in body["results"]}
    assert set(rows) == {"lipsim-default", "effnet-lite0-cosine"}
    cert = rows["lipsim-default"]
    assert cert["certified"] and cert["certified_radius"] >= 0 and rows["effnet-lite0-cosine"]["certified_radius"] is None
    for row in rows.values():
        assert row["perturbation_l2"] <= 0.5 * (1 + 1e-4)
        assert row["image"].startswith("data:image/png;base64,")
        assert row["changed"] == (row["clean"]["closer"] != row["adversarial"]["closer"])
    if cert["certified_at_eps"]:  # a certificate above eps must hold against the attack
        assert not cert["changed"]


# ------------------------------------------------------------------------------------ bad input
def _truncated_png() -> bytes:
    return png_bytes(real_photo("astronaut", 64))[:300]


@pytest.mark.parametrize("case,files,data,status", [
    ("not an image", {"a": b"hello, not an image", "b": "GOOD"}, {}, 400),
    ("truncated", {"a": "TRUNC", "b": "GOOD"}, {}, 400),
    ("empty file", {"a": b"", "b": "GOOD"}, {}, 400),
    ("missing field", {"a": "GOOD"}, {}, 422),
    ("wrong field name", {"image": "GOOD", "b": "GOOD"}, {}, 422),
    ("unknown metric", {"a": "GOOD", "b": "GOOD"}, {"metric": "no-such-metric"}, 400),
    ("eps not a number", {"a": "GOOD", "b": "GOOD"}, {"eps": "abc"}, 400),
    ("tau out of range", {"a": "GOOD", "b": "GOOD"}, {"tau": "3"}, 400),
    ("too many pixels", {"a": "BIG", "b": "GOOD"}, {}, 413),
])
def test_bad_input_is_a_one_line_4xx(client, case, files, data, status):
    good = png_bytes(real_photo("astronaut", 64))
    big = png_bytes(torch.rand(1, 3, 500, 500))  # 250k pixels > the fixture's 200k limit
    sub = {"GOOD": good, "TRUNC": _truncated_png(), "BIG": big}
    files = {k: sub.get(v, v) if isinstance(v, str) else v for k, v in files.items()}
    msg = assert_one_line_error(client.post("/api/distance", files=files, data=data), status)
    assert "/tmp" not in msg and "robustsim-serve-" not in msg  # names the field, not a temporary file
    assert client.get("/api/health").json()["status"] == "ok"


def test_body_limits_by_header_and_by_stream(client):
    blob = b"\0" * 2_100_000
    assert_one_line_error(client.post("/api/distance", files={"a": blob, "b": blob}), 413)

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b"x" * 100_000

    r = client.post("/api/distance", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert_one_line_error(r, 413)
    assert_one_line_error(client.get("/api/nope"), 404)
    assert_one_line_error(client.post("/api/search", data={"k": "3"}), 422)


def test_search_without_index_and_updates_disabled(client, triplet, lipsim):
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(baseline=None, preloaded={"lipsim-default": lipsim}))) as c:
        assert_one_line_error(c.post("/api/search", files={"query": triplet[0]}), 409)
    assert_one_line_error(client.post("/api/index/add", files=[("images", ("a.png", triplet[0]))]), 403)


# ------------------------------------------------------------------------------------ limits
def test_gate_refuses_beyond_capacity_and_times_out():
    import asyncio

    release = threading.Event()

    def slow():
        release.wait(5)
        return "done"

    async def scenario():
        gate = Gate(workers=1, queue=1, timeout_s=5)
        a = asyncio.ensure_future(gate.run(slow))
        b = asyncio.ensure_future(gate.run(slow))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await gate.run(slow)
        assert gate.stats()["rejected"] == 1 and gate.stats()["in_progress"] == 2
        release.set()
        assert await a == "done" and await b == "done"
        assert await gate.run(lambda: 7) == 7

        quick = Gate(workers=1, queue=0, timeout_s=0.1)
        stop = threading.Event()
        with pytest.raises(TimedOut):
            await quick.run(lambda: stop.wait(2))
        # the timed-out computation still runs: its slot stays taken until it ends
        with pytest.raises(Overloaded):
            await quick.run(lambda: 1)
        stop.set()
        for _ in range(100):
            if quick.stats()["in_progress"] == 0:
                break
            await asyncio.sleep(0.02)
        assert await quick.run(lambda: 1) == 1
        gate.shutdown()
        quick.shutdown()

    asyncio.run(scenario())


def test_load_and_overload_on_loopback(gallery, triplet, lipsim):
    """A bounded run at concurrency 8 answers everything; a burst beyond capacity gets 503s; the server stays up."""
    app = create_app(ServeConfig(baseline=None, limits=Limits(workers=2, queue=8), preloaded={"lipsim-default": lipsim}))
    lat = []
    with BackgroundServer(app) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            def one(_):
                t = time.perf_counter()
                r = c.post("/api/distance", files={"a": triplet[0], "b": triplet[1]})
                lat.append(time.perf_counter() - t)
                return r.status_code

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(one, range(40)))
            assert codes == [200] * 40

        app.service.gate.queue = 0  # overload: admit one request at a time, then 32 arrive at once
        app.service.gate.workers = 1
        big = png_bytes(real_photo("astronaut", 256))
        with httpx.Client(base_url=srv.url, timeout=60, limits=httpx.Limits(max_connections=32)) as c:
            with ThreadPoolExecutor(32) as pool:
                codes = list(pool.map(lambda _: c.post("/api/distance", files={"a": big, "b": big}), range(32)))
            statuses = [r.status_code for r in codes]
            assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
            for r in codes:
                if r.status_code == 503:
                    assert_one_line_error(r, 503)
                    assert r.headers.get("retry-after") == "1"
            assert c.get("/api/health").json()["status"] == "ok"
            assert c.post("/api/distance", files={"a": triplet[0], "b": triplet[1]}).status_code == 200
    assert np.percentile(lat, 50) < 30


# ------------------------------------------------------------------------------------ index updates
def _digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_index_add_commits_atomically_and_failures_write_nothing(gallery, tmp_path, layout, lipsim):
    from fastapi.testclient import TestClient

    src = load_index(gallery[1])
    path = tmp_path / "g.rsidx" if layout == "file" else tmp_path / "g.shards"
    src.save(path) if layout == "file" else save_sharded(src, path, shard_size=3)
    app = create_app(ServeConfig(index=str(path), baseline=None, allow_index_updates=True,
                                 preloaded={"lipsim-default": lipsim}))
    new = [png_bytes(real_photo(n, 48)) for n in ("rocket", "coins")]
    with TestClient(app) as c:
        before = _digest(path)
        bad = c.post("/api/index/add", files=[("images", ("ok.png", new[0])), ("images", ("bad.png", b"GIF89a broken"))])
        assert_one_line_error(bad, 400)
        assert _digest(path) == before and len(load_index(path)) == len(PHOTOS)
        assert c.get("/api/index").json()["count"] == len(PHOTOS)
        ok = c.post("/api/index/add", files=[("images", ("a.png", new[0])), ("images", ("b.png", new[1]))])
        assert ok.status_code == 200, ok.text
        added = ok.json()["added"]
        assert len(added) == 2 and ok.json()["count"] == len(PHOTOS) + 2
        again = c.post("/api/index/add", files=[("images", ("a.png", new[0]))]).json()
        assert again["added"] == [] and again["already_indexed"] == [added[0]]
        # the new entries are searchable, and are on disk
        r = c.post("/api/search", files={"query": new[1]}, data={"k": "1"}).json()
        assert r["neighbours"][0]["path"] == added[1]
    disk = load_index(path)
    assert len(disk) == len(PHOTOS) + 2 and disk.paths[-2:] == added and all(Path(p).is_file() for p in added)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_killing_the_server_during_updates_loses_no_committed_entry(gallery, tmp_path, layout):
    src = load_index(gallery[1])
    path = tmp_path / "g.rsidx" if layout == "file" else tmp_path / "g.shards"
    src.save(path) if layout == "file" else save_sharded(src, path)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "robustsim.cli", "serve", "--index", str(path), "--baseline", "none",
                             "--allow-index-updates", "--no-warmup", "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
                             "--log-level", "warning"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    committed = []
    try:
        with httpx.Client(base_url=url, timeout=20) as c:
            for _ in range(300):  # up to 60 s for the server to start
                try:
                    if c.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            else:
                pytest.fail("server did not start")
            rng = np.random.default_rng(0)
            stop = threading.Event()
            done = threading.Event()

            def writer():
                i = 0
                try:
                    while not stop.is_set() and i < 40:  # bounded
                        img = torch.from_numpy(rng.random((1, 3, 24, 24), dtype=np.float32))
                        try:
                            r = c.post("/api/index/add", files=[("images", (f"n{i}.png", png_bytes(img)))])
                        except httpx.TransportError:
                            return
                        if r.status_code == 200:
                            committed.extend(r.json()["added"])
                        i += 1
                finally:
                    done.set()

            t = threading.Thread(target=writer)
            t.start()
            for _ in range(400):  # kill once a few updates are committed, in the middle of the next ones
                if len(committed) >= 3 or done.is_set():
                    break
                time.sleep(0.05)
            time.sleep(0.013 * (len(committed) % 7))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stop.set()
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(committed) >= 3
    disk = load_index(path)  # loads: no half-written file, no dangling manifest entry
    assert set(committed) <= set(disk.paths)
    assert disk.paths[:len(PHOTOS)] == src.paths
    assert all(Path(p).is_file() for p in disk.paths[len(PHOTOS):])


def test_request_past_the_timeout_is_a_504(triplet, lipsim):
    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(baseline=None, preloaded={"lipsim-default": lipsim},
                                 limits=Limits(timeout_s=0.001, workers=1, queue=0)))
    with TestClient(app) as c:
        assert_one_line_error(c.post("/api/compare", files=dict(zip(("ref", "x0", "x1"), triplet))), 504)
        for _ in range(500):  # bounded: the abandoned computation still holds its slot until it ends
            if app.service.gate.stats()["in_progress"] == 0:
                break
            time.sleep(0.02)
        assert app.service.gate.stats()["timeouts"] == 1 and c.get("/api/health").json()["status"] == "ok"
