import numpy as np
import pytest
import torch

from imagenet_kit.data.loaders import create_train_loader, create_val_loader, random_square_crop, set_resolution
from imagenet_kit.data.pixels import normalize

CPU = torch.device("cpu")


def _train_beton(tiny_data) -> str:
    return str(tiny_data["beton_dir"] / "tiny-train-64.beton")


def test_train_batches_are_uint8_nchw_and_resolution_changes_between_epochs(tiny_data):
    loader = create_train_loader(_train_beton(tiny_data), 8, 32, CPU, 1)
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
    assert labels.shape == (8,) and int(labels.max()) < 4
    set_resolution(loader, 48)  # progressive resizing: the same loader, a new size
    assert next(iter(loader))[0].shape == (8, 3, 48, 48)
    assert len(loader) == 4  # 32 images, drop_last


def test_min_scale_reaches_the_crop_decoder(tiny_data):
    loader = create_train_loader(_train_beton(tiny_data), 8, 32, CPU, 1, min_scale=0.35)
    assert tuple(loader.pipeline_specs["image"].decoder.scale) == (0.35, 1.0)


def test_deterministic_mode_replays_identical_batches(tiny_data):
    def first_epoch():
        loader = create_train_loader(_train_beton(tiny_data), 8, 32, CPU, 1, deterministic=True)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b = first_epoch(), first_epoch()
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=False))
    assert [int(y[0]) for _, y in a] == [0, 1, 2, 3]  # sequential order: 8 images per class, classes in order


def test_val_loader_keeps_every_image_and_normalize_is_imagenet_stats(tiny_data):
    loader = create_val_loader(str(tiny_data["beton_dir"] / "tiny-val-64.beton"), 5, 32, CPU, 1)
    sizes = [len(y.reshape(-1)) for _, y in loader]
    assert sizes == [5, 5, 5, 1]  # no drop_last; a last batch of one must not hang FFCV
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def gradient_beton(tmp_path_factory) -> str:
    """Eight copies of a 64x32 (wide) picture whose red channel is the column and green the row, as raw pixels."""
    from PIL import Image

    from imagenet_kit.data.convert import convert
    from imagenet_kit.data.sources import scan_imagefolder

    base = tmp_path_factory.mktemp("gradient")
    cols, rows = np.meshgrid(np.arange(64), np.arange(32))
    pixels = np.stack([cols * 4, rows * 8, np.zeros_like(cols)], axis=-1).astype(np.uint8)
    (base / "images" / "n0").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(pixels).save(base / "images" / "n0" / f"{i}.png")
    beton = base / "gradient.beton"
    convert(scan_imagefolder(base / "images"), beton, max_res=64, compress_prob=0.0, workers=1)
    return str(beton)


def test_random_square_crop_spans_the_shorter_side_at_random_positions():
    tops_lefts = {random_square_crop(60, 100, None, 1.0)[:2] for _ in range(400)}
    assert {top for top, _ in tops_lefts} == {0}  # the full height, every time
    assert {left for _, left in tops_lefts} == set(range(41))  # every placement of a 60-wide square in 100
    assert random_square_crop(60, 100, None, 1.0)[2:] == (60, 60)
    assert random_square_crop(100, 60, None, 0.5)[2:] == (30, 30)


def test_random_square_training_crops_never_zoom(gradient_beton):
    loader = create_train_loader(gradient_beton, 8, 32, CPU, 1, crop="random_square")
    lefts = []
    for _ in range(8):  # 64 draws of 33 placements: both ends turn up bar a 1e-4 chance
        for images, _ in loader:
            green, red = images[:, 1].float(), images[:, 0].float()
            # every crop holds the whole height (rows 0..31: green 0..248) at its native scale 1:1 ...
            assert torch.allclose(green[:, 0].mean(1), torch.zeros(8), atol=8)
            assert torch.allclose(green[:, -1].mean(1), torch.full((8,), 248.0), atol=8)
            # ... and 32 of the 64 columns (red spans 31 x 4 = 124 across the crop, flipped or not)
            assert torch.allclose((red[:, :, -1] - red[:, :, 0]).abs().mean(1), torch.full((8,), 124.0), atol=8)
            lefts += red.amin(dim=(1, 2)).tolist()
    assert min(lefts) < 20 and max(lefts) > 110  # the square moves across the picture


