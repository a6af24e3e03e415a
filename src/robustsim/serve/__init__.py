"""robustsim as a service: ``robustsim serve`` (HTTP JSON API + a web page) over the library.

Why: the main practical use of a certified metric is a check an adversary cannot evade ("is this
upload a near-duplicate of a known image?", with a proof that no l2 perturbation below ε changes the
answer); operators want that as a service and users want to try it in a browser. Needs the
``[serve]`` extra (FastAPI, uvicorn, python-multipart), imported only when the server is built.

- :mod:`.app`: the endpoints, the loaded state, the atomic index updater;
- :mod:`.limits`: body size, admission (bounded concurrency, 503), per-request timeout (504);
- :mod:`.background`: the service in a thread of this process (tests, notebooks, benchmarks);
- ``static/``: the web page (plain HTML/JS/CSS, no build step).
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ServeConfig", "Limits"]


def __getattr__(name: str) -> Any:  # keep `import robustsim.serve` free of FastAPI until it is used
    if name in ("create_app", "ServeConfig"):
        from . import app

        return getattr(app, name)
    if name == "Limits":
        from .limits import Limits

        return Limits
    raise AttributeError(f"module 'robustsim.serve' has no attribute {name!r}")
