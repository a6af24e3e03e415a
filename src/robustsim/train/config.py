"""Training configurations: YAML files read into typed dataclasses, strictly.

A config has a ``recipe`` (``rlpips``, ``distill`` or ``finetune``) and sections. Every key must be
known: a typo in a long GPU run should fail at once, naming the key, not be silently ignored.
Paths to data are checked when the config is loaded, so a missing dataset is reported before any
model is built.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import InputError

RECIPES = ("rlpips", "distill", "finetune")


@dataclass
class TrainSection:
    """Loop settings shared by every recipe."""

    steps: Optional[int] = None  # total optimisation steps (or give epochs)
    epochs: Optional[float] = None  # passes over the training set (converted to steps)
    batch_size: int = 50  # GLOBAL batch, split evenly over the processes
    checkpoint_every: int = 500  # steps; also on SIGINT/SIGTERM and at the end
    log_every: int = 1  # steps between rows of the CSV log
    amp: str = "auto"  # "auto" (bf16 autocast on CUDA only), "off", "bf16", "fp16"
    num_workers: int = 0  # data-loader worker processes
    device: str = "auto"  # "auto", "cpu", "cuda"
    grad_clip: Optional[float] = None  # max global gradient norm
    tensorboard: bool = True  # also write TensorBoard scalars when tensorboard is installed


@dataclass
class OptimSection:
    """Adam with a step-wise learning-rate schedule."""

    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant", "cosine", "linear-decay" (constant, then linear to 0)
    warmup_steps: int = 0  # linear warm-up from 0 (cosine and constant)
    decay_start: float = 0.5  # linear-decay: fraction of the run after which the lr decays linearly to 0
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr


def triplet_kinds() -> List[str]:
    """data.kind values of the 2AFC recipes: the trainable datasets of ``data/registry.py`` and their aliases."""
    from ..data.registry import dataset_spec, list_datasets

    names = list_datasets(trainable=True)
    return names + [a for n in names for a in dataset_spec(n).aliases]


@dataclass
class TripletDataSection:
    """2AFC triplets with judgments: BAPPS layout, NIGHTS layout, or the offline photo suites."""

    kind: str = "bapps"  # one of triplet_kinds()
    root: Optional[str] = None  # dataset root (bapps/nights) or a .pt/.safetensors file of tensors
    split: str = "train"
    subsets: Optional[List[str]] = None  # BAPPS: traditional, cnn, mix
    size: int = 64  # images are resized to size×size
    limit: Optional[int] = None  # use only the first N triplets (smoke tests)
    options: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the reader
    # more sets of the same kind, concatenated after the first: each a dict merged over ``options`` (``root``
    # may be one of its keys), e.g. {seed: 1, extra_dirs: [...]}: new judged triplets, the first set's labels kept
    parts: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class PhotoDataSection:
    """Real photos for distillation: built-in training photos (data/photos.py) and/or folders of images.

    A fixed set of ``num_crops`` random crops is drawn once; each gives a plain view (crop + flip) and a
    colour-jittered view, stored at ``view_size`` with the teacher's embedding of each (memory-mapped).
    """

    builtin: bool = True  # the built-in photos of the train split (never the held-out ones)
    folders: List[str] = field(default_factory=list)  # extra folders of .png/.jpg (must exist)
    optional_folders: List[str] = field(default_factory=list)  # used when they exist, skipped otherwise
    include_gray: bool = True
    num_crops: int = 4096
    view_size: int = 128  # side of the stored views (= student input size: no resize during training)
    crop_scales: List[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # of the short side
    flip: bool = True
    jitter_p: float = 0.8  # ColorJitter(0.4, 0.4, 0.2, 0.1) probability
    grayscale_p: float = 0.2
    view_mode: str = "both"  # "both": plain and jittered view of every crop per step; "random": one of the two (half the cost)
    second_view: str = "jitter"  # the second view: "jitter" (colour jitter, LipSim's), "distort" (a random kind of the
    #                              distortion registry at a judged-suite strength) or "mixed" (either, half the crops each)
    cache_dir: Optional[str] = None  # teacher-embedding cache (default: <out_dir>/teacher_cache)


@dataclass
class ModelSection:
    """The network being trained.

    name: a hub name (``lpips-alex``, ``lipsim-default`` ...) or a robustsim .safetensors file;
    arch: keyword arguments building it from scratch instead (recipe-specific class, e.g. a LipSim config);
        finetune with ``name`` too: overrides of the loaded model's configuration that keep its parameter
        shapes (e.g. ``{embed_dim: 3072}``).
    """

    name: Optional[str] = None
    weights: Optional[str] = None  # weights=PATH passed to robustsim.load
    trunk_weights: Optional[str] = None  # LPIPS: torchvision trunk checkpoint
    arch: Dict[str, Any] = field(default_factory=dict)
    tune_trunk: bool = False  # R-LPIPS: also train the feature trunk
    init_lin: str = "pretrained"  # R-LPIPS: "pretrained" lin heads (as the paper) or "random"
    head_weights: Optional[str] = None  # R-LPIPS: a saved Dist2Logit state dict (rank_head.pth) to start from


@dataclass
class AttackSection:
    """The adversarial step of R-LPIPS (PGD each training step)."""

    enabled: bool = False
    target: str = "x0"  # "ref", "x0", "x1", "x0+x1"
    norm: str = "linf"
    eps: float = 4 / 255  # [0,1] units (the paper's 8/255 in [-1,1] units)
    steps: int = 5
    step_size: Optional[float] = None  # default 2.5 * eps / steps
    loss: str = "ranking"  # "ranking": the Dist2Logit BCE; "2afc": cross-entropy on (-d0, -d1)


@dataclass
class TeacherSection:
    """Distillation teacher: a hub metric (or saved file) or a directory of precomputed embeddings."""

    name: Optional[str] = "effnet-lite0-cosine"
    weights: Optional[str] = None
    embeddings: Optional[str] = None  # a prepared cache directory (views + embeddings) made elsewhere
    target: str = "features"  # "features": raw teacher features (centred if the teacher centres); "embed": unit vectors
    scale: float = 1.0  # multiply the targets (the student's ||g|| follows the targets' norm)
    batch_size: int = 32  # teacher forward batch when building the cache


@dataclass
class LossSection:
    """Fine-tuning loss (hinge on 2AFC margins)."""

    margin: float = 0.5  # LipSim 0.5, DreamSim 0.05
    # > 0: certified hinge, the margin must also survive any l2 perturbation of the reference of this
    # size (certify.two_afc's radius G·M/(K·C) >= cert_eps); 0 = the papers' plain hinge
    cert_eps: float = 0.0
    # true: weight each triplet's hinge by the judges' agreement |2j - 1| (1 for a unanimous vote, 0.2 for
    # 3 of 5, 0 for a tie), so split votes teach the ordering without counting as much as clear ones
    agreement_weight: bool = False
    # true (needs cert_eps > 0): hinge on the certified radius itself, max(0, cert_eps - G·M/(K·C)) in l2
    # pixel units; ``margin`` is unused. The margin in 1 - cos is a radius demand of margin·G/(K·C), pixels
    # beyond what most triplets allow, which a 1-Lipschitz g can only meet by shrinking ||g||
    radius_hinge: bool = False
    # > 0 (needs radius_hinge): add the radius hinge at an attacked reference, max(0, cert_eps - r(ref + δ)),
    # δ from ``adv_steps`` l2 PGD steps of size adv_eps that lower the radius r. The certificate assumes the
    # worst gain (1) in every direction; an attacker finds less (about 0.85 for lipsim-default v7), and only
    # this term rewards the network for lowering it. ``adv_weight`` scales the term.
    adv_eps: float = 0.0
    adv_steps: int = 2
    adv_weight: float = 1.0
    # the radius asked at the attacked reference, max(0, adv_demand - r(ref + δ)); None = cert_eps. Why: a 2AFC
    # attack wins by flipping the decision, so keeping it (a radius just above 0) at a budget the size of the
    # attack's asks for what the attack measures, without cert_eps more on top of it
    adv_demand: Optional[float] = None
    # whose decision the attacked term keeps: "judges" (the label) or "own" (the network's clean decision, detached:
    # the TRADES split, where the clean term teaches the ordering and the attacked one only stability)
    adv_target: str = "judges"


@dataclass
class RecipeConfig:
    """A complete training run."""

    recipe: str
    seed: int = 0
    out_dir: str = "runs/train"
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: Any = None  # TripletDataSection (rlpips, finetune) or PhotoDataSection (distill)
    val_data: Optional[TripletDataSection] = None  # optional held-out 2AFC set scored at the end
    attack: AttackSection = field(default_factory=AttackSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    loss: LossSection = field(default_factory=LossSection)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- strict construction


def _build(cls: type, raw: Any, where: str) -> Any:
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise InputError(f"config section {where or 'top level'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise InputError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
            f"(allowed in {where or 'top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for k, v in raw.items():
        kwargs[k] = _coerce(hints[k], v, f"{where}.{k}" if where else k)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(f"config section {where or 'top level'}: {e}") from e


def _coerce(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], v, where) if len(inner) == 1 else v
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, where)
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            v = _number(v, where)
        return float(v)
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise InputError(f"config key {where} must be an integer, got {v!r}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise InputError(f"config key {where} must be true or false, got {v!r}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise InputError(f"config key {where} must be a string, got {v!r}")
        return v
    if origin in (tuple, Tuple):
        if not isinstance(v, (list, tuple)) or len(v) != len(args):
            raise InputError(f"config key {where} must be a list of {len(args)} values, got {v!r}")
        return tuple(_coerce(a, x, where) for a, x in zip(args, v))
    if origin in (list, List):
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise InputError(f"config key {where} must be a list, got {v!r}")
        return [_coerce(args[0], x, where) for x in v] if args else list(v)
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, str):  # YAML reads "1e-4" as a string
        try:
            return float(eval_fraction(v))
        except ValueError:
            pass
    raise InputError(f"config key {where} must be a number, got {v!r}")


def eval_fraction(s: str) -> float:
    """Parse '1e-4', '4/255' or '0.5' (budgets are often written as fractions)."""
    s = s.strip()
    if "/" in s:
        a, _, b = s.partition("/")
        return float(a) / float(b)
    return float(s)


def _fix_fraction_strings(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _fix_fraction_strings(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_fix_fraction_strings(v) for v in raw]
    if isinstance(raw, str) and "/" in raw and all(p.strip().replace(".", "", 1).isdigit() for p in raw.split("/", 1)):
        return eval_fraction(raw)
    return raw


def from_dict(raw: Dict[str, Any], check_paths: bool = True) -> RecipeConfig:
    """Build a :class:`RecipeConfig` from a mapping, rejecting unknown keys and missing data."""
    if not isinstance(raw, dict):
        raise InputError("a training config must be a mapping at the top level")
    raw = _fix_fraction_strings(dict(raw))
    recipe = raw.get("recipe")
    if recipe not in RECIPES:
        raise InputError(f"config key 'recipe' must be one of {', '.join(RECIPES)}, got {recipe!r}")
    data_cls = PhotoDataSection if recipe == "distill" else TripletDataSection
    raw_data = raw.pop("data", None)
    cfg = _build(RecipeConfig, raw, "")
    cfg.data = _build(data_cls, raw_data if raw_data is not None else {}, "data")
    _validate(cfg)
    if check_paths:
        check_data_paths(cfg)
    return cfg


def load_config(path: Union[str, os.PathLike], overrides: Optional[Dict[str, Any]] = None, check_paths: bool = True) -> RecipeConfig:
    """Read a YAML config; ``overrides`` maps dotted keys (``train.steps``) to values."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    raw = raw or {}
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return from_dict(raw, check_paths=check_paths)


