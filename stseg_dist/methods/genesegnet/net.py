"""U-Nets: (stain, RNA map) in, (cell logit, [centre logit,] row offset, column offset) out.

GeneSegNet builds on the Cellpose U-Net (a probability map plus flows toward the cell centre);
this is the same shape at a size that trains on one chip in minutes on a CPU. Offsets point to
the centre of the cell's nucleus, in units of the cell reach, so a pixel's cell is the nucleus
its offset lands on. BatchNorm is affine at inference, so windows anchored to the same global
grid give the same output whatever tile they are cut from.
"""

from __future__ import annotations

import torch
from torch import nn

N_INPUTS = 2
N_OUTPUTS = 3  # cell logit, d_row, d_col
N_OUTPUTS_CENTRE = 4  # cell logit, centre logit, d_row, d_col (the paper variant's heads)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _u_forward(net: nn.Module, x: torch.Tensor, join) -> torch.Tensor:
    """Down the scales keeping each block's output, then up, each scale's block applied to
    ``join(skip, upsampled)``: the U shape both networks share.
    """
    skips = []
    for i, block in enumerate(net.down):
        x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
        skips.append(x)
    x = skips.pop()
    for i in reversed(range(net.depth)):
        x = net.merge[i](join(skips.pop(), net.up[i](x)))
    return net.head(x)


class UNet(nn.Module):
    """``depth`` poolings, so window sides must be multiples of ``2**depth``."""

    def __init__(self, width: int = 16, depth: int = 3, n_outputs: int = N_OUTPUTS):
        super().__init__()
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(N_INPUTS, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth)]
        )
        self.merge = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in range(depth)])
        self.head = nn.Conv2d(chans[0], n_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _u_forward(self, x, lambda skip, up: torch.cat([skip, up], 1))


class PreActBlock(nn.Module):
    """Pre-activation residual unit (He et al. 2016; Cellpose's ``resdown``/``resup``): BN-ReLU-conv
    twice, plus the input (through a 1x1 conv when the channel count changes).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class ResUNet(nn.Module):
    """The paper's network (GeneSegNet builds on Cellpose's): four scales of pre-activation
    residual blocks (3 poolings between them, so window sides are multiples of 8, as for
    :class:`UNet`), skip connections added as in Cellpose. One residual unit per block (Cellpose
    has two) and ``width`` channels at the first scale (Cellpose: 32).
    """

    def __init__(self, width: int = 16, scales: int = 4, n_outputs: int = N_OUTPUTS_CENTRE):
        super().__init__()
        self.depth = scales - 1
        chans = [width * 2**i for i in range(scales)]
        self.down = nn.ModuleList(
            [PreActBlock(N_INPUTS, chans[0])]
            + [PreActBlock(chans[i], chans[i + 1]) for i in range(self.depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(self.depth)]
        )
        self.merge = nn.ModuleList([PreActBlock(chans[i], chans[i]) for i in range(self.depth)])
        self.head = nn.Sequential(
            nn.BatchNorm2d(chans[0]), nn.ReLU(), nn.Conv2d(chans[0], n_outputs, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _u_forward(self, x, lambda skip, up: skip + up)  # Cellpose adds its skips


def build_net(name: str, width: int, n_outputs: int) -> nn.Module:
    """``resunet4`` (the paper's) or ``unet3`` (stseg's); both pool 3 times."""
    if name == "resunet4":
        return ResUNet(width, 4, n_outputs)
    return UNet(width, 3, n_outputs)
