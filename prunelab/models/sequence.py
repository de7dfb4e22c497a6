"""Attention and recurrent models for image inputs: a small vision transformer and a row LSTM.

Neither appears in the papers we reproduce; they are here so that every criterion, protocol and
analysis can be tried on attention (``nn.MultiheadAttention``'s ``in_proj_weight``) and recurrent
(``nn.LSTM``'s ``weight_ih_l0``/``weight_hh_l0``) weights on Fashion-MNIST, on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.layer_rules import register_layer_type
from prunelab.models.registry import register


class TokenPositions(nn.Module):
    """A class token and learned positional embeddings, added to a sequence of patch embeddings.

    Registered as an embedding layer type (:func:`prunelab.register_layer_type`): a mask covers its
    tensors with ``include_embeddings=True``, like an ``nn.Embedding`` table, and never by surprise.
    """

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.empty(1, tokens + 1, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.class_token.zero_()
            self.positions.normal_(std=0.02)  # Dosovitskiy et al.'s (2021) reference code draws N(0, 0.02^2)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        cls = self.class_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.positions


register_layer_type(TokenPositions, role="embedding", weights=("class_token", "positions"), biases=())


class VisionTransformer(nn.Module):
    """Patches (a strided convolution) -> class token and positions -> pre-norm encoder -> head.

    The encoder is ``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer`` (``norm_first=True``,
    GELU, no dropout), as in Dosovitskiy et al. 2021 (§3.1) at a size a CPU trains in minutes.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], patch: int, dim: int, depth: int,
                 heads: int, mlp: int):
        super().__init__()
        channels, height, width = input_shape
        if height % patch or width % patch:
            raise ValueError(f"vit: image {height}x{width} is not divisible into {patch}x{patch} patches")
        self.patches = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.embedding = TokenPositions((height // patch) * (width // patch), dim)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embedding(self.patches(x).flatten(2).transpose(1, 2))
        return self.head(self.encoder(tokens)[:, 0])


@register("vit_tiny", paper="Dosovitskiy et al. 2021 (ViT), scaled down", min_hw=7)
def vit_tiny(num_classes: int, input_shape: tuple[int, int, int], patch: int = 7, dim: int = 64, depth: int = 4,
             heads: int = 4, mlp: int = 128) -> nn.Module:
    """A small vision transformer: 16 patches of 7x7 on 28x28 inputs, width 64, 4 pre-norm layers of
    4 heads, MLP 128: 139,018 parameters on Fashion-MNIST, 48% of them in attention projections."""
    return VisionTransformer(num_classes, input_shape, patch, dim, depth, heads, mlp)


class RowLSTM(nn.Module):
    """The rows of the image as a sequence (height steps of channels x width features) -> LSTM ->
    the last hidden state -> linear classifier (the sequential-MNIST setting of Le et al. 2015, by rows)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], hidden: int, layers: int):
        super().__init__()
        channels, _, width = input_shape
        self.lstm = nn.LSTM(channels * width, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (batch, height, channels * width)
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


@register("lstm", paper="Hochreiter & Schmidhuber 1997; rows as a sequence (Le et al. 2015)", min_hw=1)
def lstm(num_classes: int, input_shape: tuple[int, int, int], hidden: int = 128, layers: int = 1) -> nn.Module:
    """An LSTM over the image's rows, hidden size 128: 82,186 parameters on Fashion-MNIST."""
    return RowLSTM(num_classes, input_shape, hidden, layers)