def set_dotted(raw: Dict[str, Any], key: str, value: Any) -> None:
    """raw['a']['b'] = value for key 'a.b' (creating sections as needed)."""
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"cannot set {key}: {p} is not a section")
    node[parts[-1]] = value


def _validate(cfg: RecipeConfig) -> None:
    t, o = cfg.train, cfg.optim
    if (t.steps is None) == (t.epochs is None):
        raise InputError("give exactly one of train.steps and train.epochs")
    if t.steps is not None and t.steps < 1:
        raise InputError(f"train.steps must be >= 1, got {t.steps}")
    if t.epochs is not None and t.epochs <= 0:
        raise InputError(f"train.epochs must be > 0, got {t.epochs}")
    if t.batch_size < 1:
        raise InputError(f"train.batch_size must be >= 1, got {t.batch_size}")
    if t.checkpoint_every < 1 or t.log_every < 1:
        raise InputError("train.checkpoint_every and train.log_every must be >= 1")
    if t.amp not in ("auto", "off", "bf16", "fp16"):
        raise InputError(f"train.amp must be auto, off, bf16 or fp16, got {t.amp!r}")
    if o.schedule not in ("constant", "cosine", "linear-decay"):
        raise InputError(f"optim.schedule must be constant, cosine or linear-decay, got {o.schedule!r}")
    if not (o.lr > 0):
        raise InputError(f"optim.lr must be > 0, got {o.lr}")
    a = cfg.attack
    if a.target not in ("ref", "x0", "x1", "x0+x1"):
        raise InputError(f"attack.target must be ref, x0, x1 or x0+x1, got {a.target!r}")
    if a.norm not in ("linf", "l2"):
        raise InputError(f"attack.norm must be linf or l2, got {a.norm!r}")
    if a.loss not in ("ranking", "2afc"):
        raise InputError(f"attack.loss must be ranking or 2afc, got {a.loss!r}")
    if not (a.eps > 0 and a.eps != float("inf")):  # NaN fails too
        raise InputError(f"attack.eps (the perturbation bound) must be a positive finite number, got {a.eps}")
    if a.steps < 1:
        raise InputError(f"attack.steps must be >= 1, got {a.steps}")
    if a.step_size is not None and not (a.step_size > 0 and a.step_size != float("inf")):
        raise InputError(f"attack.step_size must be a positive finite number, got {a.step_size}")
    if cfg.teacher.target not in ("features", "embed"):
        raise InputError(f"teacher.target must be features or embed, got {cfg.teacher.target!r}")
    if cfg.recipe == "distill" and cfg.data.view_mode not in ("both", "random"):
        raise InputError(f"data.view_mode must be both or random, got {cfg.data.view_mode!r}")
    if cfg.recipe == "distill" and cfg.data.second_view not in ("jitter", "distort", "mixed"):
        raise InputError(f"data.second_view must be jitter, distort or mixed, got {cfg.data.second_view!r}")
    if cfg.recipe != "distill" and cfg.data.kind not in triplet_kinds():
        raise InputError(
            f"data.kind must be one of {', '.join(triplet_kinds())}, got {cfg.data.kind!r}"
        )


