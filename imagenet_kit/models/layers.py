"""Building blocks the kit adds to torchvision's ResNets: BlurPool, MaxBlurPool, ResNet-D stems and shortcuts,
squeeze-excitation and self-attention on residual branches, and activation swaps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torchvision.ops import SqueezeExcitation

BINOMIAL_3X3 = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


class BlurPoolConv2d(nn.Module):
    """A strided conv preceded by a fixed 3x3 binomial blur (Zhang 2019), as FFCV's rn50 configs use."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.register_buffer("blur_filter", BINOMIAL_3X3.repeat(conv.in_channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.blur_filter, padding=1, groups=self.conv.in_channels)
        return self.conv(x)


def apply_blurpool(module: nn.Module) -> None:
    # FFCV's rule: every strided conv with at least 16 input channels (so not the stem).
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)


class MaxBlurPool2d(nn.Module):
    """Anti-aliased max pooling (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"; kornia's
    MaxBlurPool2D(3)): the max over 2x2 windows at stride 1, then the 3x3 binomial blur at stride 2.

    The max also covers one padded row and column past the end (kornia pads nothing there), so the output
    is ceil(H/2) x ceil(W/2) at any size, as the max pool and ceil-mode average pool it replaces give.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # -inf past the last row and column: the last window holds only the last row/column.
        if torch.onnx.is_in_onnx_export():
            # Repeating the last row and column gives the same maxima; F.pad's ONNX exporter would leave a
            # reversed Slice that constant folding warns about, and eager runs faster with the pad.
            x = torch.cat([x, x[:, :, -1:]], dim=2)
            x = torch.cat([x, x[:, :, :, -1:]], dim=3)
        else:
            x = F.pad(x, (0, 1, 0, 1), value=float("-inf"))
        x = F.max_pool2d(x, 2, stride=1)
        # The binomial filter is [1,2,1]/4 in each direction, i.e. two 2x2 means: the first (zero-padded,
        # H+1 outputs) gives (x[i-1]+x[i])/2, the second at stride 2 (x[2j-1]+2x[2j]+x[2j+1])/4, the 3x3 blur
        # with zero padding 1. Measured 2.3x faster for forward + backward than the depthwise conv on this
        # kit's CPU (bf16, channels_last), where that conv's backward was 13% of a ResNet-50-D step.
        x = F.avg_pool2d(x, 2, stride=1, padding=1)
        return F.avg_pool2d(x, 2, stride=2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the separable blur hold the fixed filter as a buffer; it has no state.
        state_dict.pop(prefix + "blur_filter", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def apply_maxblurpool(model: torchvision.models.ResNet) -> None:
    model.maxpool = MaxBlurPool2d()
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        shortcut = stage[0].downsample
        if shortcut is not None and isinstance(shortcut[0], nn.AvgPool2d):  # the D archs' pooled shortcuts
            shortcut[0] = MaxBlurPool2d()


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def to_resnet_d(model: torchvision.models.ResNet) -> None:
    """ResNet-D (He et al. 2019, "Bag of Tricks", Fig. 2; fastai's xresnet, timm's resnet50d) from torchvision's
    ResNet, whose bottlenecks already stride on the 3x3 conv.

    The 7x7 stem conv becomes three 3x3 convs (32, 32, 64 channels): the same stride and receptive field
    for less compute per output. Each strided projection shortcut averages 2x2 first and then runs its 1x1
    conv at stride 1, so it no longer drops three quarters of its input. The stem keeps torchvision's bn1,
    relu and max pool after the new convs, so at 224 px the shapes of every stage are unchanged.
    """
    stem = [*_conv_bn_relu(3, 32, stride=2), *_conv_bn_relu(32, 32), *_conv_bn_relu(32, 64)]
    model.conv1 = nn.Sequential(*stem[:-2])  # the last conv's BN and ReLU are torchvision's bn1, relu
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        shortcut = stage[0].downsample
        if shortcut is None or shortcut[0].stride == (1, 1):
            continue
        conv, bn = shortcut
        conv.stride = (1, 1)
        stage[0].downsample = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), conv, bn)


class SimpleSelfAttention(nn.Module):
    """fastai's SimpleSelfAttention (Doria 2019, github.com/sdoria/SimpleSelfAttention; ks=1, sym=False), which
    torch lacks: ``x + gamma * (x x^T) W x`` over the flattened positions, W a spectrally normalised 1x1 conv.

    Cheaper than query-key-value attention: x x^T is channels x channels, so the cost grows with the positions
    only linearly. gamma starts at 0, so the block starts as the identity and training decides how much to use.
    """

    def __init__(self, channels: int):
        super().__init__()
        conv = nn.Conv1d(channels, channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (batch, channels, positions)
        attended = torch.bmm(torch.bmm(flat, flat.transpose(1, 2)), self.conv(flat))
        return (flat + self.gamma * attended).view_as(x)


def _se_channels(channels: int, reduction: int) -> int:
    # fastai's SEModule: channels // reduction rounded up to a multiple of 8
    return max(8, -(-(channels // reduction) // 8) * 8)


def extend_residual_branches(model: torchvision.models.ResNet, se_reduction: int, self_attention: bool) -> None:
    """Append SE and self-attention to residual branches, after their last BatchNorm (before the addition),
    in fastai's order: SE on every block, self-attention on layer1's last block.

    The last BN becomes the first module of a Sequential in its place, so torchvision's forward is unchanged,
    and zero_init_residual still zeroes the whole branch at the start (SE and attention of zeros are zeros).
    """
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    for block in blocks:
        name = "bn3" if isinstance(block, torchvision.models.resnet.Bottleneck) else "bn2"
        bn = getattr(block, name)
        extra = []
        if se_reduction:
            extra.append(SqueezeExcitation(bn.num_features, _se_channels(bn.num_features, se_reduction)))
        if self_attention and block is model.layer1[-1]:
            extra.append(SimpleSelfAttention(bn.num_features))
        if extra:
            setattr(block, name, nn.Sequential(bn, *extra))


ACTIVATION_MODULES = {"mish": nn.Mish, "silu": nn.SiLU}


def swap_relu(module: nn.Module, activation: type[nn.Module]) -> None:
    # Every ReLU is a module attribute in these ResNets (torchvision's blocks reuse one per block), so
    # swapping the modules swaps every activation; torch's Mish and SiLU are drop-ins, stateless like ReLU.
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, activation(inplace=child.inplace))
        else:
            swap_relu(child, activation)
