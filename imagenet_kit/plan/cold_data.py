"""Cold data in the plan: how long the betons take to reach the page cache before epoch 0, and how fast an epoch can
go when they cannot stay there.

Betons that fit the page cache are read once, in order, before epoch 0 (``data/storage.py``'s pre-read): that read
is priced at the storage's sequential rate. Betons that do not fit are read from disk in every epoch: each epoch's
images per second is then at most the storage's random-read rate over the bytes of an image, and the plan says so
(ffcv-imagenet#11: 45-minute epochs on uncached data). The storage is an EBS gp3 volume at the throughput given
(``catalog.ebs_gp3``), unless ``imagenet-kit preflight`` measured this instance's disk: then its row.
"""
from __future__ import annotations

from pathlib import Path

from imagenet_kit.plan.catalog import Host, Storage
from imagenet_kit.result_rows import newest_rows


def measured_storage(host: Host, results_dir: Path) -> Storage | None:
    """The disk that `imagenet-kit preflight --instance HOST` measured under the betons, newest row."""
    found = newest_rows(results_dir, "preflight", lambda row: row["instance"],
                        lambda row: row.get("instance") == host.name).get(host.name)
    if found is None:
        return None
    row, where = found
    disk = row["storage"]
    return Storage(f"the disk preflight measured on {host.name}", disk["sequential_mb_s"], disk["random_mb_s"],
                   f"imagenet-kit preflight on {row['device']}, {row['date'][:10]} ({where})")


def storage_verdict(fit: dict, host: Host, storage: Storage, results_dir: Path) -> None:
    """Add to ``fit`` (after its size verdicts) the first read's seconds or the disk's bound on an uncached epoch."""
    storage = measured_storage(host, results_dir) or storage
    fit["storage"] = {"name": storage.name, "sequential_mb_s": storage.sequential_mb_s,
                      "random_mb_s": storage.random_mb_s, "source": storage.source}
    fit["first_read_s"], fit["disk_img_per_s"] = None, None
    if "fits_ram" not in fit:  # no measured beton size: nothing to price
        return
    beton_bytes = fit["beton_gb"] * 1e9
    if fit["fits_ram"]:
        fit["first_read_s"] = beton_bytes / (storage.sequential_mb_s * 1e6)
        fit["lines"].append(f"first read: {fit['beton_gb']:,.1f} GB of betons in order from {storage.name} before "
                            f"epoch 0, {fit['first_read_s'] / 60:,.1f} min (the run's pre-read; source: "
                            f"{storage.source})")
    else:
        fit["disk_img_per_s"] = storage.random_mb_s * 1e6 / fit["bytes_per_image"]
        fit["lines"].append(f"uncached epochs: every epoch reads its images from {storage.name} at "
                            f"{storage.random_mb_s:,.0f} MB/s, at most {fit['disk_img_per_s']:,.0f} img/s at "
                            f"{fit['bytes_per_image'] / 1e3:,.1f} kB per image (source: {storage.source})")
