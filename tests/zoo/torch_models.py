"""PyTorch models with the module structure and parameter names of the reference's
ReActNet-A and ReActNet-18 (VITA-Group/BNN_NoBN `models/Qa*_reactnet_{A,18}_{bn,bf,none}.py`,
whose bn variant has ReActNet's own names), written for the tests from that published
structure: one class per backbone for every variant ("bn", "nobn" (the reference's "bf"),
"none") and stage (1: real weights, 2: binary weights), in eval mode.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

ALPHA = 0.2
REACTNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


class Conv(nn.Module):
    """`weight` (O, I, k, k), plus `gain` (O, 1, 1, 1) when scaled-WS.

    Real: `nn.Conv2d` (or `ScaledStdConv2d` with `ws`); binary: `HardBinaryConv` (or
    `HardBinaryScaledStdConv2d`), mean(|W|) * sign(W) per output channel, after the WS.
    """

    def __init__(self, cin, cout, k, stride, padding, *, ws: bool, binary: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        if ws:
            self.gain = nn.Parameter(torch.ones(cout, 1, 1, 1))
        self.ws, self.binary, self.stride, self.padding = ws, binary, stride, padding

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        if self.ws:
            std, mean = torch.std_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
            w = (w - mean) / (std + 1e-5) / math.sqrt(w[0].numel())
        if self.binary:
            w = w.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(w)
        return self.gain * w if self.ws else w

    def forward(self, x):
        return F.conv2d(x, self.effective_weight(), stride=self.stride, padding=self.padding)


class Bias(nn.Module):
    """ReActNet's LearnableBias: `bias` (1, C, 1, 1)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x + self.bias


def _bn(norm, channels):
    return nn.BatchNorm2d(channels) if norm == "bn" else nn.Identity()


class BlockA(nn.Module):
    def __init__(self, cin, cout, stride, norm, binary, beta1, beta2):
        super().__init__()
        ws = norm == "nobn"
        self.norm, self.cin, self.cout, self.stride = norm, cin, cout, stride
        self.beta1, self.beta2 = beta1, beta2
        self.move11 = Bias(cin)
        self.binary_3x3 = Conv(cin, cin, 3, stride, 1, ws=ws, binary=binary)
        if norm == "bn":
            self.bn1 = nn.BatchNorm2d(cin)
        self.move12, self.prelu1, self.move13 = Bias(cin), nn.PReLU(cin), Bias(cin)
        self.move21 = Bias(cin)
        if cin == cout:
            self.binary_pw = Conv(cin, cout, 1, 1, 0, ws=ws, binary=binary)
            if norm == "bn":
                self.bn2 = nn.BatchNorm2d(cout)
        else:
            self.binary_pw_down1 = Conv(cin, cin, 1, 1, 0, ws=ws, binary=binary)
            self.binary_pw_down2 = Conv(cin, cin, 1, 1, 0, ws=ws, binary=binary)
            if norm == "bn":
                self.bn2_1, self.bn2_2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cin)
        self.move22, self.prelu2, self.move23 = Bias(cout), nn.PReLU(cout), Bias(cout)

    def _bn(self, name, x):
        return getattr(self, name)(x) if self.norm == "bn" else x

    def forward(self, x):
        scaled = self.norm == "nobn"
        alpha = ALPHA if scaled else 1.0
        x_in = x * self.beta1 if scaled else x
        branch = self._bn("bn1", self.binary_3x3(torch.sign(self.move11(x_in))))
        shortcut = F.avg_pool2d(x_in, 2) if self.stride == 2 else x
        out1 = self.move13(self.prelu1(self.move12(shortcut + alpha * branch)))
        signs = torch.sign(self.move21(out1 * self.beta2 if scaled else out1))
        if self.cin == self.cout:
            out2 = alpha * self._bn("bn2", self.binary_pw(signs)) + out1
        else:
            out2 = torch.cat(
                [
                    alpha * self._bn("bn2_1", self.binary_pw_down1(signs)) + out1,
                    alpha * self._bn("bn2_2", self.binary_pw_down2(signs)) + out1,
                ],
                dim=1,
            )
        return self.move23(self.prelu2(self.move22(out2)))


