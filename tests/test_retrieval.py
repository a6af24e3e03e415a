"""Certified retrieval: index build/persist/edit, exact search, certificates attacked, bad input, CLI."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import real_photo
from robustsim import certify, hub
from robustsim.attacks.pgd import pgd_maximize
from robustsim.cli import main
from robustsim.errors import InputError
from robustsim.images import save_image
from robustsim.metrics.lipsim import LipSim
from robustsim.retrieval import Index, build_index, load_index, search, weights_hash
from robustsim.retrieval.index import embed_batch

pytest.importorskip("faiss")

TINY = dict(input_size=32, stem="unshuffle2", channels=16, conv_depth=2, conv_inner=8, pool=(4,), linear_depth=2,
            linear_inner=32, embed_dim=32)
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "moon"]


def tiny_lipsim(seed: int = 0) -> LipSim:
    torch.manual_seed(seed)
    m = LipSim(**TINY).eval().requires_grad_(False)
    m.name = "tiny-lipsim"
    return m


@pytest.fixture(scope="module")
def metric():
    return tiny_lipsim(0)


@pytest.fixture(scope="module")
def crops():
    """32 real-photo crops of 40×40 (not the metric's 32×32: the resize operator norm enters the radius)."""
    out = []
    for n in PHOTOS:
        p = real_photo(n, 80)
        for t, l in [(0, 0), (40, 40), (0, 40), (40, 0)]:
            out.append(p[:, :, t:t + 40, l:l + 40].contiguous())
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, crops):
    d = tmp_path_factory.mktemp("gallery")
    (d / "sub" / "deeper").mkdir(parents=True)
    for i, c in enumerate(crops[:24]):
        sub = ["", "sub/", "sub/deeper/"][i % 3]
        save_image(c, d / f"{sub}img{i:02d}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def built(metric, folder):
    return build_index(metric, folder, progress=False)


def _brute_force(ix: Index, metric, q: torch.Tensor, k: int):
    with torch.no_grad():
        g = metric.features(q).double()[0]
    u = (g / g.norm()).numpy()
    d = ((ix.embeddings.astype(np.float64) - u) ** 2).sum(1) / 2
    order = np.argsort(d, kind="stable")[:k]
    return order, d[order]


def _queries(crops, n=6, noise=0.02, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(crops[i] + noise * torch.randn(crops[i].shape, generator=g)).clamp(0, 1) for i in range(0, 4 * n, 4)]


# ------------------------------------------------------------------------------------------ building
def test_build_recursive_skips_unreadable(built, folder, metric):
    assert len(built) == 24
    assert [Path(s).name for s, _ in built.skipped] == ["broken.png"]
    assert any("/sub/deeper/" in p for p in built.paths)
    assert built.dim == 32 and built.certified and built.metric_name == "tiny-lipsim"
    # the stored vectors are the metric's own embeddings of the files, and ||g|| is stored for certificates
    from robustsim.images import load_image

    x = load_image(built.paths[5])
    with torch.no_grad():
        np.testing.assert_allclose(built.embeddings[5], metric.embed(x)[0].numpy(), atol=1e-6)
        assert built.gnorms[5] == pytest.approx(float(metric.features(x).double().norm()), rel=1e-6)


def test_weights_hash_is_deterministic_and_sensitive(metric):
    same = tiny_lipsim(0)
    assert weights_hash(same) == weights_hash(metric)
    other = tiny_lipsim(0)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6
    assert weights_hash(other) != weights_hash(metric)


# ------------------------------------------------------------------------------------------ search
def test_exact_search_equals_brute_force(built, metric, crops):
    qs = _queries(crops, n=5)
    for q, r in zip(qs, search(built, metric, qs, k=7)):
        order, d = _brute_force(built, metric, q, 7)
        assert [n.index for n in r.neighbours] == order.tolist()
        np.testing.assert_allclose([n.distance for n in r.neighbours], d, rtol=1e-12, atol=1e-15)
        assert all(n.distance >= 0 for n in r.neighbours)


def test_top1_certificate_matches_certify_top1(built, metric, crops):
    q = _queries(crops, n=1)[0]
    r = search(built, metric, [q], k=1)[0]
    ref = certify.top1(metric, q, torch.from_numpy(built.embeddings))
    assert r.neighbours[0].index == int(ref.index[0])
    assert r.top1_radius == pytest.approx(float(ref.radius[0]), rel=1e-9)
    assert r.top1_radius > 0


def test_ivf_list_bounds_follow_edits(metric, crops):
    """The cached IVF lists behind certified pruning are rebuilt after every edit (stale lists are unsound)."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(300, 32))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ix = Index(metric_name="tiny-lipsim", weights_sha256=weights_hash(metric), dim=32, certified=True, kind="ivf",
               params={"nlist": 8, "nprobe": 1})
    ix.add_embeddings([f"v{i}" for i in range(200)], v[:200])
    first = ix.ivf_lists()
    assert ix.ivf_lists() is first and len(first[1]) == 200  # cached while the index is unchanged
    ix.add_embeddings([f"v{i}" for i in range(200, 300)], v[200:])
    cent, assign, rad = ix.ivf_lists()
    assert len(assign) == 300
    members = ix.embeddings.astype(np.float64)
    assert np.all(np.linalg.norm(members - cent[assign], axis=1) <= rad[assign] + 1e-12)
    ix.remove([f"v{i}" for i in range(50)])
    assert len(ix.ivf_lists()[1]) == 250


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("kind,params", [("exact", {}), ("ivf", {"nlist": 4, "nprobe": 1}), ("hnsw", {"M": 8})])
def test_reloaded_index_answers_identically(tmp_path, metric, folder, crops, kind, params):
    ix = build_index(metric, folder, kind=kind, progress=False, **params)
    qs = _queries(crops, n=3)
    before = [r.to_dict() for r in search(ix, metric, qs, k=4, tau=0.05)]
    path = ix.save(tmp_path / "g.rsidx")
    assert path.stat().st_mode & 0o044 == 0o044 & ~_umask()  # not owner-only (mkstemp's mode)
    assert [p.name for p in tmp_path.iterdir()] == ["g.rsidx"]  # no temporary file left behind
    again = load_index(path)
    assert again.paths == ix.paths and again.kind == kind
    np.testing.assert_array_equal(again.embeddings, ix.embeddings)
    after = [r.to_dict() for r in search(again, metric, qs, k=4, tau=0.05)]
    assert json.dumps(after) == json.dumps(before)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves nothing behind


def test_incremental_add_remove_equals_fresh_build(tmp_path, metric, crops):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i, c in enumerate(crops[:12]):
        save_image(c, a / f"x{i:02d}.png")
    ix = build_index(metric, a, progress=False)
    for i, c in enumerate(crops[12:20]):
        save_image(c, a / f"y{i:02d}.png")
    ix = load_index(ix.save(tmp_path / "i.rsidx"))  # edit a reloaded index, as the CLI does
    assert ix.add_images(metric, sorted(a.glob("*.png")), progress=False) == 8
    removed = [str(a / "x03.png"), str(a / "y05.png")]
    assert ix.remove(removed) == 2
    for i, c in enumerate(crops[:12]):
        if i != 3:
            save_image(c, b / f"x{i:02d}.png")
    for i, c in enumerate(crops[12:20]):
        if i != 5:
            save_image(c, b / f"y{i:02d}.png")
    fresh = build_index(metric, b, progress=False)
    assert [Path(p).name for p in ix.paths] == [Path(p).name for p in fresh.paths]
    np.testing.assert_array_equal(ix.embeddings, fresh.embeddings)
    qs = _queries(crops, n=4)
    r1 = [r.to_dict() for r in search(ix, metric, qs, k=5, tau=0.05)]
    r2 = [r.to_dict() for r in search(fresh, metric, qs, k=5, tau=0.05)]
    for x, y in zip(r1, r2):
        assert [Path(n["path"]).name for n in x["neighbours"]] == [Path(n["path"]).name for n in y["neighbours"]]
        assert x["top1_radius"] == y["top1_radius"]
        assert [n["duplicate_radius"] for n in x["neighbours"]] == [n["duplicate_radius"] for n in y["neighbours"]]


@pytest.mark.parametrize("spread", [3.0, 0.03])
def test_approximate_index_certifies_the_true_top1(metric, crops, spread):
    """IVF probing one list misses true neighbours (loose clusters); the certificate must still be about the
    true top-1, with the exact radius. With tight clusters the sound list bound prunes the exact scan."""
    rng = np.random.default_rng(0)
    qs = _queries(crops, n=8, noise=0.05)
    e, _ = embed_batch(metric, crops)
    fake = e[rng.integers(0, len(e), 2000)] + rng.normal(size=(2000, 32)) * spread / np.sqrt(32)
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    allv = (fake if spread > 0.1 else np.concatenate([e, fake])).astype(np.float32)  # loose: no exact copies
    exact = Index(metric_name="tiny-lipsim", weights_sha256=weights_hash(metric), dim=32, certified=True)
    ivf = Index(metric_name="tiny-lipsim", weights_sha256=weights_hash(metric), dim=32, certified=True, kind="ivf",
                params={"nlist": 32, "nprobe": 1})
    for ix in (exact, ivf):
        ix.add_embeddings([f"v{i}" for i in range(len(allv))], allv)
    missed, pruned, positive = 0, 0, 0
    for q in qs:
        re_, ri = search(exact, metric, [q], k=1)[0], search(ivf, metric, [q], k=1)[0]
        _, raw_ids = ivf.faiss_index.search(re_and_u(metric, q), 1)
        missed += int(raw_ids[0, 0] != re_.neighbours[0].index)
        pruned += int(ri.candidates_checked < len(allv))
        assert ri.neighbours[0].index == re_.neighbours[0].index
        assert ri.top1_radius == pytest.approx(re_.top1_radius, rel=1e-12, abs=1e-15)
        positive += int(ri.top1_radius > 0)
    assert positive >= 1
    if spread > 0.1:
        assert missed >= 1, "the test needs an IVF that actually misses the true top-1 somewhere"
    else:
        assert pruned >= 4, "tight clusters: the list bound should skip most lists"


def re_and_u(metric, q):
    with torch.no_grad():
        return metric.embed(q).numpy().astype(np.float32)


def test_threshold_radius_matches_certify_threshold(built, metric, crops):
    from robustsim.images import load_image

    q = _queries(crops, n=1)[0]
    r = search(built, metric, [q], k=3, tau=0.02)[0]
    for n in r.neighbours:
        ref = certify.threshold(metric, q, load_image(n.path), 0.02)
        assert n.duplicate == bool(ref.decision[0])
        assert n.duplicate_radius == pytest.approx(float(ref.radius[0]), rel=1e-4, abs=1e-9)


# ------------------------------------------------------------------------------------------ attack the certificate
def _competitor_objective(metric, gallery: torch.Tensor, a: int):
    """best competitor's score minus the top-1's (> 0: the top-1 answer changed)."""

    def obj(z, idx):
        s = metric.embed(z[:, 0]) @ gallery.T
        others = s.clone()
        others[:, a] = -2.0
        loss = others.max(1).values - s[:, a]
        return loss, loss > 0

    return obj


def test_certified_top1_survives_strong_attack_and_breaks_beyond(built, metric, crops):
    gal = torch.from_numpy(built.embeddings)
    qs = _queries(crops, n=4)
    broken_beyond = 0
    for q, r in zip(qs, search(built, metric, qs, k=1)):
        a, rad = r.neighbours[0].index, r.top1_radius
        assert rad > 0
        obj = _competitor_objective(metric, gal, a)
        inside = pgd_maximize(obj, q[:, None], eps=0.99 * rad, norm="l2", steps=100, restarts=3, seed=0)
        assert not bool(inside.success[0]), f"certified top-1 changed within 0.99 x radius {rad}"
        assert float((inside.x_adv[0, 0] - q[0]).norm()) <= 0.99 * rad * (1 + 1e-5)
        with torch.no_grad():  # the reported answer at the attacked point is still a
            s = metric.embed(inside.x_adv[:, 0]) @ gal.T
        assert int(s.argmax()) == a
        outside = pgd_maximize(obj, q[:, None], eps=3 * rad, norm="l2", steps=50, restarts=2, seed=0)
        broken_beyond += int(outside.success[0])
    assert broken_beyond >= 3, "the attack should change most answers at 3 x the radius (else it is too weak)"


# ------------------------------------------------------------------------------------------ bad input
def test_corrupt_truncated_and_tampered_files(tmp_path, built):
    p = built.save(tmp_path / "ok.rsidx")
    raw = p.read_bytes()
    (tmp_path / "trunc.rsidx").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.rsidx").write_bytes(b"hello world, not an index")
    tampered = bytearray(raw)
    tampered[-5] ^= 0xFF
    (tmp_path / "tamper.rsidx").write_bytes(bytes(tampered))
    for name, what in [("trunc", "corrupt or truncated"), ("junk", "corrupt or truncated"), ("tamper", "checksum"),
                       ("missing", "no such index file")]:
        with pytest.raises(InputError, match=what):
            load_index(tmp_path / f"{name}.rsidx")


def test_other_metric_or_weights_refused(built, metric, crops):
    other = tiny_lipsim(1)
    with pytest.raises(InputError, match=r"'tiny-lipsim' \(weights sha256 [0-9a-f]{12}\).*'tiny-lipsim' \(weights"):
        search(built, other, [crops[0]])
    renamed = tiny_lipsim(0)
    renamed.name = "lipsim-default"
    with pytest.raises(InputError, match="built with metric 'tiny-lipsim'.*uses 'lipsim-default'"):
        search(built, renamed, [crops[0]])
    with pytest.raises(InputError, match="'tiny-lipsim'"):
        built.add_images(other, [])


def test_dimension_mismatch(metric, crops):
    ix = Index(metric_name="tiny-lipsim", weights_sha256=weights_hash(metric), dim=16, certified=True)
    ix.add_embeddings(["a", "b"], np.eye(2, 16, dtype=np.float32))
    with pytest.raises(InputError, match="dimension mismatch: the index stores 16-d vectors, the metric gives 32"):
        search(ix, metric, [crops[0]])
    with pytest.raises(InputError, match="dimension mismatch: index has 16"):
        ix.add_embeddings(["c"], np.ones((1, 32), dtype=np.float32))


def test_empty_and_unreadable_folders_and_queries(tmp_path, metric, built):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        build_index(metric, tmp_path / "empty", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(InputError, match="none of the 1 image files could be read"):
        build_index(metric, tmp_path / "bad", progress=False)
    with pytest.raises(InputError, match="not a directory"):
        build_index(metric, tmp_path / "nowhere", progress=False)
    with pytest.raises(InputError, match="x.jpg"):
        search(built, metric, [str(tmp_path / "bad" / "x.jpg")])
    with pytest.raises(InputError, match="unknown index kind"):
        Index("m", "h", 3, False, kind="lsh")


def test_missing_faiss_names_the_extra(monkeypatch, metric, folder):
    ix = build_index(metric, folder, progress=False)
    ix._faiss_index = None
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(InputError, match=r"pip install 'robustsim\[retrieval\]'"):
        ix.faiss_index


# ------------------------------------------------------------------------------------------ CLI
def test_cli_index_search_update_remove(tmp_path, metric, crops, capsys):
    mpath = hub.save(metric, tmp_path / "tiny.safetensors")
    gal = tmp_path / "gal"
    gal.mkdir()
    for i, c in enumerate(crops[:10]):
        save_image(c, gal / f"g{i}.png")
    q = tmp_path / "q.png"
    save_image(_queries(crops, n=1)[0], q)
    out = tmp_path / "g.rsidx"
    assert main(["index", str(gal), "-o", str(out), "--metric", str(mpath)]) == 0
    assert "indexed 10 new file(s)" in capsys.readouterr().out
    assert main(["search", str(out), str(q), "-k", "3", "--tau", "0.05", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    api = search(load_index(out), hub.load(str(mpath)), [str(q)], k=3, tau=0.05)[0].to_dict()
    assert res[0] == json.loads(json.dumps(api))
    assert res[0]["top1_radius"] > 0 and res[0]["neighbours"][0]["path"].endswith("g0.png")
    save_image(crops[20], gal / "new.png")
    (gal / "g9.png").unlink()
    assert main(["index", str(gal), "-o", str(out), "--update"]) == 0
    assert "indexed 1 new file(s), removed 1; 10 in" in capsys.readouterr().out
    assert main(["index", "-o", str(out), "--remove", str(gal / "g1.png")]) == 0
    assert len(load_index(out)) == 9
    # bad input: exit 2, one line naming the problem
    assert main(["search", str(out), str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
    (tmp_path / "junk.rsidx").write_bytes(b"junk")
    assert main(["search", str(tmp_path / "junk.rsidx"), str(q)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and len(err.strip().splitlines()) == 1
