import pytest
import torch
from torchvision.ops import SqueezeExcitation

from imagenet_kit.config import OptimConfig, load_config
from imagenet_kit.models.factory import create_model, fold_parametrizations
from imagenet_kit.models.layers import BINOMIAL_3X3, BlurPoolConv2d, MaxBlurPool2d, SimpleSelfAttention
from imagenet_kit.optim.lookahead import Lookahead
from imagenet_kit.optim.optimizers import create_optimizer, param_groups


@pytest.mark.parametrize("arch, options, params_m", [
    ("resnet18", {}, 11.69), ("resnet50", {}, 25.56), ("resnet50d", {}, 25.58),
    ("resnext50d", {}, 25.05),  # torchvision's resnext50_32x4d (25.03M) with the deep stem's 19k more
    ("resnet50", {"se_reduction": 16}, 28.09),  # SE-ResNet-50: 28.1M in the SENet paper (Table 1)
])
def test_parameter_counts_match_the_published_models(arch, options, params_m):
    model = create_model(arch, 1000, **options)
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


def test_resnet50d_has_the_deep_stem_and_average_pooled_shortcuts():
    model = create_model("resnet50d", 10)
    stem_convs = [m for m in model.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem_convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    assert model.layer1[0].downsample[0].stride == (1, 1)  # stage 1 does not downsample: left as is
    for stage in (model.layer2, model.layer3, model.layer4):
        pool, conv, _ = stage[0].downsample
        assert isinstance(pool, torch.nn.AvgPool2d) and conv.stride == (1, 1) and conv.kernel_size == (1, 1)
    # Same stage shapes as resnet50 at a size that is not a multiple of 32 (ceil_mode pooling).
    x = torch.randn(1, 3, 100, 100)
    features = {}
    for arch, net in (("resnet50", create_model("resnet50", 10)), ("resnet50d", model)):
        net.eval()
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        features[arch] = [tuple((h := stage(h)).shape) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
    assert features["resnet50d"] == features["resnet50"] == [(1, 256, 25, 25), (1, 512, 13, 13), (1, 1024, 7, 7),
                                                             (1, 2048, 4, 4)]
    # zero-init still empties every residual branch, and the new stem convs get torchvision's init.
    assert torch.count_nonzero(model.layer4[2].bn3.weight) == 0
    assert stem_convs[1].weight.std().item() == pytest.approx((2 / (32 * 9)) ** 0.5, rel=0.1)


def test_se_on_every_branch_and_attention_on_layer1s_last_block():
    model = create_model("resnext50d", 10, se_reduction=16, self_attention=True)
    blocks = [(f"layer{i}.{j}", block) for i in range(1, 5) for j, block in enumerate(getattr(model, f"layer{i}"))]
    for name, block in blocks:
        bn, se, *attention = block.bn3  # the branch's last BN, then SE, then (one block only) attention
        assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(se, SqueezeExcitation)
        # fastai's SEModule width: channels // 16, rounded up to a multiple of 8
        assert (se.fc1.in_channels, se.fc1.out_channels) == (bn.num_features, bn.num_features // 16)
        assert [type(m) for m in attention] == ([SimpleSelfAttention] if name == "layer1.2" else [])
    assert model.layer1[0].conv2.groups == 32  # ResNeXt's grouped 3x3 convs
    assert create_model("resnet18", 10, se_reduction=16).layer1[0].bn2[1].fc1.out_channels == 8  # 64 // 16, up to 8
    # zero-init still empties each branch: its last BN is zero, so SE and attention see and give zeros
    assert torch.count_nonzero(model.layer2[0].bn3[0].weight) == 0


def test_simple_self_attention_is_x_plus_gamma_xxt_wx_with_a_unit_norm_w():
    torch.manual_seed(0)
    attention = SimpleSelfAttention(8).eval()
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(attention(x), x)  # gamma starts at 0: the identity
        attention.gamma.fill_(0.5)
        w = attention.conv.weight[:, :, 0]  # the spectrally normalised weight
        flat = x.flatten(2)
        expected = flat + 0.5 * (flat @ flat.transpose(1, 2)) @ (w @ flat)
        torch.testing.assert_close(attention(x), expected.view_as(x))
        assert torch.linalg.matrix_norm(w, 2).item() == pytest.approx(1.0, abs=1e-3)
        # folded for export: a plain conv with that weight, the same output
        before = attention(x)
        fold_parametrizations(attention)
        assert type(attention.conv) is torch.nn.Conv1d and "weight" in dict(attention.conv.named_parameters())
        torch.testing.assert_close(attention(x), before)


@pytest.mark.parametrize("height, width", [(6, 6), (5, 7)])
def test_maxblurpool_is_a_2x2_max_then_a_binomial_blur_at_stride_2(height, width):
    x = torch.arange(2.0 * height * width).reshape(1, 2, height, width) % 7
    windows = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate").unfold(2, 2, 1).unfold(3, 2, 1)
    maxed = windows.amax(dim=(-1, -2))  # HxW: max of each 2x2 window, the last row/column repeated
    blur = BINOMIAL_3X3.repeat(2, 1, 1, 1)
    blurred = torch.nn.functional.conv2d(maxed, blur, padding=1, stride=2, groups=2)  # kornia's depthwise blur
    assert blurred.shape[-2:] == (-(-height // 2), -(-width // 2))
    torch.testing.assert_close(MaxBlurPool2d()(x), blurred)
    assert BINOMIAL_3X3.sum().item() == 1.0


def test_maxblurpool_loads_checkpoints_that_stored_its_filter():
    # Checkpoints written before the blur became two average pools hold a "blur_filter" buffer per pool.
    model = create_model("resnet50d", 10, maxblurpool=True)
    state = model.state_dict()
    old_state = {**state, "maxpool.blur_filter": BINOMIAL_3X3.repeat(64, 1, 1, 1),
                 "layer2.0.downsample.0.blur_filter": BINOMIAL_3X3.repeat(256, 1, 1, 1)}
    assert not any(key.endswith("blur_filter") for key in state)
    model.load_state_dict(old_state)  # strict: any other unexpected key still fails
    with pytest.raises(RuntimeError, match="layer2.0.downsample.0.stray"):
        model.load_state_dict({**state, "layer2.0.downsample.0.stray": torch.zeros(1)})


@pytest.mark.parametrize("arch, pooled_shortcuts", [("resnet50d", 3), ("resnext50d", 3), ("resnet18", 0)])
def test_maxblurpool_replaces_the_stem_pool_and_the_pooled_shortcuts(arch, pooled_shortcuts):
    plain, model = create_model(arch, 10).eval(), create_model(arch, 10, maxblurpool=True).eval()
    assert isinstance(model.maxpool, MaxBlurPool2d)
    assert sum(isinstance(m, MaxBlurPool2d) for m in model.modules()) == 1 + pooled_shortcuts
    assert not any(isinstance(m, (torch.nn.AvgPool2d, torch.nn.MaxPool2d)) for m in model.modules())
    # same shapes at every stage, also where a side is odd (100 px: 25, 13, 7, 4)
    x = torch.randn(1, 3, 100, 100)
    shapes = {}
    for name, net in (("plain", plain), ("maxblur", model)):
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        shapes[name] = [tuple((h := stage(h)).shape) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
    assert shapes["maxblur"] == shapes["plain"]


def test_adamw_keeps_the_no_decay_groups_and_uses_momentum_as_beta1():
    model = create_model("resnet18", 10)
    optimizer = create_optimizer(param_groups(model, 0.05), OptimConfig(optimizer="adamw", momentum=0.9, beta2=0.99),
                                 3e-3)
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


def test_radam_decays_decoupled_and_cycles_beta1():
    model = create_model("resnet18", 10)
    optimizer = create_optimizer(param_groups(model, 0.01), OptimConfig(optimizer="radam", momentum=0.95, beta2=0.99),
                                 8e-3)
    assert isinstance(optimizer, torch.optim.RAdam) and optimizer.param_groups[0]["decoupled_weight_decay"]
    assert optimizer.param_groups[0]["betas"] == (0.95, 0.99)
    conv = model.conv1.weight
    before = conv.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradient: only the decoupled decay moves the weight
    torch.testing.assert_close(conv.detach(), before * (1 - 8e-3 * 0.01))


@pytest.mark.parametrize("activation, module", [("mish", torch.nn.Mish), ("silu", torch.nn.SiLU)])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50d", "resnet50v2"])
def test_activation_replaces_every_relu(arch, activation, module):
    torch.manual_seed(0)
    relu = create_model(arch, 10).eval()
    swapped = create_model(arch, 10, activation=activation).eval()
    assert not any(isinstance(m, torch.nn.ReLU) for m in swapped.modules())
    assert sum(isinstance(m, module) for m in swapped.modules()) == sum(isinstance(m, torch.nn.ReLU)
                                                                        for m in relu.modules())
    swapped.load_state_dict(relu.state_dict())  # same parameters: only the nonlinearity differs
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(relu(x), swapped(x))


def test_optimizer_settings_reach_the_optimizer():
    cfg = load_config("sample", ["optim.optimizer=radam", "optim.momentum=0.95", "optim.beta2=0.99", "optim.eps=1e-6",
                                 "optim.lookahead_k=6", "optim.lookahead_alpha=0.5"])
    optimizer = create_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], cfg.optim, 0.008)
    assert isinstance(optimizer, Lookahead) and (optimizer.k, optimizer.alpha) == (6, 0.5)
    assert isinstance(optimizer.inner, torch.optim.RAdam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["decoupled_weight_decay"]) == (0.008, (0.95, 0.99), 1e-6,
                                                                                            True)
    plain = create_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], OptimConfig(optimizer="adamw"), 0.1)
    assert type(plain) is torch.optim.AdamW and plain.param_groups[0]["eps"] == 1e-8
