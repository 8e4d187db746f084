"""Does a recipe's data fit a host? Beton size, page cache, disk, and whether CPU decoding or the GPU bounds img/s.

Every number comes from a measured row: bytes per image from ``bench convert`` (the kit's writer, the recipe's
max_res, compress_prob and JPEG quality), decoding speed per core from ``bench data`` (FFCV's loader at the
recipe's max_res and compress_prob). Without such a row the verdict says which command measures it.
The instances are ``catalog.INSTANCES``; ``--host local`` reads this machine instead.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagenet_kit.config import RunConfig
from imagenet_kit.data.workers import core_share, host_cores
from imagenet_kit.plan.catalog import INSTANCES, Host, Storage, ebs_gp3
from imagenet_kit.plan.cold_data import storage_verdict
from imagenet_kit.result_rows import RESULTS_DIR, newest_rows

GIB = 2 ** 30
# What the page cache cannot have: the OS, and per training process its model, optimizer and FFCV's pinned batch
# buffers. An allowance, not a measurement.
BASE_HEADROOM_GIB, HEADROOM_PER_GPU_GIB = 4, 4


def local_host(beton_dir: Path, gpu: str | None, price_per_hour: float | None) -> Host:
    """This machine: its cores, its RAM, the free disk where the betons go; the GPU as the caller resolved it."""
    where = Path(beton_dir).resolve()
    while not where.exists():
        where = where.parent
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = 0
    if gpu is not None:
        import torch

        gpus = max(torch.cuda.device_count(), 1)
    return Host("this machine", host_cores(), ram / GIB, shutil.disk_usage(where).free / 1e9, gpu, gpus,
                price_per_hour, disk_what=f"free on {where}")


def _settings(cfg: RunConfig) -> str:
    return f"{cfg.data.max_res}:{cfg.data.compress_prob:g}:{cfg.data.jpeg_quality}"


def _setting_key(max_res, compress_prob, jpeg_quality) -> tuple[int, float, int]:
    return int(max_res), float(compress_prob), int(jpeg_quality)


def measured_sizes(results_dir: Path) -> dict[tuple[int, float, int], tuple[dict, str]]:
    """The newest ``bench convert`` row of the kit's writer per (max_res, compress_prob, jpeg_quality)."""
    return newest_rows(results_dir, "convert",
                       lambda row: _setting_key(row["max_res"], row["compress_prob"], row["jpeg_quality"]),
                       lambda row: row.get("writer") == "kit")


def measured_bytes_per_image(cfg: RunConfig, results_dir: Path) -> tuple[float, str] | None:
    """The kit writer's bytes per image at the recipe's data settings, newest ``bench convert`` row."""
    d = cfg.data
    found = measured_sizes(results_dir).get(_setting_key(d.max_res, d.compress_prob, d.jpeg_quality))
    if found is None:
        return None
    row, where = found
    return float(row["bytes_per_image"]), (f"{row['n_images']} images of {Path(row['src']).name}, "
                                           f"{row.get('date', 'undated')[:10]} ({where})")


def measured_decode_per_core(cfg: RunConfig, results_dir: Path) -> tuple[float, str] | None:
    """FFCV's train loader, images per second per core, on a beton of the recipe's max_res and compress_prob."""
    d = cfg.data
    found = newest_rows(results_dir, "data", lambda row: "newest",
                        lambda row: (row.get("loader") == "ffcv" and row.get("max_res") == d.max_res
                                     and row.get("compress_prob") is not None
                                     and float(row["compress_prob"]) == float(d.compress_prob))).get("newest")
    if found is None:
        return None
    row, where = found
    return float(row["img_per_s_per_core"]), (f"{row['cpu']}, {row['res']} px crops, {row['n_images']} images of "
                                              f"{Path(row['src']).name}, {row.get('date', 'undated')[:10]} ({where})")


def _convert_hint(cfg: RunConfig) -> str:
    return f"`imagenet-kit bench convert --settings {_settings(cfg)}`"


