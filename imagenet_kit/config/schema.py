"""Every config key, declared once: its default, its help, its choices or range, and whether a resumed run may
change it. Validation (``checks``), the CLI's flags, help and choices (``flags``), ``--dry-run``'s comments
(``load.describe``) and the resume rules (``engine/resume.py``) all read these declarations.

Precedence: these defaults < recipe YAML < GPU profile < ``--set section.key=value`` < named flags.
"""
from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path

from imagenet_kit.config.recipes import profile_names
from imagenet_kit.runs import RunFolder, beton_paths


def key(default, help: str, *, choices=(), valid=None, fixed: bool = False, network: bool = False,
        words: tuple[str, ...] = ()) -> Field:
    """One key's declaration. ``choices``: its values (a tuple, or a function returning them); ``valid``: (test,
    what the value must be); ``fixed``: a resumed run keeps it (the data, the schedule); ``network``: it decides what
    a model's weights mean (fixed too; models/architecture.py); ``words``: text a numeric key also takes."""
    return field(default=default, metadata={"help": help, "choices": choices, "valid": valid,
                                            "fixed": fixed or network, "network": network, "words": words})


POSITIVE = (lambda v: v > 0, "positive")
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
FRACTION = (lambda v: 0 < v <= 1, "in (0, 1]")


@dataclass
class DataConfig:
    root: str = key("", "ImageFolder root holding train/ and val/, or any download prepare reads (--data sets it)")
    source: str = key("", "where the recipe's dataset comes from: said when no root is given")
    name: str = key("dataset", "names the betons: <beton_dir>/<name>-<split>-<max_res>.beton", fixed=True)
    beton_dir: str = key("betons", "the folder of the betons")
    max_res: int = key(256, "longest side stored in the beton (FFCV's ImageNet write uses 256-512)",
                       valid=(lambda v: v >= 16, "at least 16 (pixels)"), fixed=True)
    jpeg_quality: int = key(90, "JPEG quality of the compressed images", valid=(lambda v: 1 <= v <= 100, "in 1..100"))
    compress_prob: float = key(0.5, "share of images stored as JPEG; the rest raw pixels (faster decode)",
                               valid=(lambda v: 0 <= v <= 1, "in [0, 1]"))
    workers: int = key(0, "loader and convert worker processes; 0 = one per CPU core",
                       valid=(lambda v: v >= 0, "0 (one per core) or more"))
    in_memory: bool = key(True, "let the OS page cache hold the beton (FFCV's os_cache)")
    preread: bool = key(True, "read the betons once, in order, before epoch 0 when they fit the page cache: the "
                              "first epoch then runs at the GPU's speed instead of faulting the data in at random")
    holdout_fraction: float = key(0.1, "a root of class folders with no train/ and val/: this share of each class "
                                       "is held out as val, chosen by holdout_seed",
                                  valid=(lambda v: 0 < v < 1, "in (0, 1)"))
    holdout_seed: int = key(0, "the seed of the held-out val files (the same files every time)")


@dataclass
class SubsetConfig:
    """A slice of the data root, converted straight from any layout (``data/selection.py``)."""
    classes: str = key("", "'' = all; a number of classes drawn by the seed, or a file of WNIDs (one per line)",
                       fixed=True)
    per_class: int = key(0, "train images per class drawn by the seed; 0 = all (val keeps every image of the "
                            "classes)", fixed=True)
    seed: int = key(0, "the seed of the drawn classes and images", fixed=True)

    @property
    def tag(self) -> str:
        """Names the subset's betons beside the whole dataset's: ``-c100-p600-s0``."""
        if not self.classes:
            return ""
        classes = self.classes if self.classes.isdigit() else Path(self.classes).stem
        return f"-c{classes}-p{self.per_class or 'all'}-s{self.seed}"


ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50v2", "resnet50d", "resnext50d")


@dataclass
class ModelConfig:
    arch: str = key("resnet50", "the network", choices=ARCHS, network=True)
    zero_init_residual: bool = key(True, "last BN gamma of each residual block starts at 0 (Goyal et al. 2017)")
    blurpool: bool = key(False, "anti-aliased strided convs, as FFCV's rn50 configs use", network=True)
    channels_last: bool = key(True, "the NHWC memory format (faster convolutions on GPUs and recent CPUs)")
    init: str = key("", "starting weights of a fresh run (a resumed one takes its checkpoint's): '' = random; "
                        "'torchvision' = its ImageNet weights; or a kit checkpoint (.pt) or export folder; all but "
                        "the head loads (engine/init_weights.py)")
    activation: str = key("relu", "relu | mish (Misra 2019, the fastai Imagenette leaderboard's) | silu (Swish; far "
                                  "cheaper than Mish on CPU)", choices=("relu", "mish", "silu"), network=True)
    se_reduction: int = key(0, "squeeze-and-excitation (Hu et al. 2018) on every residual branch, its bottleneck "
                               "channels/this (16 in SENet); 0 = off",
                            valid=(lambda v: v >= 0, "0 (off) or a channel divisor such as 16"), network=True)
    self_attention: bool = key(False, "fastai's SimpleSelfAttention (Doria 2019) at the end of layer1's last block",
                               network=True)
    maxblurpool: bool = key(False, "anti-aliased max pooling (Zhang 2019) for the stem's max pool and, on resnet50d "
                                   "and resnext50d, the shortcuts' pooling", network=True)


