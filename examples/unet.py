"""A U-Net: long skip connections from every encoder level to its decoder level.

The skips make the graph branchy: a cut in the middle carries every pending skip,
so a good partition must weigh activation traffic, not just compute.
"""

from __future__ import annotations

import torch
from torch import nn

from autopipe import ModelSpec
from autopipe.spec import generator


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class UNet(nn.Module):
    def __init__(self, cin: int, width: int, depth: int, cout: int) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList(_conv(cin if i == 0 else chans[i - 1], chans[i]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.mid = _conv(chans[depth - 1], chans[depth])
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                for i in reversed(range(depth)))
        self.dec = nn.ModuleList(_conv(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(chans[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.mid(x)
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.out(x)


def build(*, width: int = 8, depth: int = 3, image: int = 32, channels: int = 3, classes: int = 4,
          batch_size: int = 4, device: str = "cpu", seed: int = 0) -> ModelSpec:
    """A segmentation U-Net with ``depth`` levels; the target is a per-pixel class map."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = UNet(channels, width, depth, classes)

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        x = torch.randn(n * batch_size, channels, image, image, generator=g)
        y = torch.randint(0, classes, (n * batch_size, image, image), generator=g)
        return (x.to(device),), y.to(device)

    return ModelSpec(model=model, example_inputs=batch(1)[0],
                     loss_fn=nn.functional.cross_entropy, batch=batch, name="unet")
