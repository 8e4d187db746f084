"""`make image-check`: build the Dockerfile with podman on a Debian base and run the image for real.

Steps, each ending in one `[pass]` or `[FAIL]` line: (1) the import check, `imagenet-kit --help` and a
`torch.compile`d function in the image; (2) the compose `train` service runs the embedded sample end to end onto the
host's runs/ and betons/;
(3) the compose `demo` service turns healthy and classifies a photo sent from the host with gradio_client;
(4) `stop` mid-epoch exits 0 with a checkpoint, and starting the service again resumes and finishes;
(5) the image's size and build time become a row of bench/results/image.jsonl (kind `image`).
The CUDA base, the NVIDIA runtime and GPUs in the container cannot be checked without a GPU: said at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from imagenet_kit.environment import cpu_model, git_revision  # noqa: E402
from imagenet_kit.result_rows import append_results, utc_now  # noqa: E402
from imagenet_kit.runs import ExportFolder  # noqa: E402

BASE = "localhost/debian:bookworm"
IMAGE = "imagenet-kit"
HOST_UID = 1000  # the image's user, and the default user of an Ubuntu EC2 host
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
# runc, cgroupfs and no default ulimits: what podman needs on a host in cgroups hybrid mode whose setrlimit is
# refused (crun fails there); harmless elsewhere.
CONF_TEXT = '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n'
RESUME_EPOCHS = 20  # the sample recipe's epochs take seconds on CPU: enough of them to stop one mid-way
NOT_CHECKED = ["the CUDA base image (nvidia/cuda, the default BASE): built here on Debian bookworm instead",
               "the NVIDIA container runtime and GPUs inside the container (the train service's GPU reservation "
               "is dropped from the compose file this check runs)",
               "torchrun across several GPUs in the container (NPROC > 1)"]


class CheckFailed(Exception):
    pass


def sh(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise CheckFailed(f"`{' '.join(args)}` exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return result


def prepare_podman() -> None:
    """podman, runc and debootstrap from the host's apt, and a containers.conf that works here (root only)."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing or not CONTAINERS_CONF.exists():
        if os.geteuid() != 0:
            raise CheckFailed(f"needs {', '.join(missing) or CONTAINERS_CONF}; as root run: apt-get install podman "
                              f"runc debootstrap, and write {CONTAINERS_CONF} as tools/image_check.py's CONF_TEXT")
        if missing:
            sh("apt-get", "update", "-qq")
            sh("apt-get", "install", "-y", "-qq", "podman", "runc", "debootstrap")
        if not CONTAINERS_CONF.exists():
            CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
            CONTAINERS_CONF.write_text(CONF_TEXT)


def debian_mirror() -> str:
    """The Debian archive this host's apt uses (no image registry is needed, or reachable, for the base)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = path.read_text() if path.is_file() else ""
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                uri = words[1] if words[0] == "URIs:" else next(w for w in words[1:] if "://" in w)
                if "security" not in uri:
                    return uri
    return "http://deb.debian.org/debian"


def make_base(work: Path) -> None:
    if sh("podman", "image", "exists", BASE, check=False).returncode == 0:
        return
    rootfs = work / "debian-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    sh("debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror(), timeout=1800)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs)


def build_image(no_cache: bool) -> tuple[float, int]:
    """Seconds to build, and how many of its steps came from podman's cache (0 for a build from scratch).

    The host's CA bundle goes in as the build secret `ca`, so pip trusts what the host trusts (a proxy that
    re-signs TLS included); `--format docker` keeps the Dockerfile's SHELL (pipefail), which OCI images drop."""
    secret = ["--secret", "id=ca,src=/etc/ssl/certs/ca-certificates.crt"] \
        if Path("/etc/ssl/certs/ca-certificates.crt").exists() else []
    start = time.monotonic()
    log = sh("podman", "build", "--format", "docker", "--network", "host", *secret, "--build-arg", f"BASE={BASE}",
             *(["--no-cache"] if no_cache else []), "-t", IMAGE, str(REPO), timeout=3600).stdout
    return time.monotonic() - start, log.count("--> Using cache")


def ulimits_allowed(ulimits: dict) -> bool:
    """Whether this host lets a container raise its limits as the train service asks (root in a sandbox without
    CAP_SYS_RESOURCE may not: runc's setrlimit is refused)."""
    flags = [f"--ulimit={name}={value}" for name, value in ulimits.items()]
    return sh("podman", "run", "--rm", *flags, "--entrypoint", "true", IMAGE, check=False).returncode == 0


