"""The paths only a GPU takes, run here where torch allows: fp16 with the CPU's grad scaler and resumes across
precisions, CUDA generator states and device queries faked, the fused optimizer's host syncs, a mirror that is slow
to write, and a mid-epoch resume that decodes nothing it skips."""
from __future__ import annotations

import itertools
import json
import re
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from imagenet_kit.config import OptimConfig
from imagenet_kit.engine import train as train_module
from imagenet_kit.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from imagenet_kit.engine.logbook import peak_reserved_mb
from imagenet_kit.engine.mirror import Mirror
from imagenet_kit.engine.step import train_step
from imagenet_kit.errors import ConfigError
from imagenet_kit.models.factory import create_model
from imagenet_kit.optim.optimizers import create_optimizer, param_groups
from imagenet_kit.optim.schedule import create_scheduler
from imagenet_kit.runtime import Runtime, require_compiler, resolve_precision

CPU = Runtime(torch.device("cpu"))
CUDA0 = torch.device("cuda", 0)


# ---- precision -------------------------------------------------------------------------------------------------

def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ConfigError, match=r"bf16: this GPU \(Tesla T4\) has no bf16 .* fp16 .*--gpu t4"):
        resolve_precision("bf16", CUDA0)
    assert resolve_precision("auto", CUDA0) == (torch.float16, True)  # auto picks fp16 there


def _fast_fp16(tiny_config, name: str, precision: str):
    """The tiny run at 16 px: fp16 convolutions are emulated on most CPUs (seconds per step at 32 px)."""
    cfg = tiny_config
    cfg.name, cfg.train.precision = name, precision
    cfg.train.min_res = cfg.train.max_res = cfg.train.val_res = 16
    return cfg


@pytest.mark.slow  # fp16 on CPU: about a second per step here
@pytest.mark.parametrize("first, then", [("bf16", "fp16"), ("fp16", "fp32")])
def test_a_run_resumes_in_another_precision_at_the_same_step(tiny_config, capsys, first, then):
    cfg = _fast_fp16(tiny_config, f"{first}-{then}", first)
    cfg.train.epochs, cfg.train.max_steps = 1, 2  # stops mid-epoch (step 2 of 4), with a checkpoint
    train_module.train(cfg, CPU)
    assert load_checkpoint(cfg.run.last)["precision"] == first
    capsys.readouterr()
    cfg.train.precision, cfg.train.max_steps = then, 0
    train_module.train(cfg, CPU, resume="auto")
    err = capsys.readouterr().err
    assert "resuming from" in err and "(epoch 0, step 2)" in err
    assert len(re.findall(rf"resume: precision {first} -> {then}: ", err)) == 1, err
    state = load_checkpoint(cfg.run.last)
    assert (state["epoch"], state["global_step"], state["precision"]) == (1, 4, then)
    assert bool(state["scaler"]) == (then == "fp16")  # fp16 saves its loss scale, the others an empty state


def test_fused_sgd_takes_the_fp16_loss_scale_without_a_host_sync(monkeypatch):
    """GradScaler.step reads its inf check on the host (.item()) unless the optimizer takes the scale itself."""
    counts = {}
    item = torch.Tensor.item

    def counted_item(self):
        counts["now"] = counts.get("now", 0) + 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    for fused in (False, True):
        torch.manual_seed(0)
        model = create_model("resnet18", 4)
        optimizer = create_optimizer(param_groups(model, 1e-4), OptimConfig(), 0.1, fused=fused)
        scheduler = create_scheduler(optimizer, OptimConfig(), 0.1, 1, 10)
        scaler = torch.amp.GradScaler("cpu")
        images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        counts["now"] = 0
        train_step(model, images, torch.tensor([0, 1]), torch.nn.CrossEntropyLoss(), optimizer, scaler, scheduler,
                   torch.float16, True)
        counts[fused] = counts["now"]
    assert counts[True] == 0 and counts[False] >= 1, counts
    assert create_optimizer(param_groups(model, 1e-4), OptimConfig(), 0.1).defaults["fused"] is None  # CPU: off