def test_val_crop_ratio_sets_the_share_of_the_shorter_side(gradient_beton):
    def rows_and_columns(ratio):
        images, _ = next(iter(create_val_loader(gradient_beton, 8, 16, CPU, 1, crop_ratio=ratio)))
        green, red = images[0, 1].float(), images[0, 0].float()
        return green[:, 0].max() - green[:, 0].min(), red[0].max() - red[0].min()

    full_rows, full_cols = rows_and_columns(1.0)
    half_rows, half_cols = rows_and_columns(0.5)
    assert full_rows > 220 and full_cols > 110  # all 32 rows, the middle 32 of 64 columns
    assert 100 < half_rows < 140 and 50 < half_cols < 70  # the middle 16 rows and columns


@pytest.mark.parametrize("batch", [2, 8], ids=["mid-epoch", "epoch-all-made"])
def test_finishing_an_epoch_early_ends_its_loader_thread(tiny_data, batch):
    """finish_epoch, as training calls it after a stop mid-epoch: the FFCV thread has ended when it returns. One still
    running its pipeline while the process exits can abort it ("terminate called without an active exception",
    seen once after `docker compose stop` in make image-check). With batch 8 (4 batches of the 32 images) the thread
    makes its last batch and then blocks putting its end marker into the full queue, which close() alone never ends."""
    import time

    from imagenet_kit.data.loaders import finish_epoch
    batches = iter(create_train_loader(_train_beton(tiny_data), batch, 32, CPU, 1))
    next(batches)  # one batch taken: the thread is filling its queue
    time.sleep(1)  # batch 8: time to make the other 3 batches, which fill the queue (FFCV's batches_ahead)
    assert batches.is_alive()
    start = time.monotonic()
    finish_epoch(batches)
    assert not batches.is_alive() and time.monotonic() - start < 10
    finish_epoch(iter([(1, 2)]))  # a plain iterable: nothing to close or join


def test_every_train_crop_the_config_allows_has_a_decoder():
    """The config refuses any other crop when it loads (test_config), so the loader can trust its value."""
    from imagenet_kit.config.schema import choices
    from imagenet_kit.data.loaders import TRAIN_DECODERS
    assert set(TRAIN_DECODERS) == set(choices("train.crop"))


def _scaled(factor):
    """A pipeline stage as FFCV's generate_code makes one: a closure over its settings."""
    def scale(x):
        return x * factor
    return scale


def test_a_pipeline_function_is_compiled_once_per_code_and_closure_values():
    from ffcv.pipeline.compiler import Compiler

    twice = Compiler.compile(_scaled(3)), Compiler.compile(_scaled(3))
    assert twice[0] is twice[1] and twice[0](2) == 6  # another Loader with the same stage: no new compile
    assert Compiler.compile(_scaled(4)) is not twice[0] and Compiler.compile(_scaled(4))(2) == 8
    assert Compiler.compile(_scaled(3.0)) is not twice[0]  # 3.0 == 3, but numba types it otherwise
    first, second = np.array([1, 2]), np.array([1, 2])  # equal arrays, two objects: frozen separately
    assert Compiler.compile(_scaled(first)) is not Compiler.compile(_scaled(second))
    assert Compiler.compile(_scaled(first)) is Compiler.compile(_scaled(first))


def test_a_second_loader_of_the_same_settings_gives_the_same_batches(tiny_data):
    beton = str(tiny_data["beton_dir"] / "tiny-val-64.beton")
    first, second = (next(iter(create_val_loader(beton, 8, 32, torch.device("cpu"), 1))) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = next(iter(create_val_loader(beton, 8, 48, torch.device("cpu"), 1)))  # another size: its own code
    assert other[0].shape[-1] == 48
