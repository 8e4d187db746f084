"""``imagenet-kit bench report``: the measured-results table of docs/results.md, generated from bench/results/*.jsonl.

Every JSON line the benches appended becomes one row naming what was measured, the value, the hardware,
the command and the date, so the generated table never shows a figure that no result file backs. The table lives
between two HTML comments in docs/results.md; only that block is rewritten, and rewriting is idempotent.
"""
from __future__ import annotations

from pathlib import Path

import click

from imagenet_kit.bench.summary import headlines_markdown, profiles_markdown, seed_groups, seeds_markdown
from imagenet_kit.errors import KitError
from imagenet_kit.models.architecture import architecture_label
from imagenet_kit.progress import console
from imagenet_kit.result_rows import KINDS, RESULTS_DIR, read_results

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
GPU_PENDING = "GPU figures are pending: no GPU has been available to the kit's sessions yet."


class ReportError(KitError, ValueError):
    pass


def load_rows(results_dir: Path) -> list[dict]:
    """Every result line of every RESULTS_DIR/*.jsonl, grouped by kind in KINDS order, in file order within one."""
    rows = [{**row, "_where": f"{path}:{number}"} for path, number, row in read_results(results_dir)]
    return sorted(rows, key=lambda r: KINDS.index(r["kind"]))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _train_row(r: dict) -> tuple[str, str, str]:
    setup = (f"{architecture_label(r)}, {r['res']} px, batch {r['batch']}, {r['precision']}"
             f"{', channels_last' if r['channels_last'] else ''}{', torch.compile' if r['compile'] else ''}")
    if r["mode"] == "synthetic":
        what = "training step, kit, synthetic batches on the device"
        value = ("no plain-PyTorch reference (not a torchvision model)" if r["kit_overhead_pct"] is None
                 else f"kit overhead {r['kit_overhead_pct']:+.1f}% vs plain PyTorch")
    elif r["mode"] == "real":
        what = f"training step, kit, FFCV loader on {Path(r['beton']).name}"
        value = f"data-path overhead {r['data_overhead_pct']:+.1f}% vs synthetic"
    else:
        what, value = "training step, plain PyTorch reference (torchvision model, SGD, autocast)", ""
    memory = (f"peak GPU memory {r['peak_mem_mb']:,.0f} MB" if r["device_type"] == "cuda"
              else f"peak process RSS {r['peak_mem_mb']:,.0f} MB")
    value = "; ".join(v for v in (f"{r['img_per_s']:,.1f} img/s", value, memory) if v)
    hardware = r["device"] + (f" ×{r['gpus']}" if r["gpus"] > 1 else "")
    if r["device_type"] != "cuda":
        hardware += f", {_count(r['versions']['torch_threads'], 'thread')}"
    return f"{what}: {setup}", value, hardware


def _data_row(r: dict) -> tuple[str, str, str]:
    loader = ("PIL + torchvision DataLoader (baseline)" if r["loader"] == "pil-torchvision"
              else f"kit FFCV loader, beton max side {r['max_res']}")
    what = f"data loading, {loader}: {r['res']} px crops, batch {r['batch_size']}, {r['n_images']} images"
    value = f"{r['img_per_s']:,.0f} img/s"
    if r.get("ratio_vs_baseline") is not None:  # gpu-evidence times FFCV's loader alone, with no baseline
        value += f" ({r['ratio_vs_baseline']:.2f}× the baseline)"
    return what, value, f"{r['cpu']}, {_count(r['workers'], 'worker')}"


def _convert_row(r: dict) -> tuple[str, str, str]:
    writer = "kit convert (decode once)" if r["writer"] == "kit" else "FFCV writer as write_imagenet.py drives it"
    copies = f" ({r['n_images'] // r['copies']} files x{r['copies']})" if r.get("copies", 1) > 1 else ""
    what = (f"conversion, {writer}: {r['n_images']} images{copies}, max side {r['max_res']}, "
            f"{r['compress_prob']:g} JPEG at quality {r['jpeg_quality']}")
    value = (f"{r['img_per_s']:,.0f} img/s ({r['time_vs_ffcv']:.2f}× FFCV's time), "
             f"{r['bytes_per_image'] / 1e3:,.1f} kB per image")
    return what, value, f"{r['cpu']}, {_count(r['workers'], 'worker')}"