def compose_file(work: Path) -> list[str]:
    """The repository's docker-compose.yml in ``work`` (its ./runs and ./betons land there), with what this host
    cannot give dropped and said: the train service's GPU reservation, its ulimits where raising them is refused,
    and `build` (the image is built already)."""
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in spec["services"].values():
        service.pop("build", None)
    train = spec["services"]["train"]
    train.pop("deploy")
    if not ulimits_allowed(train["ulimits"]):
        NOT_CHECKED.append(f"the train service's ulimits ({train.pop('ulimits')}): this host refuses to raise a "
                           "container's limits")
    (work / "docker-compose.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for folder in ("runs", "betons", "data"):  # made by the host user, as a checkout's folders are
        (work / folder).mkdir(exist_ok=True)
        os.chown(work / folder, HOST_UID, HOST_UID)
    return [sys.executable, "-m", "podman_compose", "-f", str(work / "docker-compose.yml")]


# train.compile in the image: torch.compile builds C++ (CPU) or a C launcher (Triton, GPU) at its first kernel.
COMPILED = ("import torch; f = torch.compile(lambda x: torch.sin(x) * 2 + 1); x = torch.arange(4.0); "
            "assert torch.allclose(f(x), torch.sin(x) * 2 + 1); print('compiled')")


def check_image() -> str:
    sh("podman", "run", "--rm", "--entrypoint", "python", IMAGE, "-c", "import ffcv, imagenet_kit.cli")
    usage = sh("podman", "run", "--rm", IMAGE, "--help").stdout
    if "Usage: imagenet-kit" not in usage:
        raise CheckFailed(f"imagenet-kit --help printed:\n{usage}")
    compiled = sh("podman", "run", "--rm", "--entrypoint", "python", IMAGE, "-c", COMPILED).stdout
    if "compiled" not in compiled:
        raise CheckFailed(f"a torch.compile'd function in the image printed:\n{compiled}")
    return "import ffcv, imagenet_kit.cli, imagenet-kit --help and a torch.compile'd function in the image"


def owned_by_host_user(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.stat().st_uid != HOST_UID]


def check_train(compose: list[str], work: Path) -> str:
    sh(*compose, "--profile", "train", "run", "--rm", "train", "mini", timeout=1800)
    export = work / "runs" / "sample" / "export" / "model.json"
    betons = sorted(p.name for p in (work / "betons").glob("*.beton"))
    if not export.is_file() or len(betons) != 2:
        raise CheckFailed(f"after `run --rm train mini`: {export} {'exists' if export.is_file() else 'missing'}, "
                          f"betons {betons}")
    strangers = owned_by_host_user(work / "runs") + owned_by_host_user(work / "betons")
    if strangers:
        raise CheckFailed(f"not owned by uid {HOST_UID}: {strangers[:5]}")
    return f"train service: `run --rm train mini` wrote {export.relative_to(work)} and {', '.join(betons)}"


def remove_leftover_containers(work: Path) -> list[str]:
    """Containers an interrupted check left running: `up -d train` would find one, leave it, and step 4 would
    wait on a training that writes into a folder this check just removed. Only this check's compose project."""
    project = f"label=com.docker.compose.project={work.name}"  # podman-compose names it after the folder
    ids = sh("podman", "ps", "-a", "-q", "--filter", project).stdout.split()
    if ids:
        sh("podman", "rm", "--force", *ids, timeout=300)
    return ids


def container(service: str) -> str:
    ids = sh("podman", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.service={service}").stdout.split()
    if len(ids) != 1:
        raise CheckFailed(f"expected one {service} container, found {ids}")
    return ids[0]


def wait_healthy(name: str, limit_s: float = 300) -> float:
    """Run the image's own healthcheck at its interval until it passes: podman schedules healthchecks with
    systemd timers, and a host without systemd (this one) runs none by itself."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if sh("podman", "healthcheck", "run", name, check=False).returncode == 0:
            return time.monotonic() - start
        time.sleep(5)
    logs = sh("podman", "logs", name, check=False)
    raise CheckFailed(f"{name} not healthy after {limit_s:.0f} s; its log:\n{(logs.stdout + logs.stderr)[-2000:]}")


def check_demo(compose: list[str], work: Path) -> str:
    from gradio_client import Client, handle_file
    sh(*compose, "up", "-d")
    seconds = wait_healthy(container("demo"))
    photo = REPO / "imagenet_kit" / "serve" / "examples" / "n01440764_tench.jpg"  # one of the sample's classes
    result = Client("http://127.0.0.1:7860", verbose=False).predict(handle_file(str(photo)), api_name="/predict")
    classes = {c["name"] for c in json.loads(ExportFolder(work / "runs/sample/export").classes.read_text())}
    top = result["label"] if isinstance(result, dict) else None
    sh(*compose, "down")
    if top not in classes:
        raise CheckFailed(f"the demo answered {result!r} for {photo.name}; expected one of {sorted(classes)}")
    return f"demo service healthy after {seconds:.0f} s; {photo.name} classified as {top!r} through gradio_client"


def set_resume_service(work: Path) -> None:
    """The train service set to a sample run long enough to stop in the middle of."""
    spec = yaml.safe_load((work / "docker-compose.yml").read_text())
    spec["services"]["train"]["command"] = ["mini", f"ARGS=--epochs {RESUME_EPOCHS} --name resume"]
    spec["services"]["train"]["restart"] = "no"  # the check starts it again itself
    (work / "docker-compose.yml").write_text(yaml.safe_dump(spec, sort_keys=False))


def wait_for_epochs(metrics: Path, epochs: int, limit_s: float = 900) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= epochs:
            return
        time.sleep(1)
    raise CheckFailed(f"{metrics} did not reach {epochs} epochs in {limit_s:.0f} s")


def check_stop_and_resume(compose: list[str], work: Path) -> str:
    from imagenet_kit.engine.checkpoint import load_checkpoint
    run = work / "runs" / "resume"
    shutil.rmtree(run, ignore_errors=True)  # a finished run of an earlier check would resume to its end at once
    set_resume_service(work)
    sh(*compose, "--profile", "train", "up", "-d", "train")
    train = container("train")
    wait_for_epochs(run / "metrics.jsonl", 2)
    time.sleep(3)  # into the next epoch
    start = time.monotonic()
    sh(*compose, "--profile", "train", "stop", "train", timeout=300)
    stopped_s = time.monotonic() - start
    exit_code = sh("podman", "inspect", "--format", "{{.State.ExitCode}}", train).stdout.strip()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    if exit_code != "0" or state["epoch"] >= RESUME_EPOCHS:
        raise CheckFailed(f"stop: exit code {exit_code}, checkpoint at epoch {state['epoch']}")
    stopped_at = f"epoch {state['epoch']} step {state['step']}"
    sh("podman", "start", train)
    exit_code = sh("podman", "wait", train, timeout=1800).stdout.strip()
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    log = sh("podman", "logs", train).stderr + sh("podman", "logs", train).stdout
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    if (exit_code != "0" or final["epoch"] != RESUME_EPOCHS or not (run / "export" / "model.json").is_file()
            or epochs != list(range(RESUME_EPOCHS))):  # a restart from scratch would log epoch 0 again
        raise CheckFailed(f"restart: exit {exit_code}, last epoch {final['epoch']}, logged epochs {epochs}; "
                          f"log:\n{log[-2000:]}")
    sh(*compose, "--profile", "train", "down")
    return (f"`stop train` after {stopped_s:.0f} s (grace 2 min): exit 0, checkpoint at {stopped_at}; "
            f"started again, it resumed and finished all {RESUME_EPOCHS} epochs and the export")


def record(build_s: float, cached: int) -> str:
    size = int(sh("podman", "image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    row = {"kind": "image", "date": utc_now(), "base": BASE, "builder": sh("podman", "--version").stdout.strip(),
           "size_bytes": size, "build_s": round(build_s, 1), "cached_steps": cached, "checks": "1-4 passed",
           "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "git": git_revision(), "command": "make image-check"}
    append_results(REPO / "bench" / "results" / "image.jsonl", [row])
    how = "from scratch" if not cached else f"{cached} steps from podman's cache"
    return (f"image {size / 1e9:.2f} GB, built in {build_s / 60:.1f} min ({how}): row added to "
            "bench/results/image.jsonl")


def main(argv: list[str]) -> int:
    no_cache = "--no-cache" in argv  # make image-check ARGS=--no-cache: time a build from scratch
    work = REPO / "test-artifacts" / "image-check"
    work.mkdir(parents=True, exist_ok=True)
    try:
        prepare_podman()
        make_base(work)
        build_s, cached = build_image(no_cache)
    except CheckFailed as err:
        print(f"[FAIL] building the image: {err}")
        return 1
    print(f"[pass] built {IMAGE} on {BASE} in {build_s:.0f} s ({cached} steps from cache)")
    compose = compose_file(work)
    leftovers = remove_leftover_containers(work)
    if leftovers:
        print(f"[note] removed {len(leftovers)} container(s) an earlier check left: {', '.join(leftovers)}")
    steps = [("1", check_image), ("2", lambda: check_train(compose, work)), ("3", lambda: check_demo(compose, work)),
             ("4", lambda: check_stop_and_resume(compose, work))]
    failed = 0
    for number, step in steps:
        try:
            print(f"[pass] {number}. {step()}", flush=True)
        except (CheckFailed, subprocess.TimeoutExpired) as err:
            failed += 1
            print(f"[FAIL] {number}. {err}", flush=True)
    if not failed:
        print(f"[pass] 5. {record(build_s, cached)}")
    for what in NOT_CHECKED:
        print(f"[not checked] {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