def check_data_paths(cfg: RecipeConfig) -> None:
    """Fail early, naming the path, when a dataset the config points to does not exist."""
    missing: List[str] = []
    sections = [("data", cfg.data)] + ([("val_data", cfg.val_data)] if cfg.val_data is not None else [])
    for name, d in sections:
        if isinstance(d, TripletDataSection):
            from ..data.registry import dataset_spec

            if dataset_spec(d.kind).needs_root:
                if not d.root:
                    raise InputError(f"{name}.root is required for data.kind={d.kind}")
                if not Path(d.root).expanduser().exists():
                    missing.append(f"{name}.root={d.root}")
            for i, part in enumerate(d.parts if isinstance(d.parts, list) else []):
                root = part.get("root") if isinstance(part, dict) else None
                if root and not Path(root).expanduser().exists():
                    missing.append(f"{name}.parts[{i}].root={root}")
        elif isinstance(d, PhotoDataSection):
            for f in d.folders:
                if not Path(f).expanduser().is_dir():
                    missing.append(f"{name}.folders: {f}")
            if not d.builtin and not d.folders and not any(Path(f).expanduser().is_dir() for f in d.optional_folders):
                if not cfg.teacher.embeddings:
                    raise InputError(f"{name}: no photos (set builtin, folders or an existing optional folder)")
    if cfg.teacher.embeddings and cfg.recipe == "distill" and not Path(cfg.teacher.embeddings).expanduser().is_dir():
        missing.append(f"teacher.embeddings={cfg.teacher.embeddings}")
    for key in ("weights", "trunk_weights", "head_weights"):
        p = getattr(cfg.model, key)
        if p and not Path(p).expanduser().is_file():
            missing.append(f"model.{key}={p}")
    if cfg.model.name and cfg.model.name.endswith(".safetensors") and not Path(cfg.model.name).expanduser().is_file():
        missing.append(f"model.name={cfg.model.name}")
    if missing:
        raise InputError("missing data: " + "; ".join(missing) + " does not exist")
