"""``robustsim serve``: the HTTP service and web page (see :mod:`robustsim.serve.app`)."""
from __future__ import annotations

import argparse
import sys

from .options import add_device_option, add_metric_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API + web page: distances, certified 2AFC, attacks, certified near-duplicate search (needs [serve])",
                       description="Start the robustsim service. The page is at http://HOST:PORT/, the API under /api, "
                                   "its OpenAPI documentation at /docs.")
    add_metric_option(p, help="metric name or saved .safetensors (default: the index's metric, else the shipped lipsim-default)")
    p.add_argument("--index", default=None, help="index file or sharded index folder for /api/search (`robustsim index`, `robustsim index-distributed`)")
    p.add_argument("--baseline", default="auto",
                   help="non-robust metric shown next to the certified one by the attack view ('auto': the first local one of "
                        "lpips-alex, effnet-lite0-cosine, dreamsim-ensemble; 'none': none)")
    p.add_argument("--extra-metric", action="append", default=[], metavar="NAME", help="also load this metric (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allow-index-updates", action="store_true",
                   help="enable POST /api/index/add (uploads are stored beside the index; every commit is atomic)")
    p.add_argument("--upload-dir", default=None, help="where added images are stored (default: beside the index)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest image in pixels (default $ROBUSTSIM_MAX_PIXELS or 50 million)")
    p.add_argument("--workers", type=int, default=2, help="requests computed at once (default 2)")
    p.add_argument("--queue", type=int, default=8, help="requests waiting for a worker; beyond that 503 (default 8)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request limit in seconds; beyond it 504 (default 60)")
    p.add_argument("--max-attack-steps", type=int, default=200, help="largest APGD step count per attack request (default 200)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_device_option(p)
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the start-up certificate that pays one-time set-up costs before the first request")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import InputError

    try:
        import uvicorn

        from ..serve.app import ServeConfig, create_app
        from ..serve.limits import Limits
    except ImportError as e:
        raise InputError(f"serve needs FastAPI and uvicorn: pip install 'robustsim[serve]' ({e})") from None
    if not (0 <= args.port <= 65535):
        raise InputError(f"--port must lie in [0, 65535], got {args.port}")
    try:
        limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                        workers=args.workers, queue=args.queue, timeout_s=args.timeout,
                        max_attack_steps=args.max_attack_steps)
    except ValueError as e:
        raise InputError(str(e)) from None
    config = ServeConfig(metric=args.metric, baseline=None if str(args.baseline).lower() == "none" else args.baseline,
                         extra_metrics=list(args.extra_metric), index=args.index,
                         allow_index_updates=args.allow_index_updates, upload_dir=args.upload_dir,
                         device=args.device, threads=args.threads, limits=limits)
    app = create_app(config)
    svc = app.service
    if not args.no_warmup:
        print(f"robustsim serve: certificates ready ({svc.warm_up():.1f} s of one-time set-up)", file=sys.stderr, flush=True)
    ix = svc.index_info()
    extra = f", baseline {svc.baseline}" if svc.baseline else ""
    extra += ", index {} items ({})".format(ix["count"], ix["kind"]) if ix else ", no index"
    print(f"robustsim serve: http://{args.host}:{args.port}/  metric {svc.primary}{extra}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1,
                timeout_graceful_shutdown=5)
    return 0
