"""Every GPU and instance fact the plan uses, each written once, with its source.

A GPU has a published ResNet-50 training figure, or one derived from the nearest published figure by the ratios
of the two datasheets (labelled "derived" wherever it is shown), or none; a measured ``bench train`` row always
wins over both (``throughput.measured_throughput``). An instance is AWS's published size and on-demand price;
a GPU's default price per GPU-hour is that of the first (smallest) instance of it below.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Throughput:
    """Training images per second summed over ``gpus`` GPUs at ``res`` px."""
    gpus: int
    res: int
    img_per_s: float


@dataclass(frozen=True)
class Reference:
    """A ResNet-50 training throughput not measured by the kit: published, or derived from another GPU's."""
    source: str
    points: tuple[Throughput, ...]
    derived: bool = False
    # The network's add-ons in the measured run, as ``architecture_extras`` names them (FFCV's ran BlurPool;
    # Lambda's NVIDIA DeepLearningExamples ResNet-50 v1.5 is plain).
    extras: tuple[str, ...] = ()


@dataclass(frozen=True)
class Gpu:
    name: str
    device_pattern: str  # matched against the "device" field of bench rows (torch's device name)
    reference: Reference
    bf16: bool = True  # bf16 tensor cores (Ampere and newer): what train.precision "auto" picks there, else fp16


@dataclass(frozen=True)
class Host:
    name: str
    vcpus: int
    ram_gib: float
    disk_gb: float  # where the betons go: an instance's local NVMe (instance store), or free space here
    gpu: str | None  # a key of GPUS, or None (this machine has no CUDA GPU)
    gpus: int
    price_per_hour: float | None  # USD, on demand, the whole instance
    disk_what: str = "local NVMe (instance store)"


# Lambda's PyTorch benchmark (lambdal/deeplearning-benchmark pytorch/pytorch-train-throughput-fp16.csv, commit
# 0551cb70): NVIDIA DeepLearningExamples' ResNet-50 v1.5 with AMP at 224 px. Its "LambdaCloud A10" row, 638 img/s,
# is the nearest published figure for the GPUs below that have none; each is scaled by the smaller of its ratios
# to the A10 in FP16 tensor-core peak and memory bandwidth (NVIDIA datasheets: A10 125 TFLOPS dense, 600 GB/s).
A10_IMG_PER_S = 638.0
LAMBDA = "lambdal/deeplearning-benchmark pytorch/pytorch-train-throughput-fp16.csv"


def _from_a10(gpu: str, ratio: float, why: str) -> Reference:
    return Reference(f"not measured: Lambda's A10 figure, {A10_IMG_PER_S:.0f} img/s ({LAMBDA}, row 'LambdaCloud A10': "
                     f"NVIDIA DeepLearningExamples ResNet-50 v1.5, AMP, 224 px) x {ratio:.2f}, {why}. Measure with "
                     f"`imagenet-kit bench train` on the {gpu}",
                     (Throughput(1, 224, A10_IMG_PER_S * ratio),), derived=True)


GPUS = {
    "t4": Gpu("NVIDIA T4", r"\bT4\b", _from_a10(
        "T4", 65 / 125, "the T4/A10 ratio of FP16 tensor-core peak (65 vs 125 TFLOPS; memory bandwidth 320 vs 600 "
        "GB/s is 0.53) in NVIDIA's T4 and A10 datasheets. The 70 W T4 often runs below its peak clocks, so this is "
        "likely optimistic"), bf16=False),  # Turing: fp16 tensor cores only (NVIDIA T4 datasheet)
    "a10g": Gpu("NVIDIA A10G", r"\bA10G\b", _from_a10(
        "A10G", 1.0, "the A10G being AWS's variant of the A10 (the same GA102 chip and 24 GB of GDDR6 at 600 GB/s) "
        "with no NVIDIA datasheet of its own; AWS's parts may clock lower, so this is likely optimistic")),
    "l4": Gpu("NVIDIA L4", r"\bL4\b", _from_a10(
        "L4", 300 / 600, "the L4/A10 ratio of memory bandwidth (300 vs 600 GB/s; FP16 tensor-core peak 121 vs 125 "
        "TFLOPS dense is 0.97) in NVIDIA's L4 and A10 datasheets: ResNet-50 training is bandwidth-bound there")),
    "l40s": Gpu("NVIDIA L40S", r"\bL40S\b", _from_a10(
        "L40S", 864 / 600, "the L40S/A10 ratio of memory bandwidth (864 vs 600 GB/s; FP16 tensor-core peak 362 vs "
        "125 TFLOPS dense is 2.9) in NVIDIA's L40S and A10 datasheets")),
    # libffcv/ffcv-imagenet assets/agg.csv, run 1330f71e (rn50 with BlurPool, use_blurpool: 1 in its configs, 16 epochs,
    # 8x A100 on a p4d.24xlarge, batch 512 per GPU, the schedule recipes/full.yaml copies). Its log's relative_time
    # minus val_time gives each epoch's training seconds; 1,277,952 images per epoch (312 steps of 4096) over the median
    # of epochs 1-11 (160 px, 45.52 s) and 13-15 (192 px, 61.52 s). Epoch 0 (first pass over the data) and epoch 12
    # (first at 192 px, 75 s) carry one-off costs and are left out.
    "a100": Gpu("NVIDIA A100 40GB", r"\bA100\b", Reference(
        "FFCV's 16-epoch ResNet-50 run with BlurPool on 8x A100 (libffcv/ffcv-imagenet assets/agg.csv, fp16 AMP, "
        "FFCV loader)",
        (Throughput(8, 160, 28074.0), Throughput(8, 192, 20774.0)), extras=("blurpool",))),
    "h100": Gpu("NVIDIA H100 80GB", r"\bH100\b", Reference(
        f"Lambda's PyTorch benchmark on H100 80GB SXM5, 1 and 8 GPUs ({LAMBDA}, rows 'H100 80GB SXM5' and "
        "'8x H100 80GB SXM5': NVIDIA DeepLearningExamples ResNet-50 v1.5, AMP, 224 px)",
        (Throughput(1, 224, 2616.0), Throughput(8, 224, 20728.0)))),
}