@dataclass
class OptimConfig:
    lr: float = key(0.1, "peak LR at lr_batch images per step; 'auto' runs the LR range test first",
                    valid=(lambda v: v == "auto" or v > 0, "positive or auto (e.g. --lr 0.1 or --lr auto)"),
                    fixed=True, words=("auto",))
    lr_batch: int = key(256, "linear scaling rule: lr applies to this global batch, scaled to the real one",
                        valid=AT_LEAST_1, fixed=True)
    optimizer: str = key("sgd", "sgd | adamw | radam (torch's; both Adams decay decoupled, momentum is their beta1)",
                         choices=("sgd", "adamw", "radam"), fixed=True)
    momentum: float = key(0.9, "SGD's momentum, the Adams' beta1")
    beta2: float = key(0.99, "adamw and radam: decay of the squared-gradient average")
    eps: float = key(1e-8, "adamw and radam: added to the gradient RMS")
    lookahead_k: int = key(0, "Lookahead around the optimizer (fastai's Ranger = RAdam + k 6, alpha 0.5): every k "
                              "steps the slow weights move alpha of the way to the fast ones; 0 = off",
                           valid=(lambda v: v >= 0, "0 (off) or a step count"))
    lookahead_alpha: float = key(0.5, "Lookahead's step towards the fast weights", valid=FRACTION)
    weight_decay: float = key(5e-5, "never applied to BatchNorm weights or biases",
                              valid=(lambda v: v >= 0, "0 or more"))
    label_smoothing: float = key(0.1, "cross-entropy's label smoothing", valid=(lambda v: 0 <= v < 1, "in [0, 1)"))
    schedule: str = key("onecycle", "onecycle (torch's OneCycleLR) | linear (FFCV's) | step | flat_cos",
                        choices=("onecycle", "linear", "step", "flat_cos"), fixed=True)
    pct_start: float = key(0.25, "onecycle: share of steps spent warming up", valid=(lambda v: 0 < v < 1, "in (0, 1)"),
                           fixed=True)
    div_factor: float = key(25.0, "onecycle: initial lr = peak / div_factor", valid=POSITIVE, fixed=True)
    final_div_factor: float = key(1e4, "onecycle: final lr = initial lr / final_div_factor", valid=POSITIVE,
                                  fixed=True)
    base_momentum: float = key(0.85, "onecycle: momentum at the LR peak")
    max_momentum: float = key(0.95, "onecycle: momentum at the start and end")
    peak_epoch: float = key(2.0, "linear: epoch where the LR peaks (FFCV's lr_peak_epoch)", fixed=True)
    step_epochs: int = key(30, "step: epochs between decays", fixed=True)
    step_gamma: float = key(0.1, "step: decay factor", fixed=True)
    flat_fraction: float = key(0.75, "flat_cos: share of steps at the peak LR before the cosine decay to 0",
                               fixed=True)
    head_lr_mult: float = key(1.0, "the head's LR = this x the backbone's, all along the schedule (fine-tuning)",
                              valid=POSITIVE)


