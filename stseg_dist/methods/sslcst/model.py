"""The SSL-CST spot encoder: self-attention over a spot's neighbourhood tokens, then an MLP with
two heads, in/out of cell (2-way) and the direction to the nucleus centre (n-way).

``stseg``: one post-LN attention block; ``paper`` (``pre_ln``): ``blocks`` pre-LN blocks, each
x + attention(LN(x)) then x + MLP(LN(x)), with a final LN, as in Huo et al.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .features import neighbourhood_offsets


class PreLNBlock(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class SpotEncoder(nn.Module):
    """Tokens are the k x k spots around the centre spot: log1p counts, prior, normalised position.

    The position of each token within the neighbourhood (in [-1, 1]) is what lets attention tell
    where expression and the prior rise, i.e. which way the nucleus lies.
    """

    def __init__(
        self,
        n_counts: int,
        k: int,
        d_model: int = 32,
        heads: int = 4,
        hidden: int = 64,
        n_directions: int = 16,
        blocks: int = 1,
        pre_ln: bool = False,
    ):
        super().__init__()
        self.pre_ln = pre_ln
        dr, dc = neighbourhood_offsets(k)
        half = max(1, k // 2)
        self.register_buffer(
            "relpos", torch.tensor(np.column_stack([dr, dc]) / half, dtype=torch.float32)
        )
        self.centre = (k * k) // 2
        self.embed = nn.Linear(n_counts + 6, d_model)
        if pre_ln:
            self.layers = nn.ModuleList(PreLNBlock(d_model, heads) for _ in range(blocks))
            self.norm_out = nn.LayerNorm(d_model)
        else:
            self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
            self.norm1 = nn.LayerNorm(d_model)
            self.ff = nn.Sequential(
                nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model)
            )
            self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.inout = nn.Linear(hidden, 2)
        self.direction = nn.Linear(hidden, n_directions)

    def forward(
        self, counts: torch.Tensor, prior: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts (B, T, G+1) raw, prior (B, T) -> (in/out logits (B, 2),
        direction logits (B, n)).
        """
        b, t, _ = counts.shape
        # The prior relative to the centre spot, log(p_t / p_c) = (d_c - d_t) / d0, scaled to
        # [-1, 1] per spot: the same pattern near a nucleus and far from it, so the rule learnt
        # inside nuclei holds in the cytoplasm.
        seen = prior > 0
        lp = torch.log(prior.clamp_min(1e-12))
        rel = torch.where(
            seen & seen[:, self.centre : self.centre + 1],
            lp - lp[:, self.centre : self.centre + 1],
            0.0,
        )
        rel = rel / (rel.abs().amax(1, keepdim=True) + 1e-6)
        pos = self.relpos.expand(b, t, 2)
        x = torch.cat(
            [
                torch.log1p(counts),
                prior.unsqueeze(-1),
                rel.unsqueeze(-1),
                pos,
                rel.unsqueeze(-1) * pos,
            ],
            -1,
        )
        x = self.embed(x)
        if self.pre_ln:
            for layer in self.layers:
                x = layer(x)
            x = self.norm_out(x)
        else:
            a, _ = self.attn(x, x, x, need_weights=False)
            x = self.norm1(x + a)
            x = self.norm2(x + self.ff(x))
        h = self.mlp(torch.cat([x[:, self.centre], x.mean(1)], -1))
        return self.inout(h), self.direction(h)
