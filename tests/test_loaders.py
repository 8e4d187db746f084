import torch

from imagenet_kit.data.loaders import create_train_loader, create_val_loader, normalize, set_resolution

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
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert [int(y[0]) for _, y in a] == [0, 1, 2, 3]  # sequential order: 8 images per class, classes in order


def test_val_loader_keeps_every_image_and_normalize_is_imagenet_stats(tiny_data):
    loader = create_val_loader(str(tiny_data["beton_dir"] / "tiny-val-64.beton"), 5, 32, CPU, 1)
    sizes = [len(y.reshape(-1)) for _, y in loader]
    assert sizes == [5, 5, 5, 1]  # no drop_last; a last batch of one must not hang FFCV
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    assert x.is_contiguous(memory_format=torch.channels_last)
