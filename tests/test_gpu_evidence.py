"""`bench gpu-evidence` and tools/gpu_bundle.py in smoke mode: the GPU commands run here at tiny sizes, with FFCV
imported only from the bundle, so they are known to work before a GPU lease is spent on them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE

pytestmark = pytest.mark.slow  # each test runs the CLI or a Python in a process of its own

README = "intro\n<!-- results:begin -->\nold\n<!-- results:end -->\noutro\n"
# Runs the CLI with FFCV, OpenCV and Gradio refused from site-packages: only a bundle may provide them.
BLOCKING_CLI = """
import importlib.abc, sys
BUNDLE = sys.argv.pop(1)
REPO = sys.argv.pop(1)
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in ("ffcv", "cv2", "gradio") and not (BUNDLE and sys.path[0].startswith(BUNDLE)):
            raise ImportError(f"{name} imported outside the bundle")
sys.meta_path.insert(0, Refuse())
if BUNDLE:  # as `make gpu-evidence` runs it: tools/gpu_bundle.py run BUNDLE ...
    sys.path.insert(1, REPO)
    from tools.gpu_bundle import activate
    activate(BUNDLE)
from imagenet_kit.cli import main
sys.argv[0] = "imagenet-kit"
main()
"""


def _cli(args: list[str], bundle: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    # TORCH_COMPILE_DISABLE: the compiled rows' code runs, with torch.compile returning the model as it is.
    # Inductor's CPU code generation was 70-150 s of this module's time, and it tests torch, not the kit; a GPU run
    # of gpu-evidence compiles for real.
    return subprocess.run([sys.executable, "-c", BLOCKING_CLI, bundle, str(REPO), *args], capture_output=True,
                          text=True,
                          timeout=timeout, cwd=REPO,
                          env={**os.environ, "IMAGENET_KIT_GIT": "abc1234", "TORCH_COMPILE_DISABLE": "1"})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "gpu-bundle"
    run = subprocess.run([sys.executable, "tools/gpu_bundle.py", "build", "--out", str(out), "--src",
                          str(SAMPLE / "train"), "--images", "60", "--max-res", "64", "-j", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_bundle_holds_ffcv_its_libraries_and_a_real_beton(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["images"] == 60 and manifest["max_res"] == 64  # 6 images of each of the sample's 10 classes
    names = set(manifest["libraries"])
    assert {"libturbojpeg.so.0", "libopencv_core.so.406", "libopencv_imgproc.so.406"} <= names
    assert not any(n.startswith(("libc.", "libstdc++", "ld-linux")) for n in names)  # the host's own
    assert sorted(p.name for p in (bundle / "lib").iterdir()) == sorted(names)
    assert (bundle / "python" / "ffcv" / "loader").is_dir() and (bundle / "python" / "tqdm").is_dir()
    assert "CDLL(str(next(Path(__file__).parent" in (bundle / "python" / "ffcv" / "libffcv.py").read_text()


def test_bundle_loads_in_a_clean_process_from_its_own_files(bundle):
    script = f"""
import sys
sys.path.insert(1, {str(REPO)!r})
from tools.gpu_bundle import activate
info = activate({str(bundle)!r})
import cv2, ffcv, tqdm, torch
from imagenet_kit.data.loaders import create_train_loader
batches = iter(create_train_loader(info["path"] + "/" + info["beton"], 8, 32, torch.device("cpu"), 1))
images, labels = next(batches)
batches.close()  # FFCV's loader thread must end before the interpreter does
batches.join(timeout=30)
maps = open("/proc/self/maps").read()
print(images.shape[0], labels.shape[0], ffcv.__file__, cv2.__file__, tqdm.__file__)
for lib in ("libturbojpeg.so", "libopencv_core.so", "libopencv_imgproc.so"):
    paths = {{line.split()[-1] for line in maps.splitlines() if lib in line}}
    print(lib, sorted(paths))
"""
    run = subprocess.run([sys.executable, "-c", BLOCKING_CLI.split("if BUNDLE:")[0] + script,
                          str(bundle), str(REPO)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    first, *libs = run.stdout.strip().splitlines()[-4:]
    count, labels, *files = first.split()
    assert (count, labels) == ("8", "8")
    assert all(f.startswith(str(bundle)) for f in files), files  # ffcv, the cv2 stand-in and tqdm
    for line in libs:
        assert f"'{bundle / 'lib'}/" in line and "/lib/x86_64-linux-gnu" not in line, line


def _python_3_12() -> str | None:
    """A working Python 3.12 (a pyenv shim may name one it will not run)."""
    candidates = [shutil.which("python3.12"), *map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


PYTHON_3_12 = _python_3_12()


@pytest.mark.skipif(not PYTHON_3_12, reason="no Python 3.12 here (the GPU hosts run 3.12)")
def test_bundles_ffcv_library_loads_under_python_3_12(bundle):
    # The GPU hosts' Python: _libffcv was built for this one; opened by path its only Python symbol resolves.
    script = f"""
