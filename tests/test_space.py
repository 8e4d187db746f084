"""`imagenet-kit space`: the Hugging Face Space folder, its drift guard, and the folder running on its own."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import distribution, version
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_card import write_run_records
from test_export import PHOTO, make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)

from imagenet_kit.cli import cli
from imagenet_kit.config import load_config
from imagenet_kit.images import load_rgb
from imagenet_kit.serve import card, space
from imagenet_kit.serve.export import export_model
from imagenet_kit.serve.predict import load_exported

PACKAGE = Path(space.__file__).resolve().parent.parent  # the imagenet_kit folder
TRAINING_ONLY = ("ffcv", "numba", "onnx", "onnxruntime", "cv2", "matplotlib", "safetensors")
# Top-level imports of the shipped modules -> the distribution in requirements.txt that provides them.
DISTRIBUTION = {"torch": "torch", "torchvision": "torchvision", "gradio": "gradio", "PIL": "pillow", "numpy": "numpy",
                "click": "click"}
# pip in the Space's fresh venv, with every requirement already there (``_requirements_only``): it resolves,
# checks the pins and installs nothing. Generous: a hang is what it catches.
INSTALL_TIMEOUT = 600
SERVE_TIMEOUT = 180


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as `imagenet-kit run` leaves it: checkpoint, config.yaml, env.json, eval.json,
    metrics.jsonl, and an export in every format (the Space must take only the TorchScript one)."""
    run = make_fake_run(tmp_path_factory.mktemp("space"))
    write_run_records(run)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "top1": 0.625, "lr": 0.17}) + "\n")
    export_model(run / "checkpoints" / "best.pt", run / "export")
    (run / "data.beton").write_bytes(b"not copied")  # stands for training data next to the run
    return run


@pytest.fixture(scope="module")
def folder(run) -> Path:
    return space.build_space(run)["out"]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_folder_holds_the_app_its_model_and_nothing_from_training(folder, run):
    assert folder == run / "space"
    examples = _files(folder / "examples")
    # the run's val folder is not here, so the bundled photos of the model's classes: of the ten, only the tench
    assert examples == ["n01440764_tench.jpg"]
    assert _files(folder) == sorted([
        ".gitattributes", ".gitignore", "README.md", "app.py", "requirements.txt",
        *(f"examples/{name}" for name in examples),
        *(f"imagenet_kit/{name}" for name in space.SHIPPED_MODULES),
        "model/model.ts", "model/classes.json", "model/preprocess.json", "model/model.json"])
    _assert_nothing_from_training(folder)


def _assert_nothing_from_training(folder: Path) -> None:
    for path in folder.rglob("*"):
        assert path.suffix not in (".beton", ".onnx", ".safetensors", ".ckpt"), path
        if path.suffix in (".pt", ".pth"):  # none is written; if one appears it must hold no training state
            state = torch.load(path, map_location="cpu", weights_only=False)
            assert not (isinstance(state, dict) and {"optimizer", "scaler", "rng"} & set(state)), path


def test_shipped_modules_are_the_kits_own_bytes(folder):
    for name in space.SHIPPED_MODULES:
        assert (folder / "imagenet_kit" / name).read_bytes() == (PACKAGE / name).read_bytes(), name


# Imported inside load_exported's safetensors branch only; a Space folder serves model.ts and never gets there.
LAZY_OPTIONAL = {"safetensors.torch", "imagenet_kit.models.factory", "imagenet_kit.models.architecture"}


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, at module level?) for every absolute import in the file."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, id(node) in top_level))
    return found


@pytest.mark.parametrize("name", [n for n in space.SHIPPED_MODULES if not n.endswith("__init__.py")])
def test_shipped_modules_import_only_each_other_and_the_requirements(name):
    """The drift guard's other half: a shipped module that starts importing training code (or a package
    missing from requirements.txt) fails here, long before a Space build breaks."""
    shipped = {".".join(["imagenet_kit", *Path(n).with_suffix("").parts]).removesuffix(".__init__")
               for n in space.SHIPPED_MODULES}
    for module, top_level in _imports(ast.parse((PACKAGE / name).read_text())):
        if module in LAZY_OPTIONAL and not top_level:
            continue
        top = module.split(".")[0]
        if top == "imagenet_kit":
            assert module in shipped, f"{name} imports {module}, which the Space folder does not ship"
        elif top not in sys.stdlib_module_names and top != "__future__":
            assert DISTRIBUTION.get(top) in space.REQUIREMENTS, f"{name} imports {top}, not in requirements.txt"


