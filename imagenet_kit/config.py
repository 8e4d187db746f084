"""Typed run configuration.

Precedence: dataclass defaults < recipe YAML < ``--set section.key=value`` / CLI flags.
Every key is checked: an unknown or mistyped one is an error that names it and lists the valid ones,
so a typo in a recipe can never silently fall back to a default.
"""
from __future__ import annotations

import difflib
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from imagenet_kit.config_checks import validate
from imagenet_kit.errors import ConfigError
from imagenet_kit.recipe_files import flatten, profile_items, recipe_items
from imagenet_kit.runs import RunFolder, beton_paths


@dataclass
class DataConfig:
    root: str = ""  # ImageFolder root holding train/ and val/ (the raw JPEGs); --data sets it
    source: str = ""  # where the recipe's dataset comes from: said when no root is given
    name: str = "dataset"  # names the betons: <beton_dir>/<name>-<split>-<max_res>.beton
    beton_dir: str = "betons"
    max_res: int = 256  # longest side stored in the beton (FFCV's ImageNet write uses 256-512)
    jpeg_quality: int = 90
    compress_prob: float = 0.5  # share of images stored as JPEG; the rest raw pixels (faster decode)
    workers: int = 0  # loader/convert worker processes; 0 = one per CPU core
    in_memory: bool = True  # let the OS page cache hold the beton (FFCV's os_cache)
    # Read the betons once, in order, before epoch 0 when they fit the page cache (data/storage.py): the first epoch
    # then runs at the GPU's speed instead of reading the dataset by random page faults.
    preread: bool = True
    # A root of class folders with no train/ and val/: this share of each class is held out as val, chosen by
    # the seed (the same files every time); both are recorded in the betons' reports.
    holdout_fraction: float = 0.1
    holdout_seed: int = 0


@dataclass
class SubsetConfig:
    """A slice of the data root, converted straight from any layout (``data/selection.py``)."""
    classes: str = ""  # "" = all; a number of classes drawn by the seed, or a file of WNIDs (one per line)
    per_class: int = 0  # train images per class drawn by the seed; 0 = all. Val keeps every image of the classes.
    seed: int = 0

    @property
    def tag(self) -> str:
        """Names the subset's betons beside the whole dataset's: ``-c100-p600-s0``."""
        if not self.classes:
            return ""
        classes = self.classes if self.classes.isdigit() else Path(self.classes).stem
        return f"-c{classes}-p{self.per_class or 'all'}-s{self.seed}"


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    zero_init_residual: bool = True  # last BN gamma of each residual block starts at 0 (Goyal et al. 2017)
    blurpool: bool = False  # anti-aliased strided convs, as FFCV's rn50 configs use
    channels_last: bool = True
    # Starting weights of a fresh run (a resumed one takes its checkpoint's): "" = random; "torchvision" = its published
    # ImageNet weights; or a kit checkpoint (.pt) or export folder. All but the head loads (engine/init_weights.py).
    init: str = ""
    # relu | mish (Misra 2019, the fastai Imagenette leaderboard's choice) | silu (Swish; far cheaper than
    # Mish on CPU, where torch's bf16 Mish kernel is slow)
    activation: str = "relu"
    # Squeeze-and-excitation (Hu et al. 2018) on every residual branch, its bottleneck channels/this (SENet
    # and fastai's xse_resnext use 16); 0 = off.
    se_reduction: int = 0
    # fastai's SimpleSelfAttention (Doria 2019) at the end of layer1's last block, as its `sa=1` puts it.
    self_attention: bool = False
    # Anti-aliased max pooling (Zhang 2019) for the stem's max pool and, on resnet50d/resnext50d, the shortcuts'
    # 2x2 pooling: as the best 5-epoch Imagenette leaderboard entry (87.5%) swaps in kornia's MaxBlurPool2d.
    maxblurpool: bool = False


