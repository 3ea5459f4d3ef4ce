"""The two UCS networks.

Foreground Predict Net: three 1x1 convolutions (the first built from sparse transcripts as a
per-bin sum of learned gene embeddings, which equals a 1x1 convolution over the dense gene map),
an encoder of four 3x3 blocks at full resolution whose outputs are concatenated, and a classifier
of four 1x1 convolutions to {background, cell}.

Cell Predict Net: three 1x1 convolutions on the foreground features, multiplied by each cell's
soft mask (cells in the batch dimension, sharing the features), then a 1x1 head to
{background, this cell} (optionally also the features times the cell's own expression profile, see
CellNet). Everything after the encoder is 1x1, so the receptive field is the
encoder's: RECEPTIVE_RADIUS bins.
"""

from __future__ import annotations

import torch
from torch import nn

RECEPTIVE_RADIUS = 4  # four 3x3 convolutions


class SparseGeneInput(nn.Module):
    """First 1x1 layer from (batch, row, col, gene) transcript indices."""

    def __init__(self, n_genes: int, channels: int):
        super().__init__()
        self.embedding = nn.Embedding(max(n_genes, 1), channels)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, batch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, genes: torch.Tensor,
                shape: tuple[int, int, int]) -> torch.Tensor:
        b, h, w = shape
        c = self.embedding.embedding_dim
        out = torch.zeros(b * h * w, c, device=self.bias.device, dtype=self.bias.dtype)
        if genes.numel():
            flat = (batch * h + rows) * w + cols
            out.index_add_(0, flat, self.embedding(genes))
        return out.view(b, h, w, c).permute(0, 3, 1, 2) + self.bias.view(1, c, 1, 1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _mlp1x1(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Conv2d(a, b, 1))
        if last_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ForegroundNet(nn.Module):
    def __init__(self, n_genes: int, width: int = 32):
        super().__init__()
        self.input = SparseGeneInput(n_genes, width)
        self.extract = _mlp1x1([width, width, width], last_relu=True)  # 1x1 convs two and three
        self.encoder = nn.ModuleList([_block(width, width) for _ in range(4)])
        self.classifier = _mlp1x1([4 * width, 2 * width, width, width // 2, 2], last_relu=False)
        self.feature_channels = 4 * width

    def forward(self, batch, rows, cols, genes, shape):
        x = self.extract(torch.relu(self.input(batch, rows, cols, genes, shape)))
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        features = torch.cat(feats, dim=1)
        return self.classifier(features), features


class CellNet(nn.Module):
    """Per cell: reduced features times its soft mask and, with ``expression``, an addition to the
    paper: the same features times the cell's own expression profile (their mean over its
    nucleus), so a bin between two nuclei can go to the one whose expression it shares."""

    def __init__(self, feature_channels: int, width: int = 32, markers: bool = False, expression: bool = False):
        super().__init__()
        self.reduce = _mlp1x1([feature_channels, 2 * width, width, width // 2], last_relu=True)
        self.markers = markers
        self.expression = expression
        self.channels = width // 2
        n_in = (width // 2) * (2 if expression else 1) + (1 if markers else 0)
        self.head = nn.Conv2d(n_in, 2, 1)

    @staticmethod
    def profiles(reduced: torch.Tensor, softmasks: torch.Tensor) -> torch.Tensor:
        """(N, C) mean reduced features over each cell's nucleus (soft mask > 0.5)."""
        inside = (softmasks > 0.5).to(reduced.dtype)
        return (reduced * inside).sum((2, 3)) / inside.sum((2, 3)).clamp(min=1.0)

    def classify(self, reduced: torch.Tensor, softmasks: torch.Tensor, marker_masks: torch.Tensor | None = None,
                 profiles: torch.Tensor | None = None) -> torch.Tensor:
        """reduced (1, C, H, W) shared by the cells; softmasks (N, 1, H, W) -> logits (N, 2, H, W).

        ``profiles`` (N, C) overrides the profiles taken from this window, for cells whose nucleus
        it does not hold whole."""
        parts = [reduced * softmasks]
        if self.expression:
            prof = self.profiles(reduced, softmasks) if profiles is None else profiles
            parts.append(reduced * prof[:, :, None, None] * softmasks)
        if self.markers:
            parts.append(torch.zeros_like(softmasks) if marker_masks is None else marker_masks)
        return self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def forward(self, features: torch.Tensor, softmasks: torch.Tensor, marker_masks: torch.Tensor | None = None):
        """features (1, F, H, W) shared by the patch's cells; softmasks (N, 1, H, W) -> logits (N, 2, H, W)."""
        return self.classify(self.reduce(features), softmasks, marker_masks)


class UCSModel(nn.Module):
    def __init__(self, n_genes: int, width: int = 32, markers: bool = False, expression: bool = False):
        super().__init__()
        self.foreground = ForegroundNet(n_genes, width)
        self.cell = CellNet(self.foreground.feature_channels, width, markers, expression)
