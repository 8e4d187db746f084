import pytest
import torch

from imagenet_kit.model import BlurPoolConv2d, create_model, create_optimizer, param_groups


@pytest.mark.parametrize("arch, params_m", [("resnet18", 11.69), ("resnet50", 25.56)])
def test_parameter_counts_match_torchvision(arch, params_m):
    model = create_model(arch, 1000)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)


def test_zero_init_last_bn_of_each_block():
    model = create_model("resnet50", 10, zero_init_residual=True)
    assert torch.count_nonzero(model.layer1[0].bn3.weight) == 0
    assert torch.count_nonzero(create_model("resnet50", 10, zero_init_residual=False).layer1[0].bn3.weight) > 0


def test_no_weight_decay_on_any_bn_or_bias_including_downsample():
    model = create_model("resnet50", 10)
    decay, no_decay = param_groups(model, 1e-4)
    ids_no_decay = {id(p) for p in no_decay["params"]}
    downsample_bn = model.layer1[0].downsample[1]
    assert id(downsample_bn.weight) in ids_no_decay and id(downsample_bn.bias) in ids_no_decay
    assert id(model.fc.bias) in ids_no_decay
    assert id(model.fc.weight) not in ids_no_decay
    bn_count = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert len(no_decay["params"]) == 2 * bn_count + 1  # gamma+beta of every BN, fc.bias
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0


def test_blurpool_wraps_strided_convs_only():
    model = create_model("resnet18", 10, blurpool=True)
    wrapped = [m for m in model.modules() if isinstance(m, BlurPoolConv2d)]
    assert len(wrapped) == 3 + 3  # conv1 + downsample conv of layers 2-4 (the 3-channel stem is excluded)
    assert not isinstance(model.conv1, BlurPoolConv2d)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet50"):
        create_model("vgg16", 10)


def test_adamw_keeps_the_no_decay_groups_and_uses_momentum_as_beta1():
    model = create_model("resnet18", 10)
    optimizer = create_optimizer(param_groups(model, 0.05), "adamw", lr=3e-3, momentum=0.9, beta2=0.99)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99) and optimizer.param_groups[0]["lr"] == 3e-3
    # Decoupled decay: a weight with zero gradient shrinks by lr * wd per step, a BN weight not at all.
    conv, bn = model.conv1.weight, model.bn1.weight
    before_conv, before_bn = conv.detach().clone(), bn.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(conv.detach(), before_conv * (1 - 3e-3 * 0.05))
    torch.testing.assert_close(bn.detach(), before_bn)


def test_unknown_optimizer_names_the_key():
    with pytest.raises(ValueError, match=r"optim.optimizer.*sgd, adamw"):
        create_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], "lamb")