INSTANCES = {host.name: host for host in (
    Host("g4dn.xlarge", 4, 16, 125, "t4", 1, 0.526),
    Host("g4dn.2xlarge", 8, 32, 225, "t4", 1, 0.752),
    Host("g4dn.4xlarge", 16, 64, 225, "t4", 1, 1.204),
    Host("g4dn.8xlarge", 32, 128, 900, "t4", 1, 2.176),
    Host("g4dn.12xlarge", 48, 192, 900, "t4", 4, 3.912),
    Host("g4dn.16xlarge", 64, 256, 900, "t4", 1, 4.352),
    Host("g5.xlarge", 4, 16, 250, "a10g", 1, 1.006),
    Host("g5.2xlarge", 8, 32, 450, "a10g", 1, 1.212),
    Host("g5.4xlarge", 16, 64, 600, "a10g", 1, 1.624),
    Host("g5.8xlarge", 32, 128, 900, "a10g", 1, 2.448),
    Host("g5.12xlarge", 48, 192, 3800, "a10g", 4, 5.672),
    Host("g5.16xlarge", 64, 256, 1900, "a10g", 1, 4.096),
    Host("g5.24xlarge", 96, 384, 3800, "a10g", 4, 8.144),
    Host("g5.48xlarge", 192, 768, 7600, "a10g", 8, 16.288),
    Host("g6.xlarge", 4, 16, 250, "l4", 1, 0.8048),
    Host("g6.2xlarge", 8, 32, 450, "l4", 1, 0.9776),
    Host("g6.4xlarge", 16, 64, 600, "l4", 1, 1.3232),
    Host("g6.8xlarge", 32, 128, 900, "l4", 1, 2.0144),
    Host("g6.12xlarge", 48, 192, 3760, "l4", 4, 4.6016),
    Host("g6.16xlarge", 64, 256, 1880, "l4", 1, 3.3968),
    Host("g6.24xlarge", 96, 384, 3760, "l4", 4, 6.6752),
    Host("g6.48xlarge", 192, 768, 7520, "l4", 8, 13.3504),
    Host("g6e.xlarge", 4, 32, 250, "l40s", 1, 1.861),
    Host("g6e.2xlarge", 8, 64, 450, "l40s", 1, 2.24208),
    Host("g6e.4xlarge", 16, 128, 600, "l40s", 1, 3.00424),
    Host("g6e.8xlarge", 32, 256, 900, "l40s", 1, 4.52856),
    Host("g6e.12xlarge", 48, 384, 3800, "l40s", 4, 10.49264),
    Host("g6e.16xlarge", 64, 512, 1900, "l40s", 1, 7.57656),
    Host("g6e.24xlarge", 96, 768, 3800, "l40s", 4, 15.06559),
    Host("g6e.48xlarge", 192, 1536, 7600, "l40s", 8, 30.13118),
    Host("p4d.24xlarge", 96, 1152, 8000, "a100", 8, 21.957642),
    # 8 x 3.84 TB NVMe SSD (aws.amazon.com/ec2/instance-types/p5): 30,720 GB, not 8 x 3,800
    Host("p5.48xlarge", 192, 2048, 30720, "h100", 8, 55.04),
)}
INSTANCE_SOURCE = ("AWS's published instance sizes (aws.amazon.com/ec2/instance-types: vCPUs, memory in GiB, "
                   "instance-store NVMe in GB, GPUs)")
PRICE_SOURCE = ("AWS EC2 on-demand list price, us-east-1, Linux (AWS price list: g4dn, g5, p4d and p5 as published "
                "2026-09-25, g6 and g6e at their listed rates); check aws.amazon.com/ec2/pricing/on-demand")


@dataclass(frozen=True)
class Storage:
    """Where the betons are read from: its rate in order (the pre-read before epoch 0) and in the large random
    reads of an uncached epoch (FFCV reading pages of samples in shuffled order), in MB/s."""
    name: str
    sequential_mb_s: float
    random_mb_s: float
    source: str


MIB = 2**20 / 1e6
EBS_SOURCE = ("AWS EC2 API (CreateVolume / EbsBlockDevice): gp3 baseline 3,000 IOPS and 125 MiB/s, provisionable to "
              "16,000 IOPS and 1,000 MiB/s; reads of 256 KiB and more are bound by the throughput")


def ebs_gp3(mib_s: float = 125) -> Storage:
    """An EBS gp3 volume at ``mib_s`` of throughput (125, its baseline, to 1,000): where the betons outlive a spot
    instance (docs/deploying.md, "Where betons belong")."""
    return Storage(f"EBS gp3 at {mib_s:g} MiB/s", mib_s * MIB, mib_s * MIB, EBS_SOURCE)


def default_instance(gpu: str) -> Host:
    """The first instance of the table with this GPU: the smallest, whose price per GPU-hour plans use by default."""
    return next(host for host in INSTANCES.values() if host.gpu == gpu)


def instance_price_per_gpu(host: Host, gpus: int) -> float:
    """What each GPU of a run costs an hour: the whole instance's price, however many of its GPUs train."""
    return host.price_per_hour / gpus


def price_per_gpu_hour(gpu: str) -> float:
    host = default_instance(gpu)
    return instance_price_per_gpu(host, host.gpus)