# ---- CUDA state, faked ----------------------------------------------------------------------------------------

def test_a_checkpoint_of_8_gpus_resumes_where_1_is_visible(monkeypatch):
    restored, saved = [], torch.arange(4, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("indexes every saved device"))
    state = rng_state(torch.device("cpu"))
    legacy = {**state, "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]}  # before 2026-12-06
    set_rng_state(legacy, CUDA0)
    assert len(restored) == 1 and restored[0][0].tolist() == [0] * 4 and restored[0][1] == CUDA0
    set_rng_state(legacy, torch.device("cuda", 9))  # an index the checkpoint never saw: nothing to restore
    assert len(restored) == 1
    mine = rng_state(CUDA0)
    assert "cuda" not in mine and mine["cuda_device"] is saved  # only this process's device
    set_rng_state(mine, torch.device("cuda", 3))
    assert restored[-1] == (saved, torch.device("cuda", 3))


def test_logs_record_reserved_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 3 * 2**30)
    assert peak_reserved_mb(CUDA0) == 3072.0


def test_compile_without_a_compiler_is_one_clear_error(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match=r"train.compile true: .* no a C\+\+ compiler \(g\+\+ or c\+\+ or clang\+\+\)"
                                          r".*apt-get install gcc g\+\+ python3-dev.*--no-compile"):
        require_compiler(torch.device("cpu"))


def test_the_autotuner_is_on_wherever_a_command_runs_a_model(monkeypatch):
    from imagenet_kit.runtime import init_runtime, local_runtime

    for make in (local_runtime, init_runtime):
        torch.backends.cudnn.benchmark = False
        make()
        assert torch.backends.cudnn.benchmark is True, make.__name__


def test_bench_train_records_the_autotuner_and_puts_it_back(tmp_path):
    from imagenet_kit.bench.train import bench_train

    torch.backends.cudnn.benchmark = True
    rows = bench_train("resnet18", (32,), 2, "fp32", steps=1, warmup=0, workers=1, results_dir=tmp_path,
                       modes=("synthetic",), autotune=False)
    assert rows[0]["cudnn_benchmark"] is False and torch.backends.cudnn.benchmark is True
    assert rows[0]["host_syncs_per_step"] is None  # counted on a GPU only


def test_bench_train_on_a_gpu_without_a_beton_skips_the_real_mode_and_says_why(monkeypatch, capsys, tmp_path):
    from imagenet_kit.bench import train as bench

    measured = {}
    monkeypatch.setattr(bench, "_measure_all", lambda *args: measured.setdefault("modes", args[-1]) and [])
    bench.bench_train("resnet50", (160,), 256, "fp32", steps=50, warmup=10, results_dir=tmp_path)
    assert measured["modes"] == ("synthetic", "bare")
    assert "real-data mode skipped: the embedded sample has 500 training images, fewer than the 15,360" in \
        capsys.readouterr().err


# ---- the loop: resume without decoding, a slow mirror ---------------------------------------------------------

@pytest.mark.slow
def test_a_mid_epoch_resume_decodes_no_skipped_batch_and_ends_with_the_same_weights(tiny_config, monkeypatch):
    import imagenet_kit.data.loaders as loaders

    cfg = tiny_config
    cfg.train.deterministic, cfg.train.flip_tta, cfg.train.batch_size = True, False, 2  # 16 steps per epoch
    cfg.name = "uninterrupted"
    train_module.train(cfg, CPU)
    reference = load_checkpoint(cfg.run.last)["model"]
    cfg.name, cfg.train.max_steps = "stopped", 20  # the check at global step 20: epoch 1, step 4
    train_module.train(cfg, CPU)
    assert (load_checkpoint(cfg.run.last)["epoch"], load_checkpoint(cfg.run.last)["step"]) == (1, 4)

    orders = []
    epoch_iterator = loaders.EpochIterator
    monkeypatch.setattr(loaders, "EpochIterator", lambda loader, order: orders.append(len(order)) or
                        epoch_iterator(loader, order))
    cfg.train.max_steps = 0
    train_module.train(cfg, CPU, resume="auto")
    assert orders == [(16 - 4) * 2], orders  # the resumed epoch's images after the 4 batches done, no more
    resumed = load_checkpoint(cfg.run.last)["model"]
    assert max((resumed[k].float() - reference[k].float()).abs().max().item() for k in reference) <= 1e-6


