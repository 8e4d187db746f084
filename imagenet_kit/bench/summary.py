"""What ``bench report`` generates besides the table of every row, each from committed rows only: accuracy over seeds
(mean ± std, n) for docs/results.md, the GPU profiles' differences for docs/training.md, and the README's headline
results. An accuracy the kit claims is a mean over seeds with its spread, or says it is one run."""
from __future__ import annotations

import re
import statistics

from imagenet_kit.models.architecture import architecture_label
from imagenet_kit.result_rows import PROFILES, arm_summary

PROFILE_ORDER = ("reference", "jpeg-betons", "batch-32", "fp32", "fp16")
CLAIM_SEEDS = 3  # a headline accuracy is a mean ± std over at least this many seeds


def _clean(r: dict) -> bool:
    git = r.get("git") or r.get("versions", {}).get("git", "")
    return bool(git) and not git.endswith(("-dirty", "unknown"))


def _group_name(r: dict) -> str | None:
    """Which seeds a row's run is one of: an LR sweep's rule and factor, or runs named <name>-s<seed>."""
    if "sweep" in r:
        return f"bench lr-sweep --recipe {r['sweep']['recipe']}: rule {r['sweep']['rule']} x{r['sweep']['factor']}"
    if PROFILES in r:
        return None  # bench profiles' arms have a table of their own
    match = re.fullmatch(r"(.+)-s\d+", r["run"])
    return match.group(1) if match else None


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return f"{100 * mean:.2f}%" + ("" if std is None else f" ± {100 * std:.2f}")


def seed_groups(rows: list[dict], describe) -> list[dict]:
    """Accuracy rows of one setting run with several seeds: rows share a group name, the settings ``describe``
    words them by and the device; each group with its rows, newest first within the group."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        name = _group_name(r) if r["kind"] == "accuracy" and r.get("top1") is not None else None
        if name is None:
            continue
        what = describe(r)[0]
        if "sweep" in r:  # each seed's range test picks its own LR: the rule is the setting
            what = re.sub(r"LR [\d.e+-]+ per", "LR (each seed's range-test pick) per", what)
        groups.setdefault((name, what, r["device"]), []).append(r)
    return [{"name": name, "what": what, "device": device, "rows": found}
            for (name, what, device), found in groups.items() if len(found) > 1]


def seeds_markdown(groups: list[dict], command) -> str:
    lines = ["| runs | what | top-1 mean ± std | top-5 mean ± std | n | hardware | command |",
             "|---|---|---|---|---|---|---|"]
    for g in groups:
        rows = g["rows"]
        lines.append(f"| {g['name']} | {g['what']} | {_spread([r['top1'] for r in rows])} | "
                     f"{_spread([r['top5'] for r in rows])} | {len(rows)} | {g['device']} | {command(rows[0])} |")
    if len(lines) == 2:
        lines.append("| none yet: run a recipe at several seeds (`--set train.seed=N`, `--name NAME-sN`) | | | | | | |")
    return "\n".join(lines)


def profiles_markdown(rows: list[dict], command) -> str:
    """bench profiles' arms: top-1 mean ± std, n, and each arm's difference from the reference arm."""
    profile = [r for r in rows if r["kind"] == "accuracy" and PROFILES in r and r.get("top1") is not None]
    if not profile:
        return "No `bench profiles` rows yet: `imagenet-kit bench profiles --data imagenette2`."
    lines = ["| arm | what it changes | top-1 mean ± std | n | vs reference |", "|---|---|---|---|---|"]
    for s in arm_summary(profile, PROFILE_ORDER):
        std = "" if s["std"] is None else f" ± {100 * s['std']:.2f}"
        delta = "" if s["delta"] is None else f"{100 * s['delta']:+.2f} points" + _against_spread(s)
        lines.append(f"| {s['arm']} | {s['changes']} | {100 * s['mean']:.2f}%{std} | {s['n']} | {delta} |")
    first = profile[0]
    lines += ["", f"Each arm's seeds {sorted({r[PROFILES]['seed'] for r in profile})}; {first['device']}, "
                  f"{first['torch_threads']} threads; {command(first)}."]
    return "\n".join(lines)


def _against_spread(arm: dict) -> str:
    if arm["spread"] is None:
        return " (one seed each: no spread to judge it by)"
    if arm["within_spread"]:
        return " (within the spread)"
    return f" (beyond the spread, {100 * arm['spread']:.2f})"


def _newest(rows: list[dict], keep) -> dict | None:
    found = [r for r in rows if _clean(r) and keep(r)]
    return max(found, key=lambda r: r["date"]) if found else None


def headlines_markdown(rows: list[dict], describe, command) -> str:
    """The README's results: the newest clean-tree rows of each headline, else what measures it."""
    lines = ["| what | value | hardware | command |", "|---|---|---|---|"]
    for label, value, hardware, cmd in _headlines(rows, describe, command):
        lines.append(f"| {label} | {value} | {hardware} | {cmd} |")
    return "\n".join(lines)