def _demo_row(r: dict) -> tuple[str, str, str]:
    what = f"demo latency, {r['arch']} ({r['backend']}), {r['res']} px, batch 1"
    value = f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms"
    # the cpu field, not device: the demo predicts on CPU even on a machine with a GPU
    return what, value, f"{r['cpu']}, {_count(r['torch_threads'], 'thread')}"


def _accuracy_row(r: dict) -> tuple[str, str, str]:
    res = "→".join(str(x) for x in r["train_res"])
    arch = architecture_label(r)
    # rows from before train.crop and train.val_crop_ratio existed used these defaults
    crops = ", random-square crops" if r.get("crop", "random_resized") == "random_square" else ""
    ratio = r.get("val_crop_ratio", 0.875)
    eval_crop = {0.875: "", 1.0: " (whole shorter side)"}.get(ratio, f" ({ratio:g} of the shorter side)")
    lookahead = f" + lookahead k={r['lookahead_k']}" if r.get("lookahead_k") else ""
    what = (f"val top-1 / top-5 after {r['epochs']} epochs: {arch} on {r['data']}, {res} px train{crops}, "
            f"{r['val_res']} px eval{eval_crop}{' + flip TTA' if r['flip_tta'] else ''}, batch {r['batch']}, "
            # rows from before AdamW were SGD with the LR given per 256 images
            f"{r.get('optimizer', 'sgd')}{lookahead} {r['schedule']} LR {r['lr']} per {r.get('lr_batch', 256)} images")
    value = (f"{100 * r['top1']:.2f}% / {100 * r['top5']:.2f}% (best {100 * r['best_top1']:.2f}% at epoch "
             f"{r['best_epoch']}); {r['train_minutes']:.0f} min of training")
    hardware = r["device"] + (f" ×{r['world_size']}" if r["world_size"] > 1 else "")
    precision = f", {r['precision']}" if "precision" in r else ""
    return what, value, hardware + f", {_count(r['torch_threads'], 'thread')}{precision}"


def _image_row(r: dict) -> tuple[str, str, str]:
    what = f"container image from the Dockerfile on {r['base']} ({r['builder']}), steps {r['checks']}"
    cache = "from scratch" if not r["cached_steps"] else f"{r['cached_steps']} steps cached"
    value = f"{r['size_bytes'] / 1e9:.2f} GB, built in {r['build_s'] / 60:.1f} min ({cache})"
    return what, value, f"{r['cpu']}, {_count(r['cpu_count'], 'core')}"


def _memory_row(r: dict) -> tuple[str, str, str]:
    what = (f"peak memory, {r['phase']}: {architecture_label(r)}, {r['res']} px, batch {r['batch']}, {r['precision']}"
            f"{' + flip TTA' if r['flip_tta'] else ''} (the {r['profile']} profile's)")
    if r["memory_kind"] == "process_max_rss":
        value = f"peak process RSS {r['reserved_mb']:,.0f} MB (CPU)"
    else:
        value = (f"{r['reserved_mb']:,.0f} MB reserved, {r['allocated_mb']:,.0f} MB allocated of "
                 f"{r['device_total_mb']:,.0f} MB" if r["fits"] else f"out of memory at {r['reserved_mb']:,.0f} MB")
    return what, value, r["device"]


def _check_row(r: dict) -> tuple[str, str, str]:
    low, high = r["resolutions"]
    what = (f"check: 3 epochs at {low}→{high} px, {architecture_label(r)}, batch {r['batch']}, "
            "SIGTERM mid-epoch twice, "
            f"resumed in {r['precisions'][0]} then {r['precisions'][1]}")
    value = (f"{'passed' if r['passed'] else 'FAILED'}: stopped at (epoch, step) {r['stopped_at']} (expected "
             f"{r['expected']}), {r['epochs_logged']} epochs logged")
    return what, value, r["device"]


def _preflight_row(r: dict) -> tuple[str, str, str]:
    m, s, d = r["memory"], r["storage"], r["decoding"]
    profile = f" ({r['profile']} profile)" if r["profile"] else ""
    what = f"preflight of recipe {r['recipe']}{profile}, {r['arch']}, batch {m['batch']} at {m['train_res']} px"
    speeds = "; ".join(f"{res} px {v['real']:,.0f} img/s real vs {v['synthetic']:,.0f} synthetic"
                       for res, v in r["speed"]["img_per_s"].items())
    memory = "out of memory" if m["train_mb"] is None else f"{m['train_mb']:,.0f} MB"
    value = (f"{'GO' if r['go'] else 'NO GO'}: training {memory} of {m['limit_mb']:,.0f}; {speeds}; "
             f"{d['img_per_s_per_worker']:,.0f} img/s per decoding worker; betons {s['betons_gb']:,.1f} GB "
             f"{'fit' if s['fits_page_cache'] else 'do not fit'} the page cache; disk {s['sequential_mb_s']:,.0f} MB/s "
             f"in order, {s['random_mb_s']:,.0f} MB/s random; resume {'passed' if r['resume']['passed'] else 'FAILED'}")
    return what, value, r["device"] + (f" ({r['instance']})" if r.get("instance") else "")


