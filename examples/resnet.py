"""A ResNet-style CNN: residual basic blocks with batch norm, widening and downsampling."""

from __future__ import annotations

import torch
from torch import nn

from autopipe import ModelSpec
from autopipe.spec import generator


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.down(x))


class ResNet(nn.Module):
    def __init__(self, width: int, blocks_per_stage: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks_per_stage):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def build(*, width: int = 16, blocks: tuple[int, ...] = (2, 2, 2, 2), classes: int = 10,
          image: int = 32, batch_size: int = 8, device: str = "cpu", seed: int = 0) -> ModelSpec:
    """ResNet-18-like by default (at CIFAR size and reduced width)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = ResNet(width, tuple(blocks), classes)

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        x = torch.randn(n * batch_size, 3, image, image, generator=g)
        y = torch.randint(0, classes, (n * batch_size,), generator=g)
        return (x.to(device),), y.to(device)

    return ModelSpec(model=model, example_inputs=batch(1)[0],
                     loss_fn=nn.functional.cross_entropy, batch=batch, name="resnet")
