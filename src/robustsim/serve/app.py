"""The HTTP service: JSON endpoints over the library, the static web page, and the index updater.

Why a separate layer: the library raises Python exceptions and trusts its caller; a service faces
anyone. Everything here turns the library's calls into bounded, validated requests:

- uploads are decoded by :func:`robustsim.images.load_image` (the project's one decoder, with its pixel
  limit) from a private temporary file, and every failure becomes a 4xx with a one-line JSON error
  naming the *form field*, never a temporary path or a traceback;
- model work runs in a fixed worker pool behind an admission gate (:mod:`.limits`): excess requests
  get 503 at once, slow ones 504, and the event loop never blocks on a forward pass;
- the metrics are loaded once at start-up (a request can only pick among them, so no request can
  trigger a download or a model build), and an index search can only use the metric the index was
  built with (the index checks the weights hash);
- index updates (``--allow-index-updates``) are all-or-nothing: every upload of the request is
  decoded and embedded first, then the new rows are committed to disk atomically (a new shard plus a
  manifest swap for sharded indexes, an atomic rewrite for single files), and only then become
  visible to searches. A failed request or a killed server never leaves a partial entry.

Endpoints (``/docs`` has the OpenAPI page, ``/openapi.json`` the schema):

========================  ===================================================================
GET  /api/health          liveness, loaded metrics, index size, limits and load counters
GET  /api/models          registered metrics; which are loaded here, certified, have a spatial map
POST /api/distance        d(a, b); optional certified interval at ``eps`` and decision ``d <= tau``
POST /api/compare         2AFC: which of x0, x1 is closer to ref, with the certified radius
POST /api/attack          APGD on ref at l2 ``eps`` for each chosen metric: did the decision flip?
POST /api/search          k nearest stored images, certified top-1 radius, certified ``d <= tau``
GET  /api/index           the loaded index (size, kind, metric)
GET  /api/index/thumb/N   a small PNG of stored item N (for the search view)
POST /api/index/add       add uploaded images to the index (only with --allow-index-updates)
GET  /                    the web page (static files under ``serve/static``)
========================  ===================================================================
"""

import base64
import contextlib
import hashlib
import io as stdio
import logging
import math
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError, RobustsimError
from .limits import BodyLimit, Gate, Limits, Overloaded, TimedOut, error_body

log = logging.getLogger("robustsim.serve")
STATIC_DIR = Path(__file__).with_name("static")
MIN_SIDE = 2  # io refuses 1×1 images whatever the metric
THUMB_SIDE = 160


class ServiceError(Exception):
    """An error with an HTTP status and a one-line message for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


@dataclass
class ServeConfig:
    """What ``robustsim serve`` loads. ``metric`` None: the index's metric, else the shipped default.
    ``baseline``: a non-robust metric shown next to the certified one by the attack view ("auto": the
    first of :data:`BASELINES` whose weights are present locally; None: none)."""

    metric: Optional[str] = None
    baseline: Optional[str] = "auto"
    extra_metrics: List[str] = field(default_factory=list)
    index: Optional[str] = None
    allow_index_updates: bool = False
    upload_dir: Optional[str] = None
    device: str = "cpu"
    threads: Optional[int] = None
    limits: Limits = field(default_factory=Limits)
    #: already-loaded metrics by name (embedding the service in a program, tests): used instead of loading
    preloaded: Dict[str, Any] = field(default_factory=dict)


#: non-robust metrics the attack view puts next to the certified one, in order of preference.
BASELINES = ("lpips-alex", "effnet-lite0-cosine", "dreamsim-ensemble")


# ------------------------------------------------------------------------------------------ helpers
def png_data_url(x: torch.Tensor) -> str:
    """A 1×3×H×W image in [0, 1] as an 8-bit PNG data URL (for the page; numbers come from the float tensor)."""
    from PIL import Image

    a = (x[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = stdio.BytesIO()
    Image.fromarray(a, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heatmap_data_url(m: torch.Tensor) -> Tuple[str, float, float]:
    """An N×1×H×W (N=1) distance map as a colour PNG (matplotlib's viridis), with its min and max."""
    from matplotlib import colormaps
    from PIL import Image

    a = m[0, 0].detach().double().cpu().numpy()
    lo, hi = float(a.min()), float(a.max())
    z = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    rgb = (colormaps["viridis"](z)[..., :3] * 255 + 0.5).astype(np.uint8)
    buf = stdio.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), lo, hi


