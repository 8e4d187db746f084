"""`make gpu-bundle` and `make gpu-evidence` on a bare GPU host: FFCV and a small real beton in one folder, for a
GPU host that has torch but no FFCV, no compiler and no network, and the kit's CLI run with that FFCV first.

    python tools/gpu_bundle.py build --src imagenette2/train [--out gpu-bundle] [--max-mib 64]
    python tools/gpu_bundle.py run gpu-bundle bench gpu-evidence --bundle gpu-bundle [ARGS]

A development host's tool, not the kit's: users with a GPU have FFCV installed.

The folder holds FFCV's Python package (its ctypes loader patched to open ``_libffcv`` by path, so the extension
built here for this Python also loads under another CPython 3), the shared libraries ``_libffcv`` links (OpenCV
core and imgproc, libturbojpeg and what they need, but glibc and the C++ runtime, which every host has), FFCV's
pure-Python dependencies the GPU image lacks, a stand-in for OpenCV's Python module (FFCV imports it only to
*write* betons), and a beton of real Imagenette images. ``activate`` puts it first on the import and library path.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from imagenet_kit.errors import KitError  # noqa: E402
from imagenet_kit.progress import console  # noqa: E402
from tools.shared_libraries import load_libraries  # noqa: E402

DEFAULT_DIR = Path("gpu-bundle")
# Every Linux host has these, and a second copy of the C/C++ runtime beside torch's would clash with it.
HOST_LIBRARIES = re.compile(r"^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s)")
PURE_PYTHON_DEPENDENCIES = ("tqdm",)  # FFCV imports it; the GPU image has torch, numpy, numba and PIL
CV2_STAND_IN = '''"""Stand-in for OpenCV's Python module in the GPU bundle: FFCV imports cv2 at import time but calls it
only when writing a beton, which the GPU host never does (betons are written where the kit is installed)."""


def __getattr__(name):
    raise ImportError(f"cv2.{name}: the GPU bundle carries no OpenCV Python module; write betons on the kit host")
'''


class BundleError(KitError):
    pass


def linked_libraries(extension: Path) -> list[Path]:
    """The shared libraries ``extension`` loads (``ldd``), but the ones every host has."""
    out = subprocess.run(["ldd", str(extension)], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/") and not HOST_LIBRARIES.match(parts[0]):
            found.append(Path(parts[2]))
    return found


def _copy_ffcv(python_dir: Path) -> Path:
    spec = importlib.util.find_spec("ffcv")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("FFCV is not installed here: run `make setup` first (the bundle copies this install)")
    package = Path(list(spec.submodule_search_locations)[0])
    target = python_dir / "ffcv"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "benchmarks"))
    loader = target / "libffcv.py"
    text = loader.read_text()
    opened = "import ffcv._libffcv\n\nlib = CDLL(ffcv._libffcv.__file__)"
    if opened not in text:
        raise BundleError(f"{package / 'libffcv.py'}: not the FFCV 1.0.2 loader the bundle knows how to patch")
    # An extension's file name carries its CPython version (cpython-311); opened by path it loads under 3.12.
    loader.write_text(text.replace(opened, "from pathlib import Path\n\nlib = CDLL(str(next(Path(__file__).parent"
                                                ".glob('_libffcv*.so'))))"))
    return next(target.glob("_libffcv*.so"))


def build_bundle(out: Path, src: Path, images: int, max_res: int, quality: int, workers: int = 0) -> dict:
    """Write the bundle to ``out`` (replacing it); return its manifest (also written as manifest.json)."""
    from imagenet_kit.data.convert import convert
    from imagenet_kit.data.sources import scan_imagefolder

    source = scan_imagefolder(src)
    if not source.items:
        raise BundleError(f"{src}: no images; give --src an ImageFolder split (class folders of JPEGs)")
    if out.exists():
        shutil.rmtree(out)
    python_dir, lib_dir = out / "python", out / "lib"
    lib_dir.mkdir(parents=True)
    extension = _copy_ffcv(python_dir)
    libraries = linked_libraries(extension)
    for library in libraries:
        shutil.copy2(library, lib_dir / library.name)
    for name in PURE_PYTHON_DEPENDENCIES:
        shutil.copytree(Path(importlib.util.find_spec(name).origin).parent, python_dir / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (python_dir / "cv2").mkdir()
    (python_dir / "cv2" / "__init__.py").write_text(CV2_STAND_IN)
    # Every class, the same share of each: the first files of each class folder in sorted order.
    per_class = max(1, images // len(source.classes))
    taken, kept = {}, []
    for path, label in sorted(source.items):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            kept.append((path, label))
    source.items = kept
    beton = out / f"{src.parent.name or 'data'}-{src.name}-{max_res}.beton"
    # All JPEG (the smallest file) in FFCV's smallest pages: the beton is most of the bundle's size.
    report = convert(source, beton, max_res=max_res, jpeg_quality=quality, compress_prob=1.0, workers=workers,
                     page_size=2 << 20)
    manifest = {"beton": beton.name, "images": report["counts"]["written"], "max_res": max_res, "jpeg_quality": quality,
                "src": str(src), "libraries": [p.name for p in libraries], "python": sys.version.split()[0],
                "mib": round(folder_mib(out), 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def working_tree_mib(repo: Path) -> float:
    """What a device run carries besides the bundle: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((repo / name).stat().st_size for name in listed if name and (repo / name).is_file()) / 2**20


