"""PyTorch models with the module structure and parameter names of A&B BNN's networks
(Ruichen0424/AB-BNN, `Network/ReActNet_{18,A}_{Qa,Qaw}.py` and `Network/BNN.py`), written
for the tests from that published structure: ReActNet-18 / -34 (`ResNet`) and ReActNet-A
(`Reactnet`), stage 1 (real scaled-WS weights, `Qa`) or 2 (binary, `Qaw`), CIFAR or
ImageNet stem, in eval mode.

What differs from the paper's reference (`torch_models`): the sign's gradient is a steep
sigmoid's, every PReLU is a `QPReLU` (`L_alpha`, slopes `2 ** round(L)`), a bias before a
sign adds `bias / beta` to the unscaled input (the "mask"), shortcuts take the unscaled
input, alpha is 0.25, ReActNet-18's binary convolution is `conv1`.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.torch_models import Conv, reactnet_a_schedule

ALPHA = 0.25
STEEPNESS = 3.0


class SigmoidSign(torch.autograd.Function):
    """sign(x); gradient `2 a s(a x) (1 - s(a x))`, s the logistic function."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(STEEPNESS * x)
        return grad * 2 * STEEPNESS * s * (1 - s)


class RoundStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class QPReLU(nn.Module):
    """`L_alpha` (C,), -3 at first; PReLU with slopes `2 ** round(L_alpha)`."""

    def __init__(self, channels):
        super().__init__()
        self.L_alpha = nn.Parameter(torch.full((channels,), -3.0))

    def forward(self, x):
        return F.prelu(x, torch.pow(2.0, RoundStraightThrough.apply(self.L_alpha)))


class MaskedBias(nn.Module):
    """`bias` (1, C, 1, 1); adds `bias / beta` (beta 1 when not given)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x, beta=1.0):
        return x + self.bias / beta


_recorded: list | None = None


@contextlib.contextmanager
def recording_sign_inputs():
    """Collects what every `binarize` binarizes (NHWC arrays, in forward order)."""
    global _recorded
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


def binarize(bias: MaskedBias, x, beta):
    """A&B's sign of a block input: `sign(beta * (x + bias / beta))`."""
    inputs = bias(x, beta) * beta
    if _recorded is not None:
        _recorded.append(inputs.detach().numpy().transpose(0, 2, 3, 1))
    return SigmoidSign.apply(inputs)


class Block18(nn.Module):
    def __init__(self, cin, cout, stride, binary, beta, downsample):
        super().__init__()
        self.beta = beta
        self.move0 = MaskedBias(cin)
        self.conv1 = Conv(cin, cout, 3, stride, 1, ws=True, binary=binary)
        self.move1, self.prelu, self.move2 = MaskedBias(cout), QPReLU(cout), MaskedBias(cout)
        self.downsample = None
        if downsample:
            conv = Conv(cin, cout, 1, 1, 0, ws=True, binary=binary)
            self.downsample = nn.Sequential(nn.AvgPool2d(2, stride), conv)

    def forward(self, x):
        out = self.conv1(binarize(self.move0, x, self.beta))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.move2(self.prelu(self.move1(ALPHA * out + shortcut)))