@pytest.mark.slow
def test_a_mirror_that_takes_5_s_per_copy_does_not_hold_up_the_steps(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config
    cfg.train.mirror, cfg.train.batch_size, cfg.train.checkpoint_minutes = f"file://{tmp_path / 'm'}", 2, 0
    pushes, steps = [], []
    push = Mirror._push_checkpoint

    def slow_push(self, snapshot, name, position):
        start = time.monotonic()
        time.sleep(5)
        push(self, snapshot, name, position)
        pushes.append((start, time.monotonic(), threading.current_thread() is threading.main_thread()))

    step = train_module.train_step
    monkeypatch.setattr(Mirror, "_push_checkpoint", slow_push)
    monkeypatch.setattr(train_module, "train_step", lambda *a: steps.append(time.monotonic()) or step(*a))
    train_module.train(cfg, CPU)  # 2 epochs of 16 steps: checkpoints at global step 20 and at both epoch ends
    assert 4 <= len(pushes) <= 5 and not any(on_main for *_, on_main in pushes)  # last x3, best once or twice
    during = [t for t in steps if any(start < t < end for start, end, _ in pushes)]
    assert len(during) >= 4, "steps ran while a copy was under way"
    # No step waits for a copy: each is made from a hard link to the checkpoint, so a newer one may replace it. The
    # gaps within each epoch of 16 steps (the one between epochs holds the evaluation, plots and two writes); the
    # check at global step 20, with its checkpoint, is between steps 20 and 21.
    gaps = sorted(b - a for i, (a, b) in enumerate(itertools.pairwise(steps)) if i != 15)
    assert gaps[-1] < 2.0, gaps[-5:]
    assert not list(cfg.run.checkpoints.glob(".*.mirror-*"))  # the links went with their copies
    record = json.loads((tmp_path / "m" / cfg.name / "checkpoints" / "last.pt.json").read_text())
    assert record["global_step"] == 32  # the run waited for its last copy before it ended


# ---- gpu-evidence's plan ----------------------------------------------------------------------------------------

def test_gpu_evidence_dry_run_lists_every_row_and_measures_nothing(tmp_path):
    from imagenet_kit.bench.gpu_evidence import gpu_evidence_command

    bundle = tmp_path / "gpu-bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"beton": "imagenette2-train-160.beton", "images": 2600,
                                                      "max_res": 160, "jpeg_quality": 90, "src": "imagenette2"}))
    run = CliRunner().invoke(gpu_evidence_command, ["--dry-run", "--bundle", str(bundle), "--results-dir",
                                                    str(tmp_path / "results")])
    assert run.exit_code == 0, run.output
    lines = [line for line in run.output.splitlines() if " -> " in line]
    assert [line.split(":")[0] for line in lines] == [
        "6 train rows -> train.jsonl", "6 train rows -> train.jsonl", "2 train rows -> train.jsonl",
        "1 train row -> train.jsonl", "12 memory rows -> memory.jsonl", "2 data rows -> data.jsonl",
        "4 train rows -> train.jsonl", "4 train rows -> train.jsonl", "1 check row -> checks.jsonl"]
    text = "\n".join(lines)
    assert "t4 256 fp16" in text and "h100 512 bf16" in text and "resnet50 + BlurPool" in text
    assert "batch 512, bf16, 160 px, 192 px: the rows `plan` reads" in text and "(12 passes)" in text
    assert not (tmp_path / "results").exists()