@dataclass
class OptimConfig:
    lr: Any = 0.1  # peak LR at batch `lr_batch`; "auto" runs the LR range test first
    lr_batch: int = 256  # linear scaling rule: lr applies to this global batch, scaled to the real one
    # sgd | adamw | radam (torch's; both Adams decay decoupled, `momentum` is their beta1). RAdam's
    # rectification is a built-in warm-up, so it suits a schedule that starts at the peak (flat_cos).
    optimizer: str = "sgd"
    momentum: float = 0.9
    beta2: float = 0.99  # adamw/radam: decay of the squared-gradient average
    eps: float = 1e-8  # adamw/radam: added to the gradient RMS (torch's default; fastai's Ranger uses 1e-5 to 1e-6)
    # Lookahead around the optimizer (fastai's Ranger = RAdam + lookahead_k 6, alpha 0.5): every k steps the
    # slow weights move alpha of the way to the fast ones and the fast ones restart there. 0 = off.
    lookahead_k: int = 0
    lookahead_alpha: float = 0.5
    weight_decay: float = 5e-5  # never applied to BatchNorm weights or biases
    label_smoothing: float = 0.1
    schedule: str = "onecycle"  # onecycle | linear | step | flat_cos
    pct_start: float = 0.25  # onecycle: share of steps spent warming up
    div_factor: float = 25.0  # onecycle: initial lr = peak / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    base_momentum: float = 0.85  # onecycle: momentum at the LR peak
    max_momentum: float = 0.95  # onecycle: momentum at the start and end
    peak_epoch: float = 2.0  # linear: epoch where the LR peaks (FFCV's lr_peak_epoch)
    step_epochs: int = 30  # step: epochs between decays
    step_gamma: float = 0.1  # step: decay factor
    flat_fraction: float = 0.75  # flat_cos: share of steps at the peak LR before the cosine decay to 0
    head_lr_mult: float = 1.0  # the head's LR = this x the backbone's, all along the schedule (fine-tuning)


@dataclass
class TrainConfig:
    epochs: int = 16
    batch_size: int = 256  # per GPU (per process), as in torchvision's references
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    compile: bool = False
    min_res: int = 160  # progressive resizing: train resolution up to start_ramp ...
    max_res: int = 192  # ... and from end_ramp on, rounded to multiples of 32 in between
    start_ramp: int = 11
    end_ramp: int = 13
    # random_resized: Inception-style random-resized crops (area min_scale-1, aspect 3/4-4/3), the ImageNet norm.
    # random_square: the whole shorter side as a square at a random position, no zoom (fastai's Resize(size)
    # on training images); it fits far faster, which wins when there are only a few epochs.
    crop: str = "random_resized"
    min_scale: float = 0.08  # smallest crop area of random-resized-crop; short schedules like 0.35 (fastai)
    val_res: int = 256
    # Evaluation center crop: this share of the shorter side, resized to val_res (224/256: the ImageNet standard;
    # 1.0 matches random_square training, which never zooms in).
    val_crop_ratio: float = 0.875
    val_batch_size: int = 256
    flip_tta: bool = True  # average logits of the image and its mirror at evaluation
    seed: int = 0
    checkpoint_minutes: float = 20.0  # also checkpoint mid-epoch this often (spot instances)
    # Also copy each checkpoint and the run's records to <mirror>/<name>/ (fsspec: s3://bucket/runs with s3fs, a
    # path on a network disk); --resume auto on a fresh instance takes the newest complete one from there.
    mirror: str = ""
    # torchrun: how long a rank waits in a collective before failing (NCCL's default is 10 minutes, less than rank
    # 0's LR range test with a beton loading into RAM); a rank that died is then reported after this long.
    dist_timeout_minutes: float = 30.0
    tensorboard: bool = False  # also log each epoch's metrics to <run>/tensorboard (needs `pip install tensorboard`)
    max_steps: int = 0  # stop after this many steps in total (smoke tests); 0 = no limit
    freeze_epochs: int = 0  # fine-tuning: only the head trains for this many epochs, then everything
    # A GPU's settings (recipes/profiles/<name>.yaml: batch, precision, data that fits its instances), applied over
    # the recipe and under the flags; --gpu sets it.
    profile: str = ""
    # Reproducibility tests only: center crops, no flip, sequential order and torch's deterministic algorithms.
    # FFCV's random crops draw from numba's unseeded RNG, so a normal run cannot be replayed bit for bit.
    deterministic: bool = False


