"""A uvicorn server running in a thread of this process (notebooks, tests, benchmarks)."""
from __future__ import annotations


class BackgroundServer:
    """uvicorn serving ``app`` in a thread of this process (notebooks, tests, benchmarks).

    Why: the load and browser checks need a real HTTP server (real sockets, real concurrency, the
    real 503 path), but starting a subprocess re-imports torch and the model for seconds. Binds to
    127.0.0.1 by default, on a free port when ``port`` is 0; ``url`` is known once started.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1, lifespan="on",
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = None
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, name="robustsim-serve-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
