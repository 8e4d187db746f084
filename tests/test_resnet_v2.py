"""The pre-activation ResNet-50 (--arch resnet50v2): size, cost, structure, and the kit's uses of an arch."""
import pytest
import torch
from test_export import make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imagenet_kit.config.schema import ARCHS
from imagenet_kit.models.factory import create_model
from imagenet_kit.models.layers import BlurPoolConv2d
from imagenet_kit.models.resnet_v2 import PreActBottleneck
from imagenet_kit.optim.optimizers import param_groups
from imagenet_kit.serve.export import FORMATS, TOLERANCES, export_model


def blocks(model):
    return [m for m in model.modules() if isinstance(m, PreActBottleneck)]


def test_registered_and_trains_at_64px():
    assert "resnet50v2" in ARCHS
    model = create_model("resnet50v2", 10, zero_init_residual=False)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_parameter_count_matches_the_paper():
    params = sum(p.numel() for p in create_model("resnet50v2", 1000).parameters())
    assert params == 25_549_352  # the module docstring's figure
    assert params == pytest.approx(25.5e6, rel=0.01)  # He et al.'s ResNet-50


def test_flops_at_224_match_resnet50():
    def multiply_adds(model):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.randn(1, 3, 224, 224))
        return counter.get_total_flops() / 2  # the counter counts a multiply-add as two FLOPs

    macs = multiply_adds(create_model("resnet50v2", 1000))
    assert macs == pytest.approx(4.1e9, rel=0.05)
    assert macs == multiply_adds(create_model("resnet50", 1000))  # the same convolutions, reordered


def test_every_block_is_pre_activation():
    model = create_model("resnet50v2", 10, zero_init_residual=False).eval()
    calls, seen = [], {}  # modules in call order; (input, output) of each one's first call

    def record(name):
        def hook(module, args, out):
            calls.append((name, module))
            seen.setdefault(name, (args[0].clone(), out.clone()))  # clones: the in-place ReLUs come later
        return hook

    for name, module in model.named_modules():
        if not list(module.children()) or isinstance(module, PreActBottleneck):
            module.register_forward_hook(record(name))
    model(torch.randn(1, 3, 64, 64))
    order = list(calls)  # the checks below call the BNs again

    relu = torch.relu
    for block in blocks(model):
        p = next(n for n, m in model.named_modules() if m is block)
        x, out = seen[p]
        io = {n[len(p) + 1:]: seen[n] for n in seen if n.startswith(p + ".")}
        assert isinstance(next(m for n, m in order if n.startswith(p + ".")), nn.BatchNorm2d)  # BN first
        # every conv of the branch sees a BN-ReLU'd input, and nothing follows the last one but the addition
        assert torch.equal(io["conv1"][0], relu(block.bn1(x)))
        assert torch.equal(io["conv2"][0], relu(block.bn2(io["conv1"][1])))
        assert torch.equal(io["conv3"][0], relu(block.bn3(io["conv2"][1])))
        if block.downsample is None:
            assert torch.equal(out, io["conv3"][1] + x)
        else:  # the projection takes the pre-activated input, and no BN follows it
            assert isinstance(block.downsample, nn.Conv2d)
            assert torch.equal(io["downsample"][0], relu(block.bn1(x)))
            assert torch.equal(out, io["conv3"][1] + io["downsample"][1])
    assert [n for n, _ in order[-4:]] == ["final_bn", "relu", "avgpool", "fc"]  # BN-ReLU before pooling
    assert sum(block.downsample is not None for block in blocks(model)) == 4  # one projection per stage


def test_zero_init_residual_zeroes_the_last_conv_so_blocks_start_as_identity():
    model = create_model("resnet50v2", 10, zero_init_residual=True).eval()
    assert all(torch.count_nonzero(b.conv3.weight) == 0 for b in blocks(model))
    identity_block = model.layer1[1]
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        assert torch.equal(identity_block(x), x)
    assert torch.count_nonzero(create_model("resnet50v2", 10, zero_init_residual=False).layer1[0].conv3.weight) > 0


def test_param_groups_put_every_bn_in_no_decay():
    model = create_model("resnet50v2", 10)
    decay, no_decay = param_groups(model, 1e-4)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(id(m.weight) in no_decay_ids and id(m.bias) in no_decay_ids for m in bns)
    assert len(no_decay["params"]) == 2 * len(bns) + 1  # gamma+beta of every BN, fc.bias
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(decay["params"]) == len(convs) + 1  # every conv weight, fc.weight


def test_blurpool_wraps_the_strided_convs():
    model = create_model("resnet50v2", 10, blurpool=True)
    wrapped = [m for m in model.modules() if isinstance(m, BlurPoolConv2d)]
    assert len(wrapped) == 3 + 3  # conv2 and the projection of the first block of layers 2-4
    assert not isinstance(model.conv1, BlurPoolConv2d)  # the 3-channel stem is excluded
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_export_parity(tmp_path):
    run = make_fake_run(tmp_path, arch="resnet50v2")
    info = export_model(run / "checkpoints" / "best.pt", run / "export")  # raises if any format misses parity
    assert info["arch"] == "resnet50v2"
    assert set(info["formats"]) == set(FORMATS)
    for fmt, entry in info["formats"].items():
        assert entry["max_abs_diff"] <= TOLERANCES[fmt], fmt