ROW_FORMATS = {"accuracy": _accuracy_row, "train": _train_row, "memory": _memory_row, "check": _check_row,
               "preflight": _preflight_row,
               "data": _data_row, "convert": _convert_row, "demo": _demo_row, "image": _image_row}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _command(r: dict) -> str:
    """The command, and the commit it ran at where the line records one: recipes change, so
    `--recipe imagenette` alone would not say which settings made an old row."""
    cell = f"`{_cell(r['command'])}`"
    if r.get("git"):
        commit, dirty = r["git"].removesuffix("-dirty"), r["git"].endswith("-dirty")
        cell += f" at {commit[:7]}{' + uncommitted changes' if dirty else ''}"
    return cell


def results_markdown(rows: list[dict]) -> str:
    """The generated block: a note on where it comes from, the table, and the GPU-pending line if it applies."""
    lines = ["<!-- generated by `imagenet-kit bench report` from bench/results/*.jsonl: edit those, not this -->",
             "", "| what | value | hardware | command | date |", "|---|---|---|---|---|"]
    for r in rows:
        try:
            what, value, hardware = ROW_FORMATS[r["kind"]](r)
        except KeyError as err:
            raise ReportError(f"{r['_where']}: a {r['kind']} row needs the field {err}") from None
        lines.append(f"| {_cell(what)} | {_cell(value)} | {_cell(hardware)} | {_command(r)} | {r['date'][:10]} |")
    if not rows:
        lines.append("| no measurements yet: run `imagenet-kit bench ...` | | | | |")
    if not any(r.get("device_type") == "cuda" for r in rows):
        lines += ["", GPU_PENDING]
    return "\n".join(lines)


def replace_block(text: str, block: str, name: str = "results") -> str:
    """TEXT with what lies between the ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers replaced by BLOCK."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReportError(f"expected one '{begin}' followed by one '{end}'")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{block}\n{end}{tail}"


RESULTS_DOC = Path("docs/results.md")
# The other generated blocks, beside the results doc (its folder's parent is the checkout): file -> block -> maker.
GENERATED = {"README.md": {"headlines": lambda rows: headlines_markdown(rows, _accuracy_row, _command)},
             "docs/results.md": {"seeds": lambda rows: seeds_markdown(seed_groups(rows, _accuracy_row), _command)},
             "docs/training.md": {"profiles": lambda rows: profiles_markdown(rows, _command)}}


def update_results_doc(doc: Path, results_dir: Path) -> tuple[bool, int]:
    """Rewrite the doc's results block from RESULTS_DIR, and, in a checkout, the other generated blocks; returns
    (whether a file changed, rows)."""
    rows = load_rows(results_dir)
    changed = _rewrite(Path(doc), {"results": results_markdown}, rows)
    root = Path(doc).resolve().parent.parent
    for name, blocks in GENERATED.items():
        if (root / name).is_file() and all(f"<!-- {b}:begin -->" in (root / name).read_text() for b in blocks):
            changed |= _rewrite(root / name, blocks, rows)
    return changed, len(rows)


def _rewrite(path: Path, blocks: dict, rows: list[dict]) -> bool:
    text = path.read_text()
    new = text
    for block, make in blocks.items():
        new = replace_block(new, make(rows), block)
    if new != text:
        path.write_text(new)
    return new != text


@click.command("report")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
@click.option("--doc", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=RESULTS_DOC,
              show_default=True, help="the page whose results block is rewritten (and, beside it in a checkout, "
                                      "the README's headlines and the seeds and profiles tables)")
def report_command(results_dir: Path, doc: Path) -> None:
    """Regenerate docs/results.md's measured-results table, and the tables generated from rows beside it."""
    changed, count = update_results_doc(doc, results_dir)
    console.print(f"{doc}: {count} measurements, {'tables rewritten' if changed else 'already up to date'}")