import ctypes, pathlib, sys
sys.path.insert(0, {str(REPO / 'tools')!r})  # the one stdlib-only module, not the kit
from shared_libraries import load_libraries
load_libraries(pathlib.Path({str(bundle / 'lib')!r}))
lib = ctypes.CDLL(str(next(pathlib.Path({str(bundle / 'python' / 'ffcv')!r}).glob("_libffcv*.so"))))
print("loaded", lib.imdecode is not None)
"""
    run = subprocess.run([PYTHON_3_12, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "loaded True" in run.stdout, run.stdout + run.stderr


def test_smoke_evidence_with_the_bundle_writes_every_row_and_the_readme(bundle, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results = tmp_path / "results"
    run = _cli(["bench", "gpu-evidence", "--smoke", "--bundle", str(bundle), "--results-dir", str(results),
                "--doc", str(readme)], bundle=str(bundle))
    assert run.returncode == 0, run.stdout + run.stderr
    train = [json.loads(line) for line in (results / "train.jsonl").read_text().splitlines()]
    seen = [(r["precision"], r["compile"], r["mode"], r["cudnn_benchmark"], r["blurpool"]) for r in train]
    assert seen == [("fp32", False, "synthetic", True, False), ("fp32", False, "bare", True, False),
                    ("bf16", False, "synthetic", True, False), ("bf16", False, "bare", True, False),
                    ("fp32", True, "synthetic", True, False), ("fp32", True, "bare", True, False),
                    ("fp32", False, "synthetic", False, False),  # the autotuner off
                    ("fp32", False, "synthetic", True, True), ("fp32", False, "real", True, True)]  # plan's rows
    real = train[-1]
    assert real["beton_images"] == 60 and (real["warmup"], real["steps"], real["beton_passes"]) == (1, 2, 1)
    for r in train:
        assert (r["arch"], r["res"], r["batch"], r["channels_last"]) == ("resnet18", 32, 4, True)
        assert r["versions"]["git"] == "abc1234" and "cuda_driver" in r["versions"] and r["img_per_s"] > 0
    memory = [json.loads(line) for line in (results / "memory.jsonl").read_text().splitlines()]
    assert [(m["profile"], m["phase"], m["res"], m["flip_tta"], m["fits"]) for m in memory] == [
        ("t4", "train", 32, False, True), ("t4", "eval", 48, True, True)]
    data = [json.loads(line) for line in (results / "data.jsonl").read_text().splitlines()]
    assert [(d["loader"], d["res"], d["n_images"]) for d in data] == [("ffcv", 32, 60)]
    assert data[0]["versions"]["ffcv"] == "1.0.2" or data[0]["versions"]["ffcv"] is None
    (check,) = [json.loads(line) for line in (results / "checks.jsonl").read_text().splitlines()]
    assert check["passed"], check  # stopped at (0, 20) and (1, 10) of 30 steps per epoch, resumed to 3 epochs
    assert check["stopped_at"] == [[0, 20], [1, 10]] and check["precisions"] == ["fp32", "bf16"]
    table = readme.read_text()
    assert table.startswith("intro\n") and table.endswith("outro\n") and "old" not in table
    assert table.count("resnet18, 32 px, batch 4") == 7 and "kit FFCV loader, beton max side 64" in table
    assert "check: 3 epochs at 32→48 px" in table and "passed: stopped at" in table
    assert "smoke run on CPU" in run.stderr  # the console writes to stderr


def test_evidence_without_a_bundle_never_imports_ffcv(tmp_path):
    script = """
import sys, torch
from pathlib import Path
from imagenet_kit.bench.gpu_evidence import SMOKE_CPU, evidence_plan
plan = evidence_plan(SMOKE_CPU, torch.device("cpu"), Path(sys.argv[1]), None)
listed = sum(int(planned.rows.split()[0]) for planned in plan)
# The last two (the autotuner off, memory) run the same code as the others, which the smoke test above measures
rows = [row for planned in plan[-2:] for row in planned.measure()]
print(len(plan), listed, len(rows), "ffcv" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", BLOCKING_CLI.split("if BUNDLE:")[0] + script, "", str(REPO),
                          str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    # 5 measurements of 7 train rows and 2 memory rows, nothing of the bundle's; FFCV never imported
    assert run.stdout.split()[-4:] == ["5", "9", "3", "False"]


def test_without_a_gpu_the_full_evidence_is_refused(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    run = _cli(["bench", "gpu-evidence", "--results-dir", str(tmp_path)])
    assert run.returncode == 2 and "error: no CUDA GPU here" in run.stderr and "--smoke" in run.stderr
    assert not list(tmp_path.iterdir())


def test_a_size_limit_is_the_users_own():
    from tools.gpu_bundle import BundleError, check_size
    check_size(Path("gpu-bundle"), 500.0, 0, 2600, 160)  # no --max-mib: no limit
    check_size(Path("gpu-bundle"), 63.9, 64, 2600, 160)
    with pytest.raises(BundleError, match=r"gpu-bundle and the working tree are 64.1 MiB, over --max-mib 64; lower "
                                          r"--images \(now 2600\) or --max-res \(now 160\)"):
        check_size(Path("gpu-bundle"), 64.1, 64, 2600, 160)
