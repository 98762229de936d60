"""Sine position encodings of feature maps (DETR / Mask2Former ``PositionEmbeddingSine``, ``normalize=True``).

For a map of H x W, row ``i`` (1-based) and column ``j`` are normalised to ``y = i / H * 2 pi`` and
``x = j / W * 2 pi``; with ``F`` features per axis and ``d_k = temperature^(2 floor(k / 2) / F)``, feature ``k`` of
an axis is ``sin(v / d_k)`` for even ``k`` and ``cos(v / d_k)`` for odd ``k``. The y features come first, then x:
``2F`` channels in total (``F = hidden / 2``). No padding mask: the kit's batches are never padded.
"""

from __future__ import annotations

import math

import numpy as np


def sine_position_encoding(
    height: int, width: int, num_features: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> np.ndarray:
    """The encoding of one H x W map.

    Args:
        height: rows.
        width: columns.
        num_features: F, features per axis (even).
        temperature: base of the frequencies.
        scale: what the normalised coordinate of the last row/column becomes.

    Returns:
        float32 (H, W, 2F): y features then x features.

    Raises:
        ValueError: odd ``num_features`` or a non-positive side.
    """
    if num_features % 2:
        raise ValueError(f"num_features must be even, got {num_features}")
    if height < 1 or width < 1:
        raise ValueError(f"map sides must be positive, got {height} x {width}")
    eps = 1e-6
    y_embed = np.arange(1, height + 1, dtype=np.float32)[:, None].repeat(width, axis=1)
    x_embed = np.arange(1, width + 1, dtype=np.float32)[None, :].repeat(height, axis=0)
    y_embed = y_embed / (height + eps) * scale
    x_embed = x_embed / (width + eps) * scale
    dim_t = temperature ** (2 * (np.arange(num_features) // 2) / num_features)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = np.where(np.arange(num_features) % 2 == 0, np.sin(pos_x), np.cos(pos_x))
    pos_y = np.where(np.arange(num_features) % 2 == 0, np.sin(pos_y), np.cos(pos_y))
    return np.concatenate([pos_y, pos_x], axis=-1).astype(np.float32)