def radius_scale(x: torch.Tensor, radius: Optional[float] = None) -> Dict[str, Any]:
    """Reference points that make an l2 radius readable at this image's size.

    An l2 budget means little without the image's dimension: the same radius is a large change on a
    32×32 thumbnail and an invisible one on a photo. ``rms_per_pixel`` is the radius spread evenly over
    every channel value (radius / sqrt(3HW)); the page draws the radius against the l2 size of a
    one-grey-level change everywhere, of an 8/255 change everywhere, and of the image itself.
    """
    n = int(x[0].numel())
    out = {"height": int(x.shape[-2]), "width": int(x.shape[-1]), "values": n,
           "image_l2": float(x.double().norm()),
           "grey_level_l2": math.sqrt(n) / 255.0, "linf_8_255_l2": 8.0 * math.sqrt(n) / 255.0}
    if radius is not None:
        out["rms_per_pixel"] = float(radius) / math.sqrt(n)
    return out


def _status_of_input_error(message: str) -> int:
    # io's messages for "too many pixels" / "decompression bomb": those are 413 (too large), the rest 400.
    low = message.lower()
    return 413 if ("exceeds the limit" in low or "too large" in low) else 400


# ------------------------------------------------------------------------------------------ service
class Service:
    """The loaded state behind the app: metrics, index, limits, worker gates, the index write lock."""

    def __init__(self, config: ServeConfig):
        from .. import hub
        from ..hub import resolve_device as device_from_arg

        self.config = config
        self.limits = config.limits
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = device_from_arg(config.device)
        self.index = None
        self.index_path: Optional[Path] = None
        if config.index:
            from ..retrieval.index import is_sharded, load_index

            self.index_path = Path(config.index).expanduser()
            self.index = load_index(self.index_path)
            self.index_sharded = is_sharded(self.index_path)
        primary = config.metric or (self.index.metric_ref if self.index is not None else None) or hub.DEFAULT_MODEL
        self.metrics: Dict[str, Any] = OrderedDict()
        self.primary = self._load(primary)
        if self.index is not None:
            try:
                self.index.check_metric(self.metrics[self.primary])
            except InputError as e:
                raise InputError(f"--index and --metric disagree: {e}") from None
        self.baseline: Optional[str] = None
        if config.baseline == "auto":
            for name in BASELINES:
                if name != primary and hub.weights_present(name):
                    try:
                        self.baseline = self._load(name)
                        break
                    except RobustsimError as e:  # a baseline is optional: note why and go on
                        log.warning("baseline %s not loaded: %s", name, e)
        elif config.baseline:
            self.baseline = self._load(config.baseline)
        for name in config.extra_metrics:
            self._load(name)
        self.gate = Gate(self.limits.workers, self.limits.queue, self.limits.timeout_s)
        # thumbnails are many small requests per search view: their own small pool, so a page of
        # results never competes with (or is refused because of) model work
        self.thumb_gate = Gate(1, 64, self.limits.timeout_s)
        self._thumbs: "OrderedDict[int, bytes]" = OrderedDict()
        self._thumb_lock = threading.Lock()
        # Readers take `self.index` once and never see it change: a commit builds a new Index and swaps
        # the reference (copy-on-write), so searches run concurrently and never wait for a disk write.
        # The lock only serialises writers.
        self.index_lock = threading.Lock()
        self.upload_dir: Optional[Path] = None
        if self.index is not None and config.allow_index_updates:
            if config.upload_dir:
                self.upload_dir = Path(config.upload_dir).expanduser()
            elif self.index_sharded:
                self.upload_dir = self.index_path / "uploads"
            else:
                self.upload_dir = self.index_path.with_name(self.index_path.name + ".uploads")
            self.upload_dir.mkdir(parents=True, exist_ok=True)

    def _load(self, name: str) -> str:
        from .. import hub

        metric = self.config.preloaded.get(name) or hub.load(name, device=self.device)
        metric.eval()
        for p in metric.parameters():  # attacks differentiate w.r.t. inputs only; shared weights stay read-only
            p.requires_grad_(False)
        label = getattr(metric, "name", None) or name
        self.metrics[label] = metric
        if label != name:
            self.metrics.setdefault(name, metric)
        return label

    def warm_up(self) -> float:
        """Run one certificate per loaded certified metric now, so that one-time set-up costs (proven
        rounding bounds, cached float64 parameters) are paid before the first request, not by it."""
        import time

        from .. import certify

        t = time.perf_counter()
        seen = set()
        for m in self.metrics.values():
            if id(m) in seen or not getattr(m, "certified", False):
                continue
            seen.add(id(m))
            side = max(int(getattr(m, "min_size", 1) or 1), (m.input_size or (64, 64))[0])
            x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(0)).to(self.device)
            with torch.no_grad():
                certify.two_afc(m, x[:1], x[1:2], x[2:3])
        return time.perf_counter() - t

    # -------------------------------------------------------------------------------- inputs
    def metric(self, name: Optional[str]) -> Tuple[str, Any]:
        if not name:
            return self.primary, self.metrics[self.primary]
        if name not in self.metrics:
            raise ServiceError(400, f"unknown metric {name!r}; this server has loaded: {', '.join(self.loaded_names())}")
        m = self.metrics[name]
        return (getattr(m, "name", None) or name), m

    def loaded_names(self) -> List[str]:
        seen, out = set(), []
        for name, m in self.metrics.items():
            if id(m) not in seen:
                seen.add(id(m))
                out.append(getattr(m, "name", None) or name)
        return out

    def decode(self, data: bytes, field_name: str, metric: Any = None) -> torch.Tensor:
        """Decode one upload with robustsim.images (pixel limit, format rules); errors name the field."""
        from .. import images

        if not data:
            raise ServiceError(400, f"field '{field_name}': empty upload")
        min_size = max(MIN_SIDE, int(getattr(metric, "min_size", 1) or 1))
        with tempfile.TemporaryDirectory(prefix="robustsim-serve-") as d:
            p = Path(d) / "upload"
            p.write_bytes(data)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # multi-frame files: first frame, as documented
                    x = images.load_image(p, min_size=min_size, max_pixels=self.limits.max_pixels)
            except InputError as e:
                msg = str(e).replace(str(p), f"field '{field_name}'")
                raise ServiceError(_status_of_input_error(msg), msg) from None
        return x.to(self.device)

    @staticmethod
    def number(raw: Optional[str], name: str, lo: float, hi: float, default: Optional[float] = None,
               integer: bool = False) -> Optional[float]:
        if raw is None or str(raw).strip() == "":
            return default
        try:
            v = float(raw)
        except ValueError:
            raise ServiceError(400, f"field '{name}': not a number: {str(raw)[:40]!r}") from None
        if not math.isfinite(v) or not (lo <= v <= hi) or (integer and v != int(v)):
            kind = "an integer" if integer else "a number"
            raise ServiceError(400, f"field '{name}': must be {kind} in [{lo:g}, {hi:g}], got {str(raw)[:40]}")
        return int(v) if integer else v

    # -------------------------------------------------------------------------------- endpoints
    def health(self) -> Dict[str, Any]:
        return {"status": "ok", "metric": self.primary, "metrics": self.loaded_names(), "baseline": self.baseline,
                "index": self.index_info(), "limits": self.limits_info(), "load": self.gate.stats()}

    def limits_info(self) -> Dict[str, Any]:
        from .. import images

        lim = self.limits
        return {"max_upload_bytes": lim.max_upload_bytes,
                "max_pixels": lim.max_pixels if lim.max_pixels is not None else images.pixel_limit(),
                "workers": lim.workers, "queue": lim.queue, "timeout_s": lim.timeout_s,
                "max_attack_steps": lim.max_attack_steps, "max_attack_pixels": lim.max_attack_pixels, "max_k": lim.max_k}

    def index_info(self) -> Optional[Dict[str, Any]]:
        ix = self.index
        if ix is None:
            return None
        return {"count": len(ix), "kind": ix.kind, "metric": ix.metric_name,
                "dim": ix.dim, "certified": bool(ix.certified), "sharded": bool(self.index_sharded),
                "path": str(self.index_path), "updates": self.upload_dir is not None}

    def models(self) -> List[Dict[str, Any]]:
        from .. import hub

        loaded = {n: m for n, m in self.metrics.items()}
        rows = []
        for name in hub.list_models():
            spec = hub.model_spec(name)
            m = loaded.get(name)
            rows.append({"name": name, "certified": bool(spec.certified), "loaded": m is not None,
                         "default": name == self.primary, "baseline": name == self.baseline,
                         "weights_present": hub.weights_present(name), "description": spec.description,
                         "spatial_map": bool(m is not None and hasattr(m, "spatial_map")),
                         "input_size": list(m.input_size) if m is not None and m.input_size else None})
        for name in self.loaded_names():  # metrics loaded from a file are not in the registry
            if name not in {r["name"] for r in rows}:
                m = self.metrics[name]
                rows.append({"name": name, "certified": bool(m.certified), "loaded": True, "default": name == self.primary,
                             "baseline": name == self.baseline, "weights_present": True, "description": "loaded from a file",
                             "spatial_map": hasattr(m, "spatial_map"),
                             "input_size": list(m.input_size) if m.input_size else None})
        return rows

    def _pair_check(self, metric: Any, a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
        if metric.input_size is None and a.shape[-2:] != b.shape[-2:]:
            raise ServiceError(400, f"'{na}' is {a.shape[-1]}×{a.shape[-2]} but '{nb}' is {b.shape[-1]}×{b.shape[-2]}; "
                               f"{getattr(metric, 'name', 'this metric')} has no native size, so it needs images of equal size")

    def _spatial(self, metric: Any, a: torch.Tensor, b: torch.Tensor) -> Optional[Dict[str, Any]]:
        if not hasattr(metric, "spatial_map"):
            return None
        with torch.no_grad():
            url, lo, hi = heatmap_data_url(metric.spatial_map(a, b))
        return {"image": url, "min": lo, "max": hi}

    def distance(self, a_bytes: bytes, b_bytes: bytes, metric_name: Optional[str], eps_raw, tau_raw, want_map: bool):
        from .. import certify

        name, metric = self.metric(metric_name)
        eps = self.number(eps_raw, "eps", 0.0, 1e6)
        tau = self.number(tau_raw, "tau", 0.0, 2.0)
        a, b = self.decode(a_bytes, "a", metric), self.decode(b_bytes, "b", metric)
        self._pair_check(metric, a, b, "a", "b")
        with torch.no_grad():
            d = float(metric(a, b)[0])
        out: Dict[str, Any] = {"metric": name, "distance": d, "certified": bool(metric.certified)}
        if eps is not None:
            if not metric.certified:
                raise ServiceError(400, f"field 'eps': {name} is not certified; distance intervals need a certified metric")
            with torch.no_grad():
                lo, hi = certify.distance_interval(metric, a, b, eps, perturbed="x")
            out["interval"] = {"eps": eps, "perturbed": "a", "lo": float(lo[0]), "hi": float(hi[0])}
        if tau is not None:
            th: Dict[str, Any] = {"tau": tau, "duplicate": d <= tau}
            if metric.certified:
                with torch.no_grad():
                    c = certify.threshold(metric, a, b, tau, perturbed="x")
                th.update(duplicate=bool(c.decision[0]), radius=float(c.radius[0]), perturbed="a",
                          scale=radius_scale(a, float(c.radius[0])))
            out["threshold"] = th
        if want_map:
            out["spatial_map"] = self._spatial(metric, a, b)
        return out

    def compare(self, ref_b: bytes, x0_b: bytes, x1_b: bytes, metric_name: Optional[str], want_map: bool = True):
        from .. import certify

        name, metric = self.metric(metric_name)
        ref, x0, x1 = (self.decode(b, f, metric) for b, f in ((ref_b, "ref"), (x0_b, "x0"), (x1_b, "x1")))
        self._pair_check(metric, ref, x0, "ref", "x0")
        self._pair_check(metric, ref, x1, "ref", "x1")
        with torch.no_grad():
            d0, d1 = float(metric(ref, x0)[0]), float(metric(ref, x1)[0])
        out: Dict[str, Any] = {"metric": name, "d0": d0, "d1": d1,
                               "closer": "tie" if d0 == d1 else ("x0" if d0 < d1 else "x1"),
                               "certified": bool(metric.certified), "certificate": None}
        if metric.certified:
            with torch.no_grad():
                c = certify.two_afc(metric, ref, x0, x1)
            r = float(c.radius[0])
            out["certificate"] = {
                "closer": "x1" if int(c.closer[0]) == 1 else "x0", "radius": r,
                "paper_radius": float(c.paper_radius[0]), "perturbed": "ref",
                "units": f"l2 norm in [0,1] pixel units of ref as uploaded ({ref.shape[-1]}×{ref.shape[-2]})",
                "scale": radius_scale(ref, r)}
        if want_map:
            m0, m1 = self._spatial(metric, ref, x0), self._spatial(metric, ref, x1)
            out["spatial_map"] = None if m0 is None else {"x0": m0, "x1": m1}
        return out

    def attack(self, ref_b: bytes, x0_b: bytes, x1_b: bytes, metrics_raw: Optional[str], eps_raw, steps_raw, seed_raw):
        from .. import attacks, certify

        eps = self.number(eps_raw, "eps", 0.0, 1e4, default=0.5)
        steps = self.number(steps_raw, "steps", 1, self.limits.max_attack_steps, default=min(50, self.limits.max_attack_steps),
                            integer=True)
        seed = self.number(seed_raw, "seed", 0, 2 ** 31 - 1, default=0, integer=True)
        names = [s.strip() for s in (metrics_raw or "").split(",") if s.strip()]
        if not names:
            names = [self.primary] + ([self.baseline] if self.baseline else [])
        if len(names) > 4:
            raise ServiceError(400, f"field 'metrics': at most 4 metrics per attack, got {len(names)}")
        chosen = [self.metric(n) for n in names]
        first = chosen[0][1]
        ref, x0, x1 = (self.decode(b, f, first) for b, f in ((ref_b, "ref"), (x0_b, "x0"), (x1_b, "x1")))
        px = int(ref.shape[-1] * ref.shape[-2])
        if px > self.limits.max_attack_pixels:
            raise ServiceError(413, f"field 'ref': {ref.shape[-1]}×{ref.shape[-2]} = {px:,} pixels; attacks accept at most "
                               f"{self.limits.max_attack_pixels:,} (resize the image first)")
        results = []
        for name, metric in chosen:
            self._pair_check(metric, ref, x0, "ref", "x0")
            self._pair_check(metric, ref, x1, "ref", "x1")
            with torch.no_grad():
                d0, d1 = float(metric(ref, x0)[0]), float(metric(ref, x1)[0])
            label = torch.tensor([0 if d0 <= d1 else 1])
            adv_ref, _, _ = attacks.attack_2afc(metric, ref, x0, x1, label, norm="l2", eps=eps, method="apgd-ce",
                                                target="ref", steps=steps, restarts=1, seed=seed)
            with torch.no_grad():
                a0, a1 = float(metric(adv_ref, x0)[0]), float(metric(adv_ref, x1)[0])
            clean = "x0" if d0 <= d1 else "x1"
            adv = "x0" if a0 <= a1 else "x1"
            row: Dict[str, Any] = {
                "metric": name, "certified": bool(metric.certified),
                "clean": {"d0": d0, "d1": d1, "closer": clean},
                "adversarial": {"d0": a0, "d1": a1, "closer": adv},
                "changed": adv != clean, "perturbation_l2": float((adv_ref - ref).double().norm()),
                "image": png_data_url(adv_ref), "certified_radius": None, "certified_at_eps": False,
            }
            if metric.certified:
                with torch.no_grad():
                    c = certify.two_afc(metric, ref, x0, x1)
                row["certified_radius"] = float(c.radius[0])
                row["certified_at_eps"] = bool(float(c.radius[0]) > eps)
                if row["certified_at_eps"] and row["changed"]:  # would be a broken certificate: say so loudly
                    log.error("certificate violated: %s radius %.6g > eps %.6g but the attack flipped the decision",
                              name, row["certified_radius"], eps)
            results.append(row)
        return {"eps": eps, "norm": "l2", "target": "ref", "method": "apgd-ce", "steps": steps, "seed": seed,
                "units": f"l2 norm in [0,1] pixel units of ref as uploaded ({ref.shape[-1]}×{ref.shape[-2]})",
                "scale": radius_scale(ref), "results": results}

    def _require_index(self):
        if self.index is None:
            raise ServiceError(409, "no index is loaded: start the server with --index PATH")
        return self.index

    def search(self, q_bytes: bytes, k_raw, tau_raw) -> Dict[str, Any]:
        from ..retrieval.search import search

        ix = self._require_index()
        k = self.number(k_raw, "k", 1, self.limits.max_k, default=5, integer=True)
        tau = self.number(tau_raw, "tau", 0.0, 2.0)
        name, metric = self.metric(None)
        x = self.decode(q_bytes, "query", metric)
        res = search(ix, metric, [x], k=int(k), tau=tau)[0]  # ix: this request's snapshot (copy-on-write)
        count = len(ix)
        out = res.to_dict()
        out.pop("query", None)
        for n in out["neighbours"]:
            n["row"] = n.pop("index")
            n["name"] = Path(n["path"]).name
            n["thumb"] = f"/api/index/thumb/{n['row']}"
        out.update(metric=name, tau=tau, k=int(k), index_count=count, certified=bool(metric.certified and ix.certified),
                   units=f"l2 norm in [0,1] pixel units of the query as uploaded ({x.shape[-1]}×{x.shape[-2]})",
                   scale=radius_scale(x, out.get("top1_radius")))
        return out

    def thumb(self, row: int) -> bytes:
        from PIL import Image

        from .. import images

        ix = self._require_index()
        if not (0 <= row < len(ix)):
            raise ServiceError(404, f"no stored item {row} (the index holds {len(ix)})")
        path = ix.paths[row]
        with self._thumb_lock:
            if row in self._thumbs:
                self._thumbs.move_to_end(row)
                return self._thumbs[row]
        try:
            x = images.load_image(path, max_pixels=self.limits.max_pixels)
        except InputError as e:
            raise ServiceError(404, f"stored item {row} cannot be shown: {e}") from None
        a = (x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        im = Image.fromarray(a, "RGB")
        im.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = stdio.BytesIO()
        im.save(buf, format="PNG")
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[row] = data
            while len(self._thumbs) > 1024:
                self._thumbs.popitem(last=False)
        return data

    def add_to_index(self, uploads: List[Tuple[str, bytes]]) -> Dict[str, Any]:
        """Decode and embed every upload, then commit them in one atomic step (module docstring)."""
        from PIL import Image

        from ..atomic import write_atomic
        from ..retrieval.index import Index, append_shard, embed_batch

        ix = self._require_index()
        if self.upload_dir is None:
            raise ServiceError(403, "index updates are disabled: start the server with --allow-index-updates")
        if not uploads:
            raise ServiceError(400, "field 'images': no files uploaded")
        _, metric = self.metric(None)
        decoded = []
        for i, (fname, data) in enumerate(uploads):
            label = f"images[{i}]" + (f" ({Path(fname).name[:60]})" if fname else "")
            x = self.decode(data, label, metric)
            digest = hashlib.sha256(data).hexdigest()[:32]
            try:
                fmt = (Image.open(stdio.BytesIO(data)).format or "img").lower()
            except Exception:  # decoded above, so Pillow can at least identify it; keep a neutral suffix otherwise
                fmt = "img"
            ext = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
            decoded.append((str(self.upload_dir / f"{digest}.{ext}"), data, x))
        emb, gn = embed_batch(metric, [x for _, _, x in decoded])
        added, skipped, written = [], [], []
        with self.index_lock:  # one writer at a time; readers keep using the snapshot they hold
            ix = self.index
            have = set(ix.paths)
            rows, seen = [], set()
            for i, (p, _, _) in enumerate(decoded):
                if p not in have and p not in seen:
                    rows.append(i)
                    seen.add(p)
            skipped = [decoded[i][0] for i in range(len(decoded)) if i not in rows]
            if rows:
                paths = [decoded[i][0] for i in rows]
                e, g = emb[rows], gn[rows]
                try:
                    for i in rows:  # the image files first: an index entry must never point at a missing file
                        p, data, _ = decoded[i]
                        if not os.path.exists(p):
                            write_atomic(Path(p), data)
                            written.append(p)
                    new = ix.extended(paths, e, g)
                    if self.index_sharded:
                        delta = Index(metric_name=ix.metric_name, weights_sha256=ix.weights_sha256, dim=ix.dim,
                                      certified=ix.certified, kind="exact", metric_ref=ix.metric_ref)
                        delta.add_embeddings(paths, e, g)
                        append_shard(self.index_path, delta)  # the commit point: a new shard, then the manifest
                    else:
                        new.save(self.index_path)  # the commit point: temp file + fsync + rename
                except BaseException:
                    for p in written:  # files of a failed commit are referenced by no index: remove them
                        try:
                            os.unlink(p)
                        except OSError:
                            pass
                    raise
                self.index = new  # visible to searches only once it is on disk
                added = paths
            count = len(self.index)
        return {"added": added, "already_indexed": skipped, "count": count}


# ------------------------------------------------------------------------------------------ app
def create_app(config: Optional[ServeConfig] = None, service: Optional[Service] = None):
    """The ASGI application (FastAPI) for ``config`` (loads the metrics and the index now)."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__

    svc = service or Service(config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        svc.gate.shutdown()
        svc.thumb_gate.shutdown()

    kwargs = dict(title="robustsim", version=__version__, lifespan=lifespan,
                  description="Perceptual image similarity with certificates: distances, 2AFC, attacks, "
                              "certified near-duplicate search. Errors are one-line JSON: {\"error\", \"status\"}.")
    try:  # OpenAPI pages from local files when fastapi-offline is installed (no CDN: works offline)
        from fastapi_offline import FastAPIOffline

        app = FastAPIOffline(**kwargs)
    except ImportError:
        app = FastAPI(**kwargs)
    app.state.service = svc

    def err(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> Response:
        return Response(error_body(status, message), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, e: ServiceError):
        return err(e.status, str(e))

    @app.exception_handler(RobustsimError)
    async def _library_error(request: Request, e: RobustsimError):
        return err(_status_of_input_error(str(e)), str(e))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, e: Overloaded):
        return err(503, str(e), {"Retry-After": "1"})

    @app.exception_handler(TimedOut)
    async def _timed_out(request: Request, e: TimedOut):
        return err(504, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        parts = []
        for item in e.errors()[:5]:
            loc = [str(x) for x in item.get("loc", ()) if x not in ("body", "query", "path")]
            msg = item.get("msg", "invalid")
            if item.get("type") == "missing":
                msg = "missing (send it as a multipart/form-data field)"
            parts.append(f"field '{'.'.join(loc) or '?'}': {msg}")
        return err(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        msg = e.detail if isinstance(e.detail, str) else "error"
        if e.status_code == 404:
            msg = f"not found: {request.url.path}"
        return err(e.status_code, msg)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return err(500, f"internal error: {type(e).__name__}: {str(e)[:200]}")

    async def read(upload: UploadFile) -> bytes:
        # the body limit middleware already bounds the whole request; one more guard per part
        data = await upload.read(svc.limits.max_upload_bytes + 1)
        if len(data) > svc.limits.max_upload_bytes:
            raise ServiceError(413, f"upload '{upload.filename}' exceeds {svc.limits.max_upload_bytes:,} bytes")
        return data

    def flag(raw: Optional[str]) -> bool:
        return str(raw).strip().lower() in ("1", "true", "yes", "on") if raw is not None else False

    @app.get("/api/health", summary="Liveness, loaded metrics and index, limits, load counters")
    async def health():
        return svc.health()

    @app.get("/api/models", summary="Registered metrics; which are loaded by this server")
    async def models():
        return await svc.gate.run(svc.models)

    @app.post("/api/distance", summary="Distance d(a, b); certified interval at eps, certified decision d <= tau")
    async def distance(a: UploadFile = File(..., description="image file"), b: UploadFile = File(..., description="image file"),
                       metric: Optional[str] = Form(None), eps: Optional[str] = Form(None, description="l2 budget on a"),
                       tau: Optional[str] = Form(None, description="near-duplicate threshold on d"),
                       spatial_map: Optional[str] = Form(None, description="true: include the LPIPS map (if any)")):
        ab, bb = await read(a), await read(b)
        return await svc.gate.run(svc.distance, ab, bb, metric, eps, tau, flag(spatial_map))

    @app.post("/api/compare", summary="2AFC: which of x0, x1 is closer to ref, certified radius (l2, ref perturbed)")
    async def compare(ref: UploadFile = File(...), x0: UploadFile = File(...), x1: UploadFile = File(...),
                      metric: Optional[str] = Form(None), spatial_map: Optional[str] = Form("true")):
        data = [await read(u) for u in (ref, x0, x1)]
        return await svc.gate.run(svc.compare, *data, metric, flag(spatial_map))

    @app.post("/api/attack", summary="APGD (l2, on ref) against each metric: does the 2AFC decision flip?")
    async def attack(ref: UploadFile = File(...), x0: UploadFile = File(...), x1: UploadFile = File(...),
                     eps: Optional[str] = Form(None, description="l2 budget (default 0.5)"),
                     steps: Optional[str] = Form(None), seed: Optional[str] = Form(None),
                     metrics: Optional[str] = Form(None, description="comma-separated; default: served metric + baseline")):
        data = [await read(u) for u in (ref, x0, x1)]
        return await svc.gate.run(svc.attack, *data, metrics, eps, steps, seed)

    @app.post("/api/search", summary="Nearest stored images with the certified top-1 radius and d <= tau decisions")
    async def search(query: UploadFile = File(...), k: Optional[str] = Form(None), tau: Optional[str] = Form(None)):
        data = await read(query)
        return await svc.gate.run(svc.search, data, k, tau)

    @app.get("/api/index", summary="The loaded index")
    async def index_info():
        svc._require_index()
        return svc.index_info()

    @app.get("/api/index/thumb/{row}", summary="Thumbnail (PNG) of stored item ROW",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def thumb(row: int):
        data = await svc.thumb_gate.run(svc.thumb, row)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/index/add", summary="Add images to the index (atomic; needs --allow-index-updates)")
    async def index_add(images: List[UploadFile] = File(...)):
        if svc.upload_dir is None:
            svc._require_index()
            raise ServiceError(403, "index updates are disabled: start the server with --allow-index-updates")
        data = [(u.filename or "", await read(u)) for u in images]
        return await svc.gate.run(svc.add_to_index, data)

    app.mount("/", StaticFiles(directory=str(STATIC_DIR), html=True), name="static")

    outer = BodyLimit(app, svc.limits.max_upload_bytes)
    outer.service, outer.fastapi = svc, app  # for tests and embedding: the state behind the ASGI callable
    return outer


__all__ = ["ServeConfig", "Service", "ServiceError", "create_app", "BASELINES", "radius_scale", "png_data_url"]