class FirstConvA(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv1 = Conv(3, 32, 3, 2, 1, ws=norm == "nobn", binary=False)
        if norm == "bn":
            self.bn1 = nn.BatchNorm2d(32)

    def forward(self, x):
        x = self.conv1(x)
        return self.bn1(x) if hasattr(self, "bn1") else x


def reactnet_a_schedule(alpha: float) -> list[tuple[int, int, int, float, float]]:
    """(in, out, stride, beta1, beta2) of ReActNet-A's 13 blocks, as the reference's (and
    A&B BNN's) builder computes them: the expected variance is 1 after the first conv and
    after a transition, and grows by alpha^2 per residual branch."""

    def reset():
        return 1.0 + alpha**2, 1.0, (1.0 + alpha**2) ** -0.5

    variance, beta1, beta2 = reset()
    blocks = []
    for cin, cout in zip(REACTNET_A_CHANNELS, REACTNET_A_CHANNELS[1:], strict=False):
        transition = cin != cout and cout != 64
        blocks.append((cin, cout, 2 if transition else 1, beta1, beta2))
        if transition:
            variance, beta1, beta2 = reset()
        else:
            beta1 = (variance + alpha**2) ** -0.5
            variance += 2 * alpha**2
            beta2 = variance**-0.5
    return blocks


class ReActNetA(nn.Module):
    """`feature.0` the first convolution, `feature.1..13` the blocks, `fc`."""

    def __init__(self, norm: str, stage: int, num_classes: int):
        super().__init__()
        self.feature = nn.ModuleList([FirstConvA(norm)])

        for cin, cout, stride, beta1, beta2 in reactnet_a_schedule(ALPHA):
            self.feature.append(BlockA(cin, cout, stride, norm, stage == 2, beta1, beta2))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        for module in self.feature:
            x = module(x)
        return self.fc(x.mean(dim=(2, 3)))


class Block18(nn.Module):
    def __init__(self, cin, cout, stride, norm, binary, beta, downsample, binary_downsample):
        super().__init__()
        ws = norm == "nobn"
        self.norm, self.beta = norm, beta
        self.move0 = Bias(cin)
        self.binary_conv = Conv(cin, cout, 3, stride, 1, ws=ws, binary=binary)
        if norm == "bn":
            self.bn1 = nn.BatchNorm2d(cout)
        self.move1, self.prelu, self.move2 = Bias(cout), nn.PReLU(cout), Bias(cout)
        self.downsample = None
        if downsample:
            conv = Conv(cin, cout, 1, 1, 0, ws=ws, binary=binary and binary_downsample)
            layers = [nn.AvgPool2d(2, stride), conv]
            if norm == "bn":
                layers.append(nn.BatchNorm2d(cout))
            self.downsample = nn.Sequential(*layers)

    def forward(self, x):
        scaled = self.norm == "nobn"
        x_in = x * self.beta if scaled else x
        out = self.binary_conv(torch.sign(self.move0(x_in)))
        if self.norm == "bn":
            out = self.bn1(out)
        shortcut = x if self.downsample is None else self.downsample(x_in)
        out = (ALPHA if scaled else 1.0) * out + shortcut
        return self.move2(self.prelu(self.move1(out)))


class ReActNet18(nn.Module):
    """`conv1` (+ `bn1`), `layer1..4` of 4 blocks, `fc`."""

    def __init__(self, norm, stage, num_classes, stem="imagenet", binary_downsample=True):
        super().__init__()
        ws = norm == "nobn"
        self.imagenet = stem == "imagenet"
        k, s, p = (7, 2, 3) if self.imagenet else (3, 1, 1)
        self.conv1 = Conv(3, 64, k, s, p, ws=ws, binary=False)
        if norm == "bn":
            self.bn1 = nn.BatchNorm2d(64)
        variance, cin = 1.0, 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            downsample = stride != 1 or cin != cout
            blocks = [
                Block18(
                    cin,
                    cout,
                    stride,
                    norm,
                    stage == 2,
                    variance**-0.5,
                    downsample,
                    binary_downsample,
                )
            ]
            if downsample:
                variance = 1.0
            for _ in range(3):
                blocks.append(
                    Block18(cout, cout, 1, norm, stage == 2, variance**-0.5, False, False)
                )
                variance += ALPHA**2
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if hasattr(self, "bn1"):
            x = self.bn1(x)
        if self.imagenet:
            x = F.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random parameters and non-trivial BN statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    def normal(shape, std):
        return std * torch.randn(shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Conv):
                fan_in = module.weight[0].numel()
                module.weight.copy_(normal(module.weight.shape, fan_in**-0.5))
                if module.ws:
                    module.gain.copy_(uniform(module.gain.shape, 0.5, 1.5))
            elif isinstance(module, Bias):
                module.bias.copy_(normal(module.bias.shape, 0.2))
            elif isinstance(module, nn.PReLU):
                module.weight.copy_(uniform(module.weight.shape, 0.0, 0.5))
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(uniform((c,), 0.5, 1.5))
                module.bias.copy_(normal((c,), 0.2))
                module.running_mean.copy_(normal((c,), 0.2))
                module.running_var.copy_(uniform((c,), 0.5, 2.0))
                module.num_batches_tracked.fill_(1000)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(normal(module.weight.shape, module.in_features**-0.5))
                module.bias.copy_(normal(module.bias.shape, 0.1))
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


if __name__ == "__main__":
    # `python -m tests.zoo.torch_models`: the parameter counts of tests/zoo/test_models.py.
    for norm in ("bn", "nobn", "none"):
        print(f"reactnet_a_{norm} 1000 classes:", parameter_count(ReActNetA(norm, 2, 1000)))
        for stem, classes in (("imagenet", 1000), ("imagenet", 10), ("cifar", 10), ("cifar", 100)):
            net = ReActNet18(norm, 2, classes, stem=stem)
            print(f"reactnet18_{norm} {stem} stem, {classes} classes:", parameter_count(net))