def _headlines(rows: list[dict], describe, command):
    groups = {g["name"]: g for g in seed_groups([r for r in rows if _clean(r)], describe)}
    for name, label in (("sample", "the embedded sample (`make mini`), val top-1 / top-5"),
                        ("imagenette", "Imagenette, the `imagenette` recipe, val top-1 / top-5")):
        g = groups.get(name)
        if g is None or len(g["rows"]) < CLAIM_SEEDS:
            yield label, _too_few_seeds(g), "", f"`imagenet-kit run --recipe {name} --name {name}-s0`"
            continue
        minutes = statistics.mean(r["train_minutes"] for r in g["rows"])
        yield (label, f"{_spread([r['top1'] for r in g['rows']])} / {_spread([r['top5'] for r in g['rows']])} "
                      f"(mean ± std, {len(g['rows'])} seeds); {minutes:.0f} min of training each",
               f"{g['device']}, {g['rows'][0].get('precision', '')}", command(g["rows"][0]))
    yield from _bench_headlines(rows, command)


def _too_few_seeds(group: dict | None) -> str:
    if group is None:
        return f"not measured at {CLAIM_SEEDS} seeds yet"
    runs = ", ".join(f"{100 * r['top1']:.2f}%" for r in group["rows"])
    return f"{len(group['rows'])} of {CLAIM_SEEDS} seeds run so far: {runs} top-1 (one run each)"


def _bench_headlines(rows: list[dict], command):
    kit = _newest(rows, lambda r: r["kind"] == "convert" and r["writer"] == "kit" and r["max_res"] == 500)
    ffcv = _newest(rows, lambda r: r["kind"] == "convert" and r["writer"] == "ffcv" and r["max_res"] == 500)
    if kit and ffcv:
        yield ("conversion, kit vs FFCV's writer (500 px, 50% JPEG)",
               f"{kit['img_per_s']:,.0f} vs {ffcv['img_per_s']:,.0f} img/s ({kit['time_vs_ffcv']:.2f}× FFCV's time), "
               f"{kit['bytes_per_image'] / 1e3:,.1f} kB per image", f"{kit['cpu']}, {kit['workers']} workers",
               command(kit))
    data = _newest(rows, lambda r: r["kind"] == "data" and r["loader"] == "ffcv" and r["max_res"] == 500
                   and r.get("ratio_vs_baseline") is not None)
    if data:
        yield (f"data loading, kit's FFCV loader vs PIL + DataLoader ({data['res']} px crops of 500 px, 50% JPEG)",
               f"{data['img_per_s']:,.0f} img/s, {data['ratio_vs_baseline']:.2f}× the baseline",
               f"{data['cpu']}, {data['workers']} worker(s)", command(data))
    step = _newest(rows, lambda r: r["kind"] == "train" and r["mode"] == "synthetic" and r["device_type"] == "cpu"
                   and r["kit_overhead_pct"] is not None)
    if step:
        yield (f"training step, kit vs plain PyTorch ({architecture_label(step)}, {step['res']} px, batch "
               f"{step['batch']}, {step['precision']}, {step['steps']} timed steps)",
               f"{step['img_per_s']:,.1f} img/s, {step['kit_overhead_pct']:+.1f}% vs plain PyTorch",
               f"{step['device']}, {step['versions']['torch_threads']} threads", command(step))
    yield from _serving_headlines(rows, command)


def _serving_headlines(rows: list[dict], command):
    demo = _newest(rows, lambda r: r["kind"] == "demo")
    if demo:
        yield (f"demo latency, {demo['arch']}, batch 1", f"p50 {demo['p50_ms']:.1f} ms, p95 {demo['p95_ms']:.1f} ms",
               f"{demo['cpu']}, {demo['torch_threads']} thread(s)", command(demo))
    image = _newest(rows, lambda r: r["kind"] == "image" and r["cached_steps"] == 0)
    if image:
        yield (f"Docker image ({image['builder']}, {image['base']}), built from scratch",
               f"{image['size_bytes'] / 1e9:.2f} GB, built in {image['build_s'] / 60:.1f} min, steps {image['checks']}",
               f"{image['cpu']}, {image['cpu_count']} cores", command(image))
    gpu = _newest(rows, lambda r: r.get("device_type") == "cuda")
    yield ("GPU training throughput", "pending: no GPU has run the kit yet" if gpu is None else
           f"{gpu['img_per_s']:,.0f} img/s ({gpu['device']}), see docs/results.md", "", "`make gpu-evidence`")