def _decode_hint(cfg: RunConfig) -> str:
    return (f"`imagenet-kit bench data --max-res {cfg.data.max_res} --compress-prob {cfg.data.compress_prob:g}` "
            f"(on a host like the target's)")


def check_fit(cfg: RunConfig, host: Host, gpus: int, images: int, val_images: int,
              results_dir: Path = RESULTS_DIR, storage: Storage | None = None) -> dict:
    """The verdicts for ``cfg``'s betons (train + val) and decoding on ``host`` training on ``gpus`` GPUs; the betons
    are read from ``storage`` (default: an EBS gp3 volume at its baseline; a preflight row of the host wins)."""
    fit = {"host": host.name, "vcpus": host.vcpus, "ram_gib": host.ram_gib, "disk_gb": host.disk_gb,
           "disk_what": host.disk_what, "settings": _settings(cfg), "lines": [], "problems": []}
    size = measured_bytes_per_image(cfg, results_dir)
    if size is None:
        fit["lines"].append(f"beton size: no measured row at {_settings(cfg)}; measure it with {_convert_hint(cfg)}")
    else:
        _size_verdicts(fit, cfg, host, gpus, images + val_images, *size, results_dir)
    storage_verdict(fit, host, storage or ebs_gp3(), results_dir)
    _decode_verdict(fit, cfg, host, gpus, results_dir)
    return fit


def _size_verdicts(fit: dict, cfg: RunConfig, host: Host, gpus: int, images: int, per_image: float, source: str,
                   results_dir: Path) -> None:
    beton_gb = per_image * images / 1e9
    cache_gib = _cache_bytes(host, gpus) / GIB
    fit.update(beton_gb=beton_gb, bytes_per_image=per_image, page_cache_gib=cache_gib,
               fits_disk=beton_gb <= host.disk_gb, fits_ram=beton_gb * 1e9 / GIB <= cache_gib)
    fit["in_memory"] = fit["fits_ram"]
    fit["lines"].append(f"betons: {beton_gb:,.1f} GB for {images:,} images at {per_image / 1e3:,.1f} kB each "
                        f"(max side {cfg.data.max_res}, {cfg.data.compress_prob:.0%} JPEG at quality "
                        f"{cfg.data.jpeg_quality}; measured on {source})")
    ram = (f"{host.ram_gib:,.0f} GiB RAM leaves ~{cache_gib:,.0f} GiB of page cache ({BASE_HEADROOM_GIB} GiB + "
           f"{HEADROOM_PER_GPU_GIB} GiB per training process kept back)")
    if fit["fits_ram"]:
        fit["lines"].append(f"page cache: fits ({ram}): in_memory: true, random order"
                            + ("" if cfg.data.in_memory else " (the recipe sets in_memory: false; true is faster)"))
    elif gpus > 1:  # data/prepare.py refuses in_memory: false under torchrun
        fit["lines"].append(f"page cache: does NOT fit ({ram}); with {gpus} training processes data.in_memory=false "
                            "is no way out: FFCV's distributed loader would make each process allocate about the "
                            "whole beton")
        fit["problems"].append("the betons do not fit the page cache, and several processes cannot read them uncached")
    else:
        fit["lines"].append(f"page cache: does NOT fit ({ram}): set data.in_memory=false, which reads the beton "
                            "from disk in FFCV's QUASI_RANDOM order (one training process)")
        if cfg.data.in_memory:
            fit["problems"].append("the recipe's in_memory: true would thrash the page cache")
    disk = f"{host.disk_gb:,.0f} GB {host.disk_what}"
    if fit["fits_disk"]:
        fit["lines"].append(f"disk: fits ({disk})")
    else:
        fit["lines"].append(f"disk: does NOT fit ({disk})")
        fit["problems"].append(f"the betons ({beton_gb:,.0f} GB) do not fit the {disk}")
    if fit["problems"]:
        fit["lines"].append("what to change: " + _what_fits(cfg, host, gpus, images, results_dir))


def _cache_bytes(host: Host, gpus: int) -> float:
    return (host.ram_gib - BASE_HEADROOM_GIB - HEADROOM_PER_GPU_GIB * gpus) * GIB


