"""``imagenet-kit verify``: a beton read back and checked against its report, its classes file and its source.

After hours of converting, a user needs to know that the beton holds what the source held. Checks, each naming
the records that fail it:

1. counts: records per class are the report's ``per_class_written``, and labels are class indices;
2. decoding: every record (or ``decode`` random ones) decodes: a JPEG record opens and decodes whole, a raw record
   holds height x width x 3 bytes;
3. with the source (``--source``, scanned as ``convert`` scans it, with the beton's own classes): the files the
   report does not list as skipped are, in order, the records; each record's label is its file's class; and
   ``sample`` random records match their file decoded and shrunk as conversion does, to a PSNR of at least
   ``PSNR_FLOOR`` dB. On the embedded sample's 200 val images, a JPEG record at quality 90 was 25-45 dB from its
   own file (the lowest at 48 px), the closest other image of the same size at most 18 dB; raw records are exact.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from PIL import Image

from imagenet_kit.data.convert import read_classes, scan_source
from imagenet_kit.data.sources import ConvertError, Source
from imagenet_kit.images import load_rgb
from imagenet_kit.progress import results

PSNR_FLOOR = 21.0
JPEG_MODE = 0  # FFCV's IMAGE_MODES: 0 JPEG, 1 raw pixels


@dataclass
class Verdict:
    records: int
    checked: dict = field(default_factory=dict)  # check -> how many records it covered
    problems: list[tuple[int | None, str]] = field(default_factory=list)  # (record or None, what)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, beton: Path) -> str:
        done = ", ".join(f"{what} {n:,}" for what, n in self.checked.items())
        if self.ok:
            return f"verify {beton}: OK, {self.records:,} records ({done})"
        named = "; ".join(f"record {i}: {what}" if i is not None else what for i, what in self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        problems = f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}"
        return f"verify {beton}: {problems} in {self.records:,} records ({done}): {named}{more}"


class BetonRecords:
    """The beton's metadata and, per record, its stored pixels."""

    def __init__(self, beton: Path):
        from ffcv.reader import Reader

        reader = Reader(str(beton))
        self.path, self.count = beton, int(reader.num_samples)
        self.images, self.labels = reader.metadata["f0"], reader.metadata["f1"].astype(np.int64)
        self.sizes = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist(), strict=True))

    def pixels(self, i: int) -> np.ndarray:
        """Record ``i`` as an HxWx3 uint8 array; raises ValueError when it cannot be decoded."""
        meta = self.images[i]
        ptr, height, width = int(meta["data_ptr"]), int(meta["height"]), int(meta["width"])
        with open(self.path, "rb") as handle:
            handle.seek(ptr)
            data = handle.read(self.sizes.get(ptr, 0))
        if int(meta["mode"]) == JPEG_MODE:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    array = np.asarray(image.convert("RGB"))
            except Exception as err:  # noqa: BLE001 - any decoding failure is the finding
                raise ValueError(f"its JPEG does not decode ({type(err).__name__}: {err})") from None
        elif len(data) != height * width * 3:
            raise ValueError(f"{len(data)} bytes of raw pixels, not {height} x {width} x 3")
        else:
            array = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
        if array.shape[:2] != (height, width):
            raise ValueError(f"decodes to {array.shape[1]}x{array.shape[0]}, its metadata says {width}x{height}")
        return array


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


def verify_beton(beton: Path, source: Source | None = None, sample: int = 16, decode: int | None = None,
                 seed: int = 0) -> Verdict:
    """Check ``beton`` (see the module's docstring); ``decode``: how many random records to decode (None: all)."""
    beton = Path(beton)
    report_path, classes_path = Path(f"{beton}.report.json"), Path(f"{beton}.classes.json")
    for needed in (beton, report_path, classes_path):
        if not needed.is_file():
            raise ConvertError(f"{needed} not found: verify reads a beton with the .report.json and .classes.json "
                               "that imagenet-kit convert writes beside it")
    report, classes = json.loads(report_path.read_text()), json.loads(classes_path.read_text())
    records, rng = BetonRecords(beton), random.Random(seed)
    verdict = Verdict(records.count)
    _check_counts(records, report, len(classes), verdict)
    order = range(records.count) if decode is None else rng.sample(range(records.count), min(decode, records.count))
    decoded = {}
    for i in order:
        try:
            decoded[i] = records.pixels(i)
        except ValueError as err:
            verdict.problems.append((i, str(err)))
    verdict.checked["decoded"] = len(order)
    if source is not None:
        _check_source(records, report, source, rng.sample(range(records.count), min(sample, records.count)),
                      decoded, verdict)
    return verdict


def _check_counts(records: BetonRecords, report: dict, num_classes: int, verdict: Verdict) -> None:
    labels = records.labels
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    verdict.problems += [(int(i), f"label {labels[i]} is not one of the {num_classes} classes") for i in outside]
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes).tolist()
    expected = report["per_class_written"]
    if counts != expected:
        differ = [f"class {c}: {n} records, the report says {e}" for c, (n, e) in
                  enumerate(zip(counts, expected, strict=False)) if n != e]
        verdict.problems.append((None, "records per class differ from the report (" + ", ".join(differ[:5]) + ")"))
    verdict.checked["counted"] = records.count


def _check_source(records: BetonRecords, report: dict, source: Source, sampled: list[int], decoded: dict,
                  verdict: Verdict) -> None:
    skipped = {s["path"] for s in report["skipped"]}
    written = [(path, label) for path, label in source.items if str(path) not in skipped]
    if len(written) != records.count:
        verdict.problems.append((None, f"the source has {len(written):,} files the report does not list as "
                                       f"skipped, the beton {records.count:,} records"))
        return
    wrong = [i for i, (_, label) in enumerate(written) if label != records.labels[i]]
    verdict.problems += [(i, f"label {records.labels[i]}, but {written[i][0]} is class {written[i][1]}")
                         for i in wrong]
    verdict.checked["labels checked"] = len(written)
    max_res = report["settings"]["max_res"]
    for i in sampled:
        stored = decoded.get(i)
        if stored is None:
            continue  # not decodable: already a finding
        expected = np.asarray(load_rgb(written[i][0], max_res))
        if expected.shape != stored.shape:
            verdict.problems.append((i, f"{stored.shape[1]}x{stored.shape[0]}, but {written[i][0]} shrinks to "
                                        f"{expected.shape[1]}x{expected.shape[0]}"))
        elif (quality := psnr(expected, stored)) < PSNR_FLOOR:
            verdict.problems.append((i, f"not the image of {written[i][0]} (PSNR {quality:.1f} dB < {PSNR_FLOOR})"))
    verdict.checked["compared with their files"] = len(sampled)


@click.command("verify")
@click.argument("beton", type=click.Path(path_type=Path))
@click.option("--source", type=click.Path(exists=True, path_type=Path), default=None,
              help="what the beton was converted from, as given to convert: check every label and compare records")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the source's val labels, as given to convert (flat val folders and the official val tar)")
@click.option("--sample", type=click.IntRange(min=0), default=16, show_default=True,
              help="random records compared with their source images")
def verify_command(beton, source, labels, sample):
    """Read BETON back: counts per class against its report, every record decodes, and with --source each label
    against its file's class and a sample of records against their files. Exits 1 on any mismatch."""
    scanned = None
    if source is not None:
        scanned = scan_source(source, labels, [c["wnid"] for c in read_classes(beton)])
    verdict = verify_beton(beton, scanned, sample)
    results.out(verdict.summary(beton))
    if not verdict.ok:
        raise SystemExit(1)