def test_requirements_pin_the_inference_packages_and_all_they_require(folder):
    """Nothing left to float: what the shipped modules import, then everything that requires on every platform,
    at this environment's versions (platform-specific ones, as torch's CUDA libraries, pinned by what needs them)."""
    lines = (folder / "requirements.txt").read_text().split()
    pins = dict(line.split("==") for line in lines)
    assert lines[:len(space.REQUIREMENTS)] == [f"{name}=={version(name).split('+')[0]}" for name in space.REQUIREMENTS]
    assert all(pins[name] == version(name).split("+")[0] for name in pins)
    for name in pins:
        required = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r)[0]).lower()
                    for r in distribution(name).requires or [] if ";" not in r}
        assert required <= set(pins), f"{name} requires {sorted(required - set(pins))}, not pinned"
    assert {"fastapi", "starlette", "pydantic", "huggingface-hub", "gradio-client", "pandas"} <= set(pins)
    assert not set(pins) & set(TRAINING_ONLY) and not [name for name in pins if name.startswith("nvidia")]


def test_readme_has_the_spaces_header_and_the_demos_model_card(folder, run):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert {"title", "sdk", "sdk_version", "app_file"} <= set(header)
    assert header["sdk"] == "gradio" and header["sdk_version"] == version("gradio")
    assert header["app_file"] == "app.py" and header["pinned"] is False and header["license"]
    assert header["colorFrom"] and header["colorTo"] and header["emoji"]
    assert header["suggested_hardware"] == "cpu-basic"
    body = text.split("---\n", 2)[2]
    # the card the Space's demo shows in its Model card tab, written from the Space's own model/ files
    shown = card.card_markdown(*(json.loads((folder / "model" / name).read_text())
                                 for name in ("model.json", "classes.json", "preprocess.json")))
    assert shown in body
    env = json.loads((run / "env.json").read_text())
    epochs = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
    for words in ("resnet18", "10 classes", "imagenette-sample", "**59.0%** top-1", "91.0% top-5",
                  "40 validation images", env["device"], f"torch {env['torch']}", f"{epochs} epochs", "peak LR 0.17",
                  "SGD (momentum 0.9, weight decay", "GMACs per image at 64×64 px", "precision bf16",
                  "trained from scratch", "tench", "## Use it without the kit", "## Limits", "only these 10 classes",
                  "top-1 above is known to about ±", "not a production", f"kit commit `{env['git'][:12]}`"):
        assert words in body, words
    assert card.NOT_RECORDED not in body


def test_no_path_of_this_machine_in_the_folder(folder, run):
    model_json = json.loads((folder / "model" / "model.json").read_text())
    assert model_json["checkpoint"] == f"{run.parent.name}/{run.name}/checkpoints/best.pt"  # as runs/<name>/...
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".json", ".py", ".txt"):
            assert str(run.parent.parent) not in path.read_text(), path


@pytest.mark.slow
def test_the_folders_package_serves_the_same_predictions(folder, tmp_path):
    """Run from the folder, `import imagenet_kit` is the folder's copy, pulls in no training dependency,
    and predicts what the kit's own predictor does."""
    probe = ("import json, sys\n"
             "from pathlib import Path\n"
             "import imagenet_kit.serve.demo\n"
             "from imagenet_kit.images import load_rgb\n"
             "from imagenet_kit.serve.predict import load_exported\n"
             f"top = load_exported(Path('model')).predict(load_rgb(Path({str(PHOTO)!r})))\n"
             "print(json.dumps({'file': imagenet_kit.__file__, 'top': top,\n"
             f"                  'loaded': [m for m in {TRAINING_ONLY!r} if m in sys.modules]}}))\n")
    (tmp_path / "probe.py").write_text(probe)
    shutil.copy(tmp_path / "probe.py", folder / "probe.py")
    try:
        done = subprocess.run([sys.executable, "probe.py"], cwd=folder, capture_output=True, text=True, timeout=300)
    finally:
        (folder / "probe.py").unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve() == (folder / "imagenet_kit" / "__init__.py").resolve()
    assert result["loaded"] == []
    expected = load_exported(folder.parent / "export").predict(load_rgb(PHOTO))
    assert [name for name, _ in result["top"]] == [name for name, _ in expected]
    assert [p for _, p in result["top"]] == pytest.approx([p for _, p in expected], abs=1e-6)