def _cheapest_holding(nbytes: float, host: Host, gpus: int) -> Host | None:
    """The cheapest instance with this host's GPU model (and enough of them) whose page cache holds ``nbytes``."""
    fitting = [h for h in INSTANCES.values()
               if h.gpu == host.gpu and h.gpus >= gpus and _cache_bytes(h, gpus) >= nbytes]
    return min(fitting, key=lambda h: h.price_per_hour, default=None)


def _what_fits(cfg: RunConfig, host: Host, gpus: int, images: int, results_dir: Path) -> str:
    """Measured data settings whose betons fit this host, and the cheapest instance of its GPU holding them in RAM."""
    sizes = {key: float(row["bytes_per_image"]) * images for key, (row, _) in measured_sizes(results_dir).items()}
    cache = _cache_bytes(host, gpus)

    def described(key) -> str:
        m, p, q = key
        text = f"data.max_res={m} data.compress_prob={p:g} data.jpeg_quality={q} ({sizes[key] / 1e9:,.0f} GB"
        cheapest = _cheapest_holding(sizes[key], host, gpus) if sizes[key] > cache else None
        return text + (f"; in RAM on a {cheapest.name})" if cheapest else ")")

    in_ram = [k for k, b in sorted(sizes.items()) if b <= cache]
    # uncached betons are read by one training process only (data/prepare.py refuses them under torchrun)
    on_disk = [k for k, b in sorted(sizes.items()) if cache < b <= host.disk_gb * 1e9] if gpus == 1 else []
    advice = [f"measured settings that {how}: " + ", ".join(map(described, keys))
              for keys, how in ((in_ram, "fit in RAM"), (on_disk, "fit on disk only (in_memory: false)")) if keys]
    if gpus > 1:
        advice.append(f"or one training process (NPROC=1) with data.in_memory=false, on 1 of the {gpus} GPUs")
    if not advice:
        advice.append(f"smaller data settings ({_convert_hint(cfg)} with other settings measures them)")
    needed = sizes.get(_setting_key(cfg.data.max_res, cfg.data.compress_prob, cfg.data.jpeg_quality), 0.0)
    cheapest = _cheapest_holding(needed, host, gpus)
    advice.append(f"or, keeping these settings in RAM: {cheapest.name}" if cheapest
                  else f"no {host.gpu or 'GPU'} instance in the table holds these settings' betons in RAM")
    return "; ".join(advice)


def _decode_verdict(fit: dict, cfg: RunConfig, host: Host, gpus: int, results_dir: Path) -> None:
    per_core = measured_decode_per_core(cfg, results_dir)
    free = max(host.vcpus - gpus, 1)  # one core per training process runs its Python loop
    processes = max(gpus, 1)
    share = core_share(host.vcpus, processes)  # what the loaders lower data.workers to there (data/workers.py)
    workers = min(cfg.data.workers, share) if cfg.data.workers else share
    cores = min(free, workers * processes)
    fit["decode_cores"], fit["workers"] = cores, workers
    asked = "0 (all cores)" if cfg.data.workers == 0 else str(cfg.data.workers)
    lowered = f", lowered to {workers}" if cfg.data.workers != workers else ""
    fit["lines"].append(f"workers: data.workers {asked}{lowered} per training process ({host.vcpus} vCPUs, "
                        f"{processes} training process{'es' if processes > 1 else ''})")
    if per_core is None:
        fit["decode_img_per_s"] = None
        fit["lines"].append(f"CPU decoding: no measured row at max_res {cfg.data.max_res}, compress_prob "
                            f"{cfg.data.compress_prob:g}; measure it with {_decode_hint(cfg)}")
        return
    rate, source = per_core
    fit["decode_img_per_s"] = rate * cores
    used = "" if cores == free else f" ({workers} workers per process; {free} are free)"
    fit["lines"].append(f"CPU decoding: {rate:,.0f} img/s per core x {cores} cores{used} = {rate * cores:,.0f} img/s "
                        f"(measured on {source}; assumes the host's vCPUs decode as fast as that core and scale "
                        "linearly, optimistic where two vCPUs share a physical core)")
