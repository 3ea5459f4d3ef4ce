"""The two UCS networks.

Foreground Predict Net: three 1x1 convolutions (the first built from sparse transcripts as a
per-bin sum of learned gene embeddings, which equals a 1x1 convolution over the dense gene map),
an encoder of four 3x3 blocks at full resolution whose outputs are concatenated, and a classifier
of four 1x1 convolutions to {background, cell}.

Cell Predict Net: three 1x1 convolutions on the foreground features, multiplied by each cell's
soft mask (cells in the batch dimension, sharing the features), then a 1x1 head to
{background, this cell} (optionally also the features times the cell's own expression profile, see
CellNet). Everything after the encoder is 1x1, so the receptive field is the
encoder's: ``receptive_radius`` bins.

``variant="paper"`` builds the reference size of the public UCS code instead (PaperForegroundNet,
PaperCellNet): linear 1x1 G->256->128->64, four double 3x3 blocks 128/256/128/64 without batch
norm whose outputs and the input features are concatenated (640), a linear 640->256->128->64->2
head whose 64 channels are the cell net's input, and a cell branch 64->32->16->1 that scales each
cell's soft mask before a 1->2 output.
"""

from __future__ import annotations

import torch
from torch import nn

RECEPTIVE_RADIUS = 4  # four 3x3 convolutions (the paper-size net: eight)


class SparseGeneInput(nn.Module):
    """First 1x1 layer from (batch, row, col, gene) transcript indices."""

    def __init__(self, n_genes: int, channels: int):
        super().__init__()
        self.embedding = nn.Embedding(max(n_genes, 1), channels)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(
        self,
        batch: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        genes: torch.Tensor,
        shape: tuple[int, int, int],
    ) -> torch.Tensor:
        b, h, w = shape
        c = self.embedding.embedding_dim
        out = torch.zeros(b * h * w, c, device=self.bias.device, dtype=self.bias.dtype)
        if genes.numel():
            flat = (batch * h + rows) * w + cols
            out.index_add_(0, flat, self.embedding(genes))
        return out.view(b, h, w, c).permute(0, 3, 1, 2) + self.bias.view(1, c, 1, 1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _mlp1x1(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
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
        self.receptive_radius = RECEPTIVE_RADIUS

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
    nucleus), so a bin between two nuclei can go to the one whose expression it shares.
    """

    def __init__(
        self,
        feature_channels: int,
        width: int = 32,
        markers: bool = False,
        expression: bool = False,
    ):
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

    def classify(
        self,
        reduced: torch.Tensor,
        softmasks: torch.Tensor,
        marker_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reduced (1, C, H, W) shared by the cells; softmasks (N, 1, H, W) -> logits (N, 2, H, W).

        Training runs it over whole patches; inference scores each cell over its own box from the
        head's weights (inference._head_terms), which this head being 1x1 makes the same.
        """
        parts = [reduced * softmasks]
        if self.expression:
            prof = self.profiles(reduced, softmasks)
            parts.append(reduced * prof[:, :, None, None] * softmasks)
        if self.markers:
            parts.append(torch.zeros_like(softmasks) if marker_masks is None else marker_masks)
        return self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def forward(
        self,
        features: torch.Tensor,
        softmasks: torch.Tensor,
        marker_masks: torch.Tensor | None = None,
    ):
        """Features (1, F, H, W) shared by the patch's cells; softmasks (N, 1, H, W) -> logits
        (N, 2, H, W).
        """
        return self.classify(self.reduce(features), softmasks, marker_masks)


def _linear1x1(sizes: list[int]) -> nn.Sequential:
    return nn.Sequential(*[nn.Conv2d(a, b, 1) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])


def _double_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class PaperForegroundNet(nn.Module):
    """The reference-size foreground net; ``forward`` returns (logits, the head's 64 features)."""

    def __init__(self, n_genes: int):
        super().__init__()
        self.input = SparseGeneInput(n_genes, 256)
        self.extract = _linear1x1([256, 128, 64])
        sizes = [64, 128, 256, 128, 64]
        self.encoder = nn.ModuleList(
            [_double_block(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = _linear1x1([sum(sizes), 256, 128, 64])
        self.out = nn.Conv2d(64, 2, 1)
        self.feature_channels = 64
        self.receptive_radius = 8  # four double 3x3 blocks

    def forward(self, batch, rows, cols, genes, shape):
        x = self.extract(self.input(batch, rows, cols, genes, shape))
        feats = [x]
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        features = self.head(torch.cat(feats, dim=1))
        return self.out(features), features


class PaperCellNet(nn.Module):
    """The reference cell branch: a per-bin scale of each cell's soft mask, then a 1->2 output."""

    markers = False
    expression = False
    channels = 1

    def __init__(self, feature_channels: int = 64):
        super().__init__()
        self.reduce = _mlp1x1([feature_channels, 32, 16, 1], last_relu=False)
        self.head = nn.Conv2d(1, 2, 1)

    def classify(self, reduced, softmasks, marker_masks=None):
        return self.head(reduced * softmasks)

    def forward(self, features, softmasks, marker_masks=None):
        return self.classify(self.reduce(features), softmasks)


class UCSModel(nn.Module):
    def __init__(
        self,
        n_genes: int,
        width: int = 32,
        markers: bool = False,
        expression: bool = False,
        variant: str = "stseg",
    ):
        super().__init__()
        if variant == "paper":
            self.foreground = PaperForegroundNet(n_genes)
            self.cell = PaperCellNet(self.foreground.feature_channels)
            for m in self.modules():  # the reference code's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            # the first layer is a 1x1 convolution over the gene map: same initialisation
            nn.init.normal_(
                self.foreground.input.embedding.weight, std=(2.0 / max(n_genes, 1)) ** 0.5
            )
            return
        self.foreground = ForegroundNet(n_genes, width)
        self.cell = CellNet(self.foreground.feature_channels, width, markers, expression)