def check_size(out: Path, total_mib: float, max_mib: float, images: int, max_res: int) -> None:
    """Refuse a bundle that, with the working tree, is over ``max_mib`` (0: no limit)."""
    if max_mib and total_mib > max_mib:
        raise BundleError(f"{out} and the working tree are {total_mib:.1f} MiB, over --max-mib {max_mib:g}; lower "
                          f"--images (now {images}) or --max-res (now {max_res})")


def activate(bundle: Path) -> dict:
    """Make the bundle's FFCV the one ``import ffcv`` finds, with its own shared libraries; return its manifest.

    Each library is opened by path, dependencies first (``shared_libraries.load_libraries``)."""
    python = str(Path(bundle).resolve() / "python")
    # First on the path before the kit's reader imports torch: torch imports tqdm when it has one, and a bare host's
    # torch must find the bundle's copy, as FFCV will.
    sys.path.insert(0, python)
    from imagenet_kit.bench.gpu_evidence import read_manifest  # the kit's reader: no FFCV, and one of it

    try:
        manifest = read_manifest(bundle)
        load_libraries(Path(manifest["path"]) / "lib")
    except KitError:
        sys.path.remove(python)
        raise
    except OSError as err:
        sys.path.remove(python)
        raise BundleError(f"{bundle}: {err}") from None
    return manifest


@click.group()
def tools_cli():
    """The GPU bundle: build it here, run the kit with it there."""


@tools_cli.command("build")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_DIR, help="the bundle folder (replaced)")
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="an ImageFolder split to take the beton's images from (e.g. imagenette2/train)")
@click.option("--images", type=click.IntRange(min=1), default=2600, help="images in the beton (evenly per class)")
@click.option("--max-res", type=click.IntRange(min=16), default=160, help="longest side stored")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90)
@click.option("-j", "--workers", type=click.IntRange(min=0), default=0, help="conversion processes (0 = all cores)")
@click.option("--max-mib", type=click.FloatRange(min=0), default=0,
              help="refuse a bundle that, with the working tree, is larger than what you can copy to the GPU host "
                   "in one go (0 = no limit)")
def build_command(out, src, images, max_res, jpeg_quality, workers, max_mib):
    """FFCV, its libraries and a real beton in one folder, for bench gpu-evidence --bundle on a bare GPU host."""
    manifest = build_bundle(out, src, images, max_res, jpeg_quality, workers)
    tree = working_tree_mib(Path.cwd()) if (Path.cwd() / ".git").exists() else 0.0
    total = manifest["mib"] + tree
    console.print(f"{out}: {manifest['images']} images at max side {max_res}, {len(manifest['libraries'])} "
                  f"libraries, {manifest['mib']:.1f} MiB; with the working tree ({tree:.1f} MiB) {total:.1f} MiB")
    check_size(out, total, max_mib, images, max_res)


@tools_cli.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("kit_args", nargs=-1, type=click.UNPROCESSED)
def run_command(bundle, kit_args):
    """The kit's CLI (imagenet-kit KIT_ARGS...) with BUNDLE's FFCV and libraries first on the paths."""
    info = activate(bundle)
    console.print(f"bundle {info['path']}: FFCV and {len(info['libraries'])} libraries put first")
    from imagenet_kit.cli import main

    sys.argv = ["imagenet-kit", *kit_args]
    main()


if __name__ == "__main__":
    try:
        tools_cli(standalone_mode=True)
    except KitError as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(2)
