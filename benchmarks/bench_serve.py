"""`robustsim serve` under load, on 127.0.0.1 only: latency at concurrency 8, an overload burst, and
the 1- vs 2-worker distributed index build.

Part 1 (load): a real server process (`robustsim serve`, the shipped lipsim-default, a small gallery
index) and REQUESTS requests from CONCURRENCY client threads to one endpoint; every answer must be
200. Prints p50/p90/p99 latency and requests/s per endpoint.

Part 2 (overload): BURST simultaneous requests to a server started with --workers 2 --queue 2: the
excess must get 503 (one-line JSON, Retry-After) and the server must stay up (health 200 afterwards).

Part 3 (scaling): `robustsim index-distributed` over IMAGES photos with 1 and with 2 torchrun workers
(gloo on loopback), images/s of the embedding phase and of the whole run.

    python benchmarks/bench_serve.py [--requests 500] [--concurrency 8] [--burst 64] [--images 96]
"""
from __future__ import annotations

import argparse
import io as stdio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _photo(name: str, size: int, rng=None):
    import skimage.data
    import torch

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3]
    h, w = img.shape[:2]
    if rng is None:
        s, t, l = min(h, w), (h - min(h, w)) // 2, (w - min(h, w)) // 2
    else:
        s = int(min(h, w) * rng.uniform(0.4, 0.9))
        t, l = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
    x = torch.from_numpy(np.ascontiguousarray(img[t:t + s, l:l + s])).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area").clamp(0, 1)


def _png(x) -> bytes:
    from PIL import Image

    buf = stdio.BytesIO()
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(d: Path, n: int, size: int) -> None:
    from robustsim.images import save_image

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "moon"]
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_image(_photo(names[i % len(names)], size, rng), d / f"p{i:03d}.jpg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`robustsim serve` as a child process on 127.0.0.1 (its own interpreter: no GIL shared with the clients)."""

    def __init__(self, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, ROBUSTSIM_OFFLINE="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "robustsim.cli", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--log-level", "warning", *args],
                                     cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self):
        import httpx

        for _ in range(600):  # bounded: up to 120 s
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _run(url: str, path: str, files: dict, data: dict, n: int, conc: int):
    import httpx

    lat, codes = [], []
    lock = threading.Lock()
    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=conc)) as c:
        c.post(path, files=files, data=data)  # warm-up (first-call costs are not latency under load)

        def one(_):
            t = time.perf_counter()
            r = c.post(path, files=files, data=data)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                codes.append(r.status_code)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    lat_ms = np.array(lat) * 1000
    return {"endpoint": path, "requests": n, "concurrency": conc, "errors": int(sum(c != 200 for c in codes)),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 1), "p90_ms": round(float(np.percentile(lat_ms, 90)), 1),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 1), "max_ms": round(float(lat_ms.max()), 1),
            "req_per_s": round(n / wall, 2)}


def bench_load(tmp: Path, n: int, conc: int, workers: int):
    import robustsim
    from robustsim.retrieval import build_index

    g = tmp / "gallery"
    _folder(g, 64, 128)
    build_index(robustsim.load("lipsim-default"), g, progress=False).save(tmp / "g.rsidx")
    a, b = _png(_photo("astronaut", 128)), _png(_photo("coffee", 128))
    q = _png(_photo("chelsea", 128, np.random.default_rng(3)))
    rows = []
    with Server("--index", str(tmp / "g.rsidx"), "--baseline", "none", "--workers", str(workers), "--queue", "16",
                "--threads", "1") as srv:
        rows.append(_run(srv.url, "/api/distance", {"a": a, "b": b}, {}, n, conc))
        rows.append(_run(srv.url, "/api/search", {"query": q}, {"k": "5"}, n, conc))
        rows.append(_run(srv.url, "/api/compare", {"ref": a, "x0": a, "x1": b}, {}, max(n // 10, 8), conc))
    return rows


def bench_overload(tmp: Path, burst: int):
    import httpx

    a = _png(_photo("astronaut", 256))
    with Server("--baseline", "none", "--workers", "2", "--queue", "2", "--threads", "1") as srv:
        with httpx.Client(base_url=srv.url, timeout=300, limits=httpx.Limits(max_connections=burst)) as c:
            with ThreadPoolExecutor(burst) as pool:
                rs = list(pool.map(lambda _: c.post("/api/distance", files={"a": a, "b": a}), range(burst)))
            codes = [r.status_code for r in rs]
            one_line = all("\n" not in r.text.strip() and "error" in r.json() for r in rs if r.status_code == 503)
            health = c.get("/api/health")
            alive = health.status_code == 200 and srv.proc.poll() is None
            after = c.post("/api/distance", files={"a": a, "b": a}).status_code
    return {"burst": burst, "ok_200": codes.count(200), "busy_503": codes.count(503),
            "other": len(codes) - codes.count(200) - codes.count(503), "errors_one_line_json": one_line,
            "alive_after": alive, "next_request": after, "rejected_counter": health.json()["load"]["rejected"]}


def bench_scaling(tmp: Path, n_images: int):
    g = tmp / "scale"
    _folder(g, n_images, 256)
    out = []
    for w in (1, 2):
        stats = tmp / f"stats{w}.json"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "robustsim.cli", "index-distributed", str(g), "--out", str(tmp / f"s{w}"),
                            "--workers", str(w), "--threads", "1", "--batch-size", "16", "--stats", str(stats)],
                           cwd=REPO, env=dict(os.environ, ROBUSTSIM_OFFLINE="1"), capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        s = json.loads(stats.read_text())
        s["wall_with_startup_s"] = round(wall, 2)
        s["images_per_s_with_startup"] = round(s["images"] / wall, 2)
        out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="server --workers for the load run")
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--images", type=int, default=96, help="images for the 1- vs 2-worker index build")
    ap.add_argument("--skip", nargs="*", default=[], choices=("load", "overload", "scaling"))
    args = ap.parse_args()
    print(f"cpu cores: {os.cpu_count()}; load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "load" not in args.skip:
            print("\n| endpoint | requests | concurrency | errors | p50 ms | p90 ms | p99 ms | req/s |")
            print("|---|---|---|---|---|---|---|---|")
            for r in bench_load(tmp, args.requests, args.concurrency, args.workers):
                print(f"| {r['endpoint']} | {r['requests']} | {r['concurrency']} | {r['errors']} | {r['p50_ms']} | "
                      f"{r['p90_ms']} | {r['p99_ms']} | {r['req_per_s']} |", flush=True)
        if "overload" not in args.skip:
            print("\noverload:", json.dumps(bench_overload(tmp, args.burst)), flush=True)
        if "scaling" not in args.skip:
            rows = bench_scaling(tmp, args.images)
            print("\n| workers | images | embed s | images/s (embed) | wall s (with start-up) | images/s (with start-up) |")
            print("|---|---|---|---|---|---|")
            for s in rows:
                print(f"| {s['workers']} | {s['images']} | {s['embed_seconds']} | {s['images_per_s']} | "
                      f"{s['wall_with_startup_s']} | {s['images_per_s_with_startup']} |")
            print(f"speed-up 2 vs 1 worker (embed phase): {rows[1]['images_per_s'] / rows[0]['images_per_s']:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