@dataclass
class TrainConfig:
    epochs: int = key(16, "epochs of the schedule", valid=(lambda v: v >= 1, "at least 1 (e.g. --epochs 5)"),
                      fixed=True)
    batch_size: int = key(256, "images per step per GPU (per process), as in torchvision's references",
                          valid=AT_LEAST_1, fixed=True)
    precision: str = key("auto", "auto (bf16 where the GPU or CPU has it, else fp16 on a GPU, fp32 on a CPU) | fp32 "
                                 "| fp16 | bf16", choices=("auto", "fp32", "fp16", "bf16"))
    compile: bool = key(False, "torch.compile the model (needs a C compiler and Python's headers)")
    min_res: int = key(160, "progressive resizing: train resolution up to start_ramp ...",
                       valid=(lambda v: v >= 16, "at least 16 (pixels)"))
    max_res: int = key(192, "... and from end_ramp on, rounded to multiples of 32 in between")
    start_ramp: int = key(11, "the epoch the resolution starts rising")
    end_ramp: int = key(13, "the epoch it reaches max_res")
    crop: str = key("random_resized", "random_resized: Inception-style crops of area min_scale-1 | random_square: the "
                                      "whole shorter side at a random position, no zoom (fastai's Resize)",
                    choices=("random_resized", "random_square"))
    min_scale: float = key(0.08, "smallest crop area of random-resized crops", valid=FRACTION)
    val_res: int = key(256, "evaluation resolution", valid=(lambda v: v >= 16, "at least 16 (pixels)"))
    val_crop_ratio: float = key(0.875, "evaluation center crop: this share of the shorter side, resized to val_res",
                                valid=FRACTION)
    val_batch_size: int = key(256, "images per evaluation batch", valid=AT_LEAST_1)
    flip_tta: bool = key(True, "average logits of the image and its mirror at evaluation")
    seed: int = key(0, "weights, order and augmentation")
    checkpoint_minutes: float = key(20.0, "also checkpoint mid-epoch this often (spot instances)",
                                    valid=(lambda v: v >= 0, "0 (at every check) or more"))
    mirror: str = key("", "also copy each checkpoint and the run's records to <mirror>/<name>/ (fsspec: "
                          "s3://bucket/runs with s3fs, or a path); --resume auto on a fresh instance takes the newest "
                          "complete one from there")
    dist_timeout_minutes: float = key(30.0, "torchrun: how long a rank waits in a collective before failing",
                                      valid=POSITIVE)
    tensorboard: bool = key(False, "also log each epoch's metrics to <run>/tensorboard (pip install tensorboard)")
    max_steps: int = key(0, "stop after this many steps in total (smoke tests); 0 = no limit",
                         valid=(lambda v: v >= 0, "0 (no limit) or more"))
    freeze_epochs: int = key(0, "fine-tuning: only the head trains for this many epochs, then everything",
                             valid=(lambda v: v >= 0, "0 or more"))
    profile: str = key("", "a GPU's settings (recipes/profiles/<name>.yaml: batch, precision, data that fits its "
                           "instances), applied over the recipe and under the flags; --gpu sets it",
                       choices=lambda: ("", *profile_names()))
    deterministic: bool = key(False, "reproducibility tests only: center crops, no flip, sequential order and "
                                     "torch's deterministic algorithms")


@dataclass
class LRFindConfig:
    start_lr: float = key(1e-7, "the range test's first LR", valid=POSITIVE)
    end_lr: float = key(10.0, "its last LR")
    num_iter: int = key(100, "its steps", valid=(lambda v: v >= 2, "at least 2"))
    smooth: float = key(0.98, "EMA factor of the loss, bias-corrected")
    diverge: float = key(4.0, "stop when the smoothed loss exceeds this multiple of its minimum")
    suggestion: str = key("turn_x3", "turn_x3 (the kit's: 3 x where the loss turns up) | turn | valley | steep | "
                                     "min10 (fastai's)", choices=("turn_x3", "turn", "valley", "steep", "min10"))
    batch_size: int = key(0, "0 = the training batch size", valid=(lambda v: v >= 0, "0 (the training batch) or more"))


@dataclass
class ReferenceConfig:
    """A published result of the recipe's schedule, never the kit's own: what ``plan --target`` selects by."""
    top1: float = key(0.0, "ImageNet-1K val top-1 in percent; 0 = no published figure",
                      valid=(lambda v: 0 <= v <= 100, "a percentage, 0 (none) to 100"))
    source: str = key("", "who measured it, how and where it is published")


@dataclass
class RunConfig:
    name: str = key("run", "the run's folder under output_dir")
    output_dir: str = key("runs", "where run folders go")
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


SECTIONS = {"data": DataConfig, "subset": SubsetConfig, "model": ModelConfig, "optim": OptimConfig,
            "train": TrainConfig, "lr_find": LRFindConfig, "reference": ReferenceConfig}
TOP_LEVEL = ("name", "output_dir")


def declaration(name: str) -> Field:
    """The field declaring ``section.key`` or a top-level key; KeyError for an unknown one."""
    section, _, rest = name.partition(".")
    owner = SECTIONS[section] if rest else RunConfig
    wanted = rest or section
    if not rest and wanted not in TOP_LEVEL:
        raise KeyError(name)
    for f in fields(owner):
        if f.name == wanted:
            return f
    raise KeyError(name)


def declared_keys() -> list[str]:
    return [*TOP_LEVEL, *(f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls))]


def choices(name: str) -> tuple:
    """The values ``name`` may take (empty: any of its type)."""
    declared = declaration(name).metadata["choices"]
    return tuple(declared() if callable(declared) else declared)


def fixed_keys() -> set[str]:
    """The keys a resumed run keeps (the data, the network, the batch and the schedule's shape)."""
    return {name for name in declared_keys() if declaration(name).metadata.get("fixed")}


def network_keys() -> tuple[str, ...]:
    """The model keys that decide what a model's weights mean, in declaration order."""
    return tuple(f.name for f in fields(ModelConfig) if f.metadata["network"])