class ResNet(nn.Module):
    """`conv1`, `layer1..4`, `fc`: ReActNet-18 with (4, 4, 4, 4) blocks, -34 (6, 8, 12, 6)."""

    def __init__(self, stage, num_classes, stem="imagenet", blocks=(4, 4, 4, 4)):
        super().__init__()
        self.imagenet = stem == "imagenet"
        k, s, p = (7, 2, 3) if self.imagenet else (3, 1, 1)
        self.conv1 = Conv(3, 64, k, s, p, ws=True, binary=False)
        variance, cin = 1.0, 64
        for i, (cout, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stride = 1 if i == 0 else 2
            downsample = stride != 1 or cin != cout
            layer = [Block18(cin, cout, stride, stage == 2, variance**-0.5, downsample)]
            if downsample:
                variance = 1.0
            for _ in range(count - 1):
                layer.append(Block18(cout, cout, 1, stage == 2, variance**-0.5, False))
                variance += ALPHA**2
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            cin = cout
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if self.imagenet:
            x = F.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class BlockA(nn.Module):
    def __init__(self, cin, cout, stride, binary, beta1, beta2):
        super().__init__()
        self.cin, self.cout, self.stride, self.beta1, self.beta2 = cin, cout, stride, beta1, beta2
        self.move11 = MaskedBias(cin)
        self.binary_3x3 = Conv(cin, cin, 3, stride, 1, ws=True, binary=binary)
        self.move12, self.prelu1, self.move13 = MaskedBias(cin), QPReLU(cin), MaskedBias(cin)
        self.move21 = MaskedBias(cin)
        if cin == cout:
            self.binary_pw = Conv(cin, cout, 1, 1, 0, ws=True, binary=binary)
        else:
            self.binary_pw_down1 = Conv(cin, cin, 1, 1, 0, ws=True, binary=binary)
            self.binary_pw_down2 = Conv(cin, cin, 1, 1, 0, ws=True, binary=binary)
        self.move22, self.prelu2, self.move23 = MaskedBias(cout), QPReLU(cout), MaskedBias(cout)

    def forward(self, x):
        branch = self.binary_3x3(binarize(self.move11, x, self.beta1))
        shortcut = F.avg_pool2d(x, 2) if self.stride == 2 else x
        out1 = self.move13(self.prelu1(self.move12(shortcut + ALPHA * branch)))
        signs = binarize(self.move21, out1, self.beta2)
        if self.cin == self.cout:
            out2 = ALPHA * self.binary_pw(signs) + out1
        else:
            halves = (self.binary_pw_down1(signs), self.binary_pw_down2(signs))
            out2 = torch.cat([ALPHA * half + out1 for half in halves], dim=1)
        return self.move23(self.prelu2(self.move22(out2)))


class FirstConv(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.conv1 = Conv(3, 32, 3, stride, 1, ws=True, binary=False)

    def forward(self, x):
        return self.conv1(x)


class Reactnet(nn.Module):
    """`feature.0` the first convolution (stride 2, or 1 for CIFAR), `feature.1..13`, `fc`."""

    def __init__(self, stage, num_classes, stem="imagenet"):
        super().__init__()
        self.feature = nn.ModuleList([FirstConv(2 if stem == "imagenet" else 1)])

        for cin, cout, stride, beta1, beta2 in reactnet_a_schedule(ALPHA):
            self.feature.append(BlockA(cin, cout, stride, stage == 2, beta1, beta2))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        for module in self.feature:
            x = module(x)
        return self.fc(x.mean(dim=(2, 3)))


def away_from_the_mean(weight: torch.Tensor, margin: float = 1e-3) -> torch.Tensor:
    """`weight` (O, I, k, k) centered per output channel, no entry closer to 0 than
    `margin` times the channel's std: a binary weight's sign is that of `W - mean(W)`, and
    within float32 rounding of 0 two engines (two orders of summation for the mean) could
    binarize it differently, which changes every output of the channel."""
    centered = weight.double() - weight.double().mean(dim=(1, 2, 3), keepdim=True)
    floor = margin * centered.std(dim=(1, 2, 3), keepdim=True)
    pushed = torch.where(centered >= 0, 1.0, -1.0) * torch.maximum(centered.abs(), floor)
    return (pushed / weight[0].numel() ** 0.5).float()


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random parameters, `L_alpha` spread over -5..1 (rounding to six slopes), eval mode."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Conv):
                module.weight.copy_(
                    away_from_the_mean(torch.randn(module.weight.shape, generator=generator))
                )
                module.gain.copy_(uniform(module.gain.shape, 0.5, 1.5))
            elif isinstance(module, MaskedBias):
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, QPReLU):
                module.L_alpha.copy_(uniform(module.L_alpha.shape, -5.4, 1.4))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(
                    module.in_features**-0.5 * torch.randn(module.weight.shape, generator=generator)
                )
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def build(backbone: str, stage: int, num_classes: int, stem: str, seed: int = 0) -> nn.Module:
    """A randomized A&B model: backbone "reactnet18", "reactnet34" or "reactnet_a"."""
    if backbone == "reactnet_a":
        net = Reactnet(stage, num_classes, stem)
    else:
        blocks = (4, 4, 4, 4) if backbone == "reactnet18" else (6, 8, 12, 6)
        net = ResNet(stage, num_classes, stem, blocks)
    return randomize(net, seed)


def save_released(net: nn.Module, path) -> None:
    """As A&B's released `*_step2.h5` files: a `DataParallel` state dict (`module.` keys)
    written by `torch.save`, under whatever name `path` has."""
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
