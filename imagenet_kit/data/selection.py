"""Which classes and images a recipe's ``subset`` takes: the same ones from every download layout.

The choice is made on what a scan lists (``Source``), before any image is read, so from an archive only the chosen
members are ever decompressed. It depends on the seed, the sorted WNIDs and each image's own name with the layout's
decorations taken off (``image_key``: ``n01440764_10026`` whether it came as ``train/n01440764/n01440764_10026.JPEG``,
a member of ``n01440764.tar`` or ``n01440764_10026_n01440764.JPEG`` in a Hugging Face shard), never on paths or
listing order: the same seed gives the same images on every machine and layout.
"""
from __future__ import annotations

import random
from pathlib import Path, PurePosixPath

from imagenet_kit.config import SubsetConfig
from imagenet_kit.data.gzip_shards import WNID
from imagenet_kit.data.sources import Source
from imagenet_kit.errors import ConfigError
from imagenet_kit.progress import console


def image_key(item) -> str:
    """An image's name without its folder, archive, extension or a Hugging Face ``_<wnid>`` suffix."""
    name = PurePosixPath(str(item).rsplit(":", 1)[-1]).stem  # archive members print as ARCHIVE:member
    head, _, tail = name.rpartition("_")
    return head if head and WNID.fullmatch(tail) else name


def _wnids_from_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"subset.classes={path}: give a number of classes or a file of WNIDs (one per line)")
    wnids = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(dict.fromkeys(w for w in wnids if w))


def choose_classes(subset: SubsetConfig, available: list[str], root) -> list[str]:
    """The subset's WNIDs, sorted: N drawn by the seed from ``available``, or those of the file."""
    if subset.classes.isdigit():
        count = int(subset.classes)
        if count == 0:
            raise ConfigError("subset.classes 0: give a number of classes from 1, a file of WNIDs, or '' for all")
        if count >= len(available):  # the mini recipe on a root that is already that small (Imagenette, say)
            console.print(f"subset: subset.classes {count}, and {root} has {len(available)}: taking them all")
            return sorted(available)
        return sorted(random.Random(subset.seed).sample(sorted(available), count))
    wanted = _wnids_from_file(Path(subset.classes))
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ConfigError(f"subset.classes={subset.classes}: {len(missing)} of its WNIDs are not classes of {root} "
                          f"(the first: {', '.join(missing[:3])})")
    return wanted


def take_subset(source: Source, classes: list[str], per_class: int, seed: int) -> Source:
    """``source`` narrowed to ``classes`` (relabelled in that order) and ``per_class`` images of each drawn by
    ``seed`` (0: all); what it leaves out is counted in ``source.subset``, not listed as skipped."""
    index = {wnid: i for i, wnid in enumerate(classes)}
    taken = Source(source.root, list(classes), skipped=source.skipped, ignored=source.ignored,
                   empty_classes=[c for c in source.empty_classes if c in index], split=source.split)
    by_class: dict[int, list] = {i: [] for i in range(len(classes))}
    for item, label in source.items:
        if source.classes[label] in index:
            by_class[index[source.classes[label]]].append(item)
    for label, items in by_class.items():
        items.sort(key=image_key)
        if per_class and len(items) > per_class:
            items = sorted(random.Random(f"{seed}:{classes[label]}").sample(items, per_class), key=image_key)
        taken.items += [(item, label) for item in items]
    taken.subset = {"seed": seed, "per_class": per_class, "classes": list(classes),
                    "left_out": len(source.items) - len(taken.items)}
    return taken
