"""Point sampling for set-prediction losses: bilinear values of mask logits at continuous points.

Mask2Former computes its mask losses and matching costs not on whole masks but on a few thousand points per mask
(12,544 in the official configuration), which is what makes 100 queries x high-resolution masks affordable.
The official code samples with PyTorch's ``grid_sample(..., align_corners=False)`` on coordinates in [0, 1]; here
the same bilinear interpolation is written in plain ``keras.ops`` (a gather of the four neighbours), so it runs on
any backend and under XLA without custom kernels.

Coordinates are ``(x, y)`` in [0, 1] over the whole map, as in the official ``point_sample``: pixel ``j`` of a side
of length ``W`` covers ``[j / W, (j + 1) / W)`` and its centre is at ``(j + 0.5) / W``. Points outside the pixel
centres blend with zeros (``grid_sample``'s zero padding).
"""

from __future__ import annotations

from keras import ops


def point_sample(maps, coords):
    """Bilinearly sample maps at continuous points.

    Args:
        maps: (B, M, H, W) tensor, e.g. M mask logits per image.
        coords: (B, P, 2) points as (x, y) in [0, 1], shared by the M maps of an image.

    Returns:
        (B, M, P) sampled values, in the dtype of ``maps``.
    """
    height, width = ops.shape(maps)[2], ops.shape(maps)[3]
    dtype = maps.dtype
    flat = ops.reshape(maps, (ops.shape(maps)[0], ops.shape(maps)[1], -1))  # (B, M, H*W)
    coords = ops.cast(coords, "float32")
    # align_corners=False: the continuous pixel coordinate of x is x * W - 0.5 (pixel centres at integers)
    x = coords[..., 0] * ops.cast(width, "float32") - 0.5
    y = coords[..., 1] * ops.cast(height, "float32") - 0.5
    x0 = ops.floor(x)
    y0 = ops.floor(y)
    weight_x1 = x - x0
    weight_y1 = y - y0
    result = 0.0
    for dy, weight_y in ((0.0, 1.0 - weight_y1), (1.0, weight_y1)):
        for dx, weight_x in ((0.0, 1.0 - weight_x1), (1.0, weight_x1)):
            column = x0 + dx
            row = y0 + dy
            inside = (
                (column >= 0)
                & (column <= ops.cast(width - 1, "float32"))
                & (row >= 0)
                & (row <= ops.cast(height - 1, "float32"))
            )
            # out-of-map neighbours contribute zero (zero padding); clip only so that the gather stays legal
            safe_column = ops.clip(column, 0, ops.cast(width - 1, "float32"))
            safe_row = ops.clip(row, 0, ops.cast(height - 1, "float32"))
            index = ops.cast(safe_row * ops.cast(width, "float32") + safe_column, "int32")  # (B, P)
            index = ops.broadcast_to(index[:, None, :], (ops.shape(flat)[0], ops.shape(flat)[1], ops.shape(index)[1]))
            values = ops.take_along_axis(flat, index, axis=-1)
            weight = weight_x * weight_y * ops.cast(inside, "float32")
            result = result + ops.cast(values, "float32") * weight[:, None, :]
    return ops.cast(result, dtype)


def uniform_points(batch: int, num_points: int, seed=None):
    """``num_points`` uniform random (x, y) points in [0, 1] per image: (batch, num_points, 2) float32.

    Args:
        batch: images.
        num_points: points per image.
        seed: a ``keras.random.SeedGenerator`` (or int) for reproducible draws; None draws fresh ones.
    """
    from keras import random

    return random.uniform((batch, num_points, 2), seed=seed)


def uncertain_point_coords(
    logits, num_points: int, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75, seed=None
):
    """Points concentrated where a mask is least certain (PointRend's importance sampling, as Mask2Former's loss).

    Draw ``oversample_ratio x num_points`` uniform points, keep the ``importance_sample_ratio x num_points`` whose
    sampled logit is closest to 0 (uncertainty = -|logit|) and add uniform points for the rest.

    Args:
        logits: (B, 1, H, W) mask logits, one mask per row (the points are chosen per mask).
        num_points: points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].
        seed: a ``keras.random.SeedGenerator`` or None.

    Returns:
        (B, num_points, 2) float32 coordinates, to be treated as constants (no gradient flows through the choice).

    Raises:
        ValueError: for a ratio out of range.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    batch = ops.shape(logits)[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    candidates = uniform_points(batch, num_sampled, seed=seed)
    uncertainty = -ops.abs(ops.cast(point_sample(ops.stop_gradient(logits), candidates)[:, 0, :], "float32"))
    _, top = ops.top_k(uncertainty, k=num_uncertain)  # (B, num_uncertain)
    top = ops.broadcast_to(top[:, :, None], (batch, num_uncertain, 2))
    chosen = ops.take_along_axis(candidates, top, axis=1)
    if num_random > 0:
        chosen = ops.concatenate([chosen, uniform_points(batch, num_random, seed=seed)], axis=1)
    return ops.stop_gradient(chosen)