@dataclass
class LRFindConfig:
    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_iter: int = 100
    smooth: float = 0.98  # EMA factor of the loss, bias-corrected
    diverge: float = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
    # turn_x3 (the kit's: 3 x where the loss turns up) | turn | valley | steep | min10 (fastai's)
    suggestion: str = "turn_x3"
    batch_size: int = 0  # 0 = the training batch size


@dataclass
class ReferenceConfig:
    """A published result of the recipe's schedule, never the kit's own: what ``plan --target`` selects by."""
    top1: float = 0.0  # ImageNet-1K val top-1 in percent; 0 = no published figure
    source: str = ""  # who measured it, how and where it is published


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def betons(self) -> tuple[Path, Path]:
        """The train and val betons this run reads (``runs.beton_paths``)."""
        return beton_paths(self.data.beton_dir, self.data.name + self.subset.tag, self.data.max_res)


SECTIONS = {"data": DataConfig, "subset": SubsetConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "lr_find": LRFindConfig, "reference": ReferenceConfig}
TOP_LEVEL = ("name", "output_dir")


def _valid_keys() -> list[str]:
    return [*TOP_LEVEL, *(f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls))]


BOOLEAN_WORDS = {**dict.fromkeys(("1", "true", "yes", "on"), True), **dict.fromkeys(("0", "false", "no", "off"), False)}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's type, or raise naming the key."""
    if key == "optim.lr" and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"  # optim.lr: a number or the word "auto"
    annotation = float if key == "optim.lr" else type(default)
    try:
        if annotation is bool:
            return value if isinstance(value, bool) else BOOLEAN_WORDS[str(value).strip().lower()]
        if annotation in (int, float) and isinstance(value, bool):  # YAML's `yes` is no number
            raise ValueError
        if annotation is int:
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return float(value) if annotation is float else str(value)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None


def _key_hint(key: str) -> str:
    """The nearest valid key (by its name within a known section), else that section's keys, else the sections."""
    section, _, name = key.partition(".")
    if section in SECTIONS:
        names = [f.name for f in fields(SECTIONS[section])]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            return f"did you mean {section}.{close[0]}?"
        return f"the keys of {section}: " + ", ".join(f"{section}.{n}" for n in names)
    close = difflib.get_close_matches(key, _valid_keys(), n=1, cutoff=0.75)
    if close:
        return f"did you mean {close[0]}?"
    return f"keys are section.key, the sections {', '.join(SECTIONS)}; or one of {', '.join(TOP_LEVEL)}"


def set_key(cfg: RunConfig, key: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key) on ``cfg``, checking the key and the value's type."""
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in TOP_LEVEL:
        setattr(cfg, parts[0], str(value))
        return
    if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in {f.name for f in fields(SECTIONS[parts[0]])}:
        raise ConfigError(f"unknown config key '{key}'; {_key_hint(key)}")
    section = getattr(cfg, parts[0])
    default = getattr(SECTIONS[parts[0]](), parts[1])
    setattr(section, parts[1], _coerce(key, value, default))


def _overrides(items: typing.Iterable[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.epochs=5)")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), yaml.safe_load(value) if value.strip() else ""))
    return pairs


def load_config(recipe: str | None = None, overrides: typing.Iterable[str] = ()) -> RunConfig:
    """Defaults, then the recipe's YAML (its ``base:`` first), then its GPU profile (``train.profile``, from the
    recipe or an override), then ``key=value`` overrides, each key validated."""
    cfg, flags = RunConfig(), _overrides(overrides)
    items = recipe_items(recipe) if recipe else []
    profiles = [value for _, key, value in items if key == "train.profile"] + [v for k, v in flags if k == "train.profile"]
    items += profile_items(str(profiles[-1])) if profiles and profiles[-1] else []
    for path, key, value in items:
        try:
            set_key(cfg, key, value)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for key, value in flags:
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_dict(tree: dict) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (e.g. a checkpoint's or a run folder's config)."""
    cfg = RunConfig()
    for key, value in flatten(tree):
        set_key(cfg, key, value)
    return cfg


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
