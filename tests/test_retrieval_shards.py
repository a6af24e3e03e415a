"""Sharded indexes: the manifest is the commit record (atomic), shards load as one index, and a
2-worker torchrun build (gloo over 127.0.0.1) writes the same index as a one-process build."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from conftest import REPO, real_photo  # noqa: E402

import robustsim  # noqa: E402
from robustsim.errors import InputError  # noqa: E402
from robustsim.images import save_image  # noqa: E402
from robustsim.retrieval.index import (MANIFEST, Index, append_shard, build_index, is_sharded, load_index,  # noqa: E402
                                       read_manifest, save_sharded)

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "cat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards") / "photos"
    (d / "sub").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        save_image(real_photo(name, 48), d / ("sub" if i % 2 else "") / f"{name}.png")
    (d / "broken.png").write_bytes(b"not a png")
    return d


@pytest.fixture(scope="module")
def metric():
    return robustsim.load("lipsim-default")


@pytest.fixture(scope="module")
def single(folder, metric):
    return build_index(metric, folder, progress=False)


def _rand_index(n, dim=8, seed=0, kind="exact"):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    ix = Index(metric_name="toy", weights_sha256="0" * 64, dim=dim, certified=True, kind=kind)
    ix.add_embeddings([f"img{seed}_{i}.png" for i in range(n)], e, rng.uniform(1, 2, n))
    return ix


def test_sharded_roundtrip_equals_the_single_file(tmp_path):
    ix = _rand_index(23)
    save_sharded(ix, tmp_path / "s", shard_size=5)
    man = read_manifest(tmp_path / "s")
    assert [s["count"] for s in man["shards"]] == [5, 5, 5, 5, 3] and man["count"] == 23
    assert is_sharded(tmp_path / "s") and is_sharded(tmp_path / "s" / MANIFEST) and not is_sharded(tmp_path)
    back = load_index(tmp_path / "s")
    assert back.paths == ix.paths
    assert np.array_equal(back.embeddings, ix.embeddings) and np.array_equal(back.gnorms, ix.gnorms)
    # the kind lives in the manifest: an IVF index is built over the union on load
    ivf = _rand_index(200, kind="ivf")
    ivf.params = {"nlist": 4, "nprobe": 4}
    save_sharded(ivf, tmp_path / "v", shard_size=64)
    v = load_index(tmp_path / "v")
    assert v.kind == "ivf" and v.faiss_index.ntotal == 200 and v.faiss_index.nlist == 4
    # rewriting replaces the old shards (none left behind)
    save_sharded(ix, tmp_path / "s", shard_size=10)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted([MANIFEST] + [s["file"] for s in read_manifest(tmp_path / "s")["shards"]])
    assert load_index(tmp_path / "s").paths == ix.paths


def test_append_commits_only_through_the_manifest(tmp_path):
    base = _rand_index(6)
    save_sharded(base, tmp_path / "s", shard_size=4)
    # a crash after a shard was written but before the manifest: an orphan, invisible and never reused
    orphan = _rand_index(3, seed=9)
    orphan.save(tmp_path / "s" / "shard-00002.rsidx")
    assert load_index(tmp_path / "s").paths == base.paths
    delta = _rand_index(2, seed=1)
    append_shard(tmp_path / "s", delta)
    names = [s["file"] for s in read_manifest(tmp_path / "s")["shards"]]
    assert "shard-00002.rsidx" not in names and len(names) == 3
    assert load_index(tmp_path / "s").paths == base.paths + delta.paths
    with pytest.raises(InputError, match="dim"):
        bad = Index(metric_name="toy", weights_sha256="0" * 64, dim=4, certified=True)
        bad.add_embeddings(["x.png"], np.eye(4, dtype=np.float32)[:1])
        append_shard(tmp_path / "s", bad)
    assert len(load_index(tmp_path / "s")) == 8


def test_damaged_sharded_index_is_refused(tmp_path):
    save_sharded(_rand_index(8), tmp_path / "s", shard_size=4)
    man = json.loads((tmp_path / "s" / MANIFEST).read_text())
    man["shards"][0]["count"] = 5
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(InputError, match="manifest says"):
        load_index(tmp_path / "s")
    (tmp_path / "s" / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="corrupt manifest"):
        load_index(tmp_path / "s")
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="not an index"):
        load_index(tmp_path / "e")


@pytest.mark.slow  # two fresh worker processes import torch and load the model (tens of seconds on 2 busy cores)
def test_two_worker_torchrun_build_equals_one_process(folder, single, tmp_path):
    out, stats = tmp_path / "dist", tmp_path / "stats.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "robustsim.cli", "index-distributed", str(folder), "--out", str(out),
                        "--workers", "2", "--batch-size", "2", "--stats", str(stats)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    man = read_manifest(out)
    assert len(man["shards"]) == 2 and man["metric"] == single.metric_name and man["weights_sha256"] == single.weights_sha256
    s = json.loads(stats.read_text())
    assert s["workers"] == 2 and s["images"] == len(NAMES) and s["skipped"] == 1 and s["images_per_s"] > 0
    assert "broken.png" in r.stderr
    ix = load_index(out)
    assert ix.paths == single.paths  # same rows, same order as one machine
    assert np.allclose(ix.embeddings, single.embeddings, atol=1e-6) and np.allclose(ix.gnorms, single.gnorms, rtol=1e-6)
    # search and serve take the folder like a file
    from robustsim.retrieval.search import search

    q = load_index(out)
    res = search(q, robustsim.load("lipsim-default"), [real_photo("coffee", 48)], k=2, certify_top1=False)[0]
    assert res.neighbours[0].path.endswith("coffee.png")


def test_distributed_cli_refuses_bad_input(tmp_path, capsys):
    from robustsim.cli import main

    assert main(["index-distributed", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err
    assert main(["index-distributed", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