def test_too_big_a_folder_is_refused_and_the_old_one_kept(run, tmp_path, monkeypatch):
    out = tmp_path / "space"
    space.build_space(run, out)
    before = _files(out)
    monkeypatch.setattr(space, "SIZE_SLACK", 1000)
    with pytest.raises(space.SpaceError, match=r"more than the model .* \+ 0 MB; not written"):
        space.build_space(run, out)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["space"]  # no half-built folder left behind


def test_refuses_to_replace_a_folder_it_did_not_make(run):
    with pytest.raises(space.SpaceError, match="not a Space folder made by 'imagenet-kit space'"):
        space.build_space(run, run)
    assert (run / "checkpoints" / "best.pt").is_file()


def test_cli_defaults_to_the_newest_run_and_prints_the_size(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["space"])
    assert result.exit_code != 0 and "no run with an export found" in result.output
    assert "make mini" in result.output
    shutil.copytree(run / "export", tmp_path / "runs" / "new" / "export")
    result = CliRunner().invoke(cli, ["space", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model" / "model.ts").is_file()
    assert f"space: out ({space.folder_bytes(tmp_path / 'out') / 1e6:.1f} MB: model" in result.output


def test_an_export_folder_is_taken_as_its_run(run, tmp_path):
    result = space.build_space(run / "export", tmp_path / "out")
    assert (tmp_path / "out" / "model" / "model.ts").is_file() and result["out"] == tmp_path / "out"
    assert "**59.0%** top-1" in (tmp_path / "out" / "README.md").read_text()  # the run's eval.json was found


def test_cli_says_what_to_run_without_an_export(tmp_path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(cli, ["space", "--run", str(tmp_path / "run")])
    assert result.exit_code != 0 and "imagenet-kit export --checkpoint" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"app.py exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not answer on {url} within {SERVE_TIMEOUT} s:\n{log.read_text()[-4000:]}")


def _requirements_only(requirements: Path, into: Path) -> list[str]:
    """Links in ``into`` to this environment's installed copies of the distributions ``requirements`` names and
    of everything they require, and to nothing else: the packages a Space's ``pip install -r`` would unpack
    (gigabytes of torch and its CUDA libraries, 80-110 s here), as this environment has them. Returns their
    names."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    # (requirement, the extras asked of the distribution that requires it: its markers are read with them)
    wanted, seen = [(Requirement(line), set()) for line in requirements.read_text().split()], set()
    while wanted:
        requirement, asked = wanted.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in asked | {""}):
            continue
        if name in seen:
            continue
        seen.add(name)
        dist = distribution(requirement.name)
        wanted += [(Requirement(r), set(requirement.extras)) for r in dist.requires or []]
        for top in {Path(f).parts[0] for f in dist.files or []} - {".."}:  # "..": its scripts in bin/
            if not (into / top).exists() and Path(dist.locate_file(top)).exists():
                (into / top).symlink_to(Path(dist.locate_file(top)))
    return sorted(seen)


def _ask_the_space(python: Path, deploy: Path, env: dict, tmp_path: Path) -> tuple[dict, dict, dict]:
    """Start the folder's app.py with ``python`` and ask it, through gradio_client: the top-5 of PHOTO (defaults),
    its top-3 at 20% or more, and a batch of PHOTO and a broken file (the table)."""
    from gradio_client import Client, handle_file

    port = _free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(python), "app.py", "--port", str(port)], cwd=deploy, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, server, log)
        client = Client(url, verbose=False)
        result = client.predict(handle_file(str(PHOTO)), api_name="/predict")
        top3 = client.predict(handle_file(str(PHOTO)), k=3, threshold=20, api_name="/predict")
        broken = tmp_path / "cut.jpg"
        broken.write_bytes(PHOTO.read_bytes()[:5000])
        table = client.predict([handle_file(str(PHOTO)), handle_file(str(broken))], api_name="/batch")[0]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return result, top3, table


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")
def test_space_runs_alone_in_a_fresh_venv(folder, tmp_path):
    """What a Space does: a plain venv, `pip install -r requirements.txt`, `python app.py`; then the top-5 of
    a photo, its top-3 above 20% and a batch with a broken file through the HTTP API. The venv sees the
    requirements and what they require, and nothing else of this environment, so pip takes them as installed: an
    import the requirements do not cover fails here as on a Space, and nothing of the kit or of training is there."""
    deploy = tmp_path / "deploy"  # a copy, as a Space repo would hold it; the run folder stays untouched
    shutil.copytree(folder, deploy)
    venv, installed = tmp_path / "venv", tmp_path / "installed"
    installed.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    try:
        # no pip of its own (3.11's would bring an old setuptools that shadows torch's): this pip drives it
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
        python = venv / "bin" / "python"
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        names = _requirements_only(deploy / "requirements.txt", installed)
        (Path(site) / "requirements-installed.pth").write_text(f"{installed}\n")
        pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
        install = subprocess.run([*pip, "install", "--no-index", "-r", "requirements.txt"], cwd=deploy, env=env,
                                 capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        assert install.returncode == 0, install.stderr[-4000:]
        assert "Successfully installed" not in install.stdout  # every pin met by what is there
        frozen = subprocess.run([*pip, "freeze"], env=env, capture_output=True, text=True, check=True).stdout.lower()
        assert "torch==" in frozen and "gradio==" in frozen and len(names) > 10
        for name in TRAINING_ONLY + ("imagenet-kit",):
            assert f"\n{name}==" not in f"\n{frozen}", f"{name} got installed into the Space's venv"

        result, top3, table = _ask_the_space(python, deploy, env, tmp_path)
        expected = load_exported(deploy / "model").predict(load_rgb(PHOTO))
        assert result["label"] == expected[0][0]
        got = [(c["label"], c["confidence"]) for c in result["confidences"]]
        assert [name for name, _ in got] == [name for name, _ in expected]
        assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-5)
        assert [c["label"] for c in top3["confidences"]] == [name for name, p in expected[:3] if p >= 0.2]
        assert [row[:2] for row in table["data"]] == [[PHOTO.name, expected[0][0]], ["cut.jpg", ""]]
        assert table["data"][1][4].startswith("corrupt or truncated image")
        _assert_nothing_from_training(deploy)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 6 GB


@pytest.mark.parametrize("overrides, words", [
    ([], "SGD (momentum 0.9, weight decay 5e-05"),
    (["optim.optimizer=adamw", "optim.eps=1e-6"], "AdamW (betas 0.9, 0.99, eps 1e-06, weight decay 5e-05"),
    (["optim.optimizer=radam", "optim.momentum=0.95", "optim.lookahead_k=6"],
     "Lookahead (k 6, alpha 0.5) over RAdam (betas 0.95, 0.99, eps 1e-08, weight decay 5e-05"),
])
def test_model_card_names_the_optimizer_the_run_used(overrides, words):
    assert words in card.optimizer(load_config("sample", overrides).to_dict()["optim"])


def test_model_card_names_every_architecture_extra():
    info = {"arch": "resnext50d", "num_classes": 2, "blurpool": True, "maxblurpool": True, "activation": "mish",
            "se_reduction": 16, "self_attention": True}
    classes = [{"index": 0, "wnid": "n01440764", "name": "tench"},
               {"index": 1, "wnid": "n02102040", "name": "springer"}]
    text = card.card_markdown(info, classes, {"crop": 128, "resize": 128, "interpolation": "bilinear"})
    assert ("resnext50d, 2-way classifier head, Mish activations, squeeze-and-excitation (reduction 16) on every "
            "residual branch, BlurPool before strided convolutions, anti-aliased max pooling (MaxBlurPool), a simple "
            "self-attention layer (fastai's) at the end of the first stage; parameters and GMACs not recorded.") in text
