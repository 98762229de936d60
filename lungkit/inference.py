"""Apply a trained segmentation model to whole slices: sliding-window inference with Gaussian weighting.

Models trained on patches (nnU-Net's way of keeping small nodules at their native pixel scale) and models with a
fixed input size (Swin-UNet, UNETR) cannot take a whole slice at once. :func:`sliding_window_predict` tiles each
slice with overlapping windows of the model's input size, predicts every window, and blends the overlapping
probabilities with a Gaussian importance map (weights highest at a window's centre, where the model saw the most
context; nnU-Net uses sigma = 1/8 of the window). With a window as large as the slice it is one plain prediction.
"""

from __future__ import annotations

import math

import numpy as np

#: nnU-Net's default: windows overlap by half their size.
DEFAULT_OVERLAP = 0.5
#: Gaussian sigma as a fraction of the window side (nnU-Net: 1/8).
GAUSSIAN_SIGMA_SCALE = 0.125


def window_starts(length: int, window: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Start offsets of windows of side ``window`` covering ``[0, length)``, the last one flush with the end.

    Raises:
        ValueError: for a window larger than the length or an overlap outside [0, 1).
    """
    if window > length:
        raise ValueError(f"window {window} is larger than the slice side {length}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if window == length:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / stride) + 1
    # spread the windows evenly so the last ends exactly at the border
    return sorted({round(i * (length - window) / (count - 1)) for i in range(count)})


def gaussian_importance(window: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """A ``window x window`` Gaussian weight map, maximum 1, with no zero (edges still count a little)."""
    centre = (window - 1) / 2.0
    sigma = max(window * sigma_scale, 1e-3)
    axis = np.exp(-0.5 * ((np.arange(window) - centre) / sigma) ** 2)
    weights = np.outer(axis, axis)
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def sliding_window_predict(
    model,
    images: np.ndarray,
    window: int | None = None,
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 8,
    from_logits: bool = False,
) -> np.ndarray:
    """Probabilities for whole slices from a model that sees ``window x window`` inputs.

    Args:
        model: a Keras segmentation model with one output channel.
        images: model-ready inputs ``(N, H, W, C)`` (already preprocessed), every side >= ``window``.
        window: the model's input side; read from the model when it is fixed, else the slice size (one pass).
        overlap: fraction of a window shared with its neighbour.
        batch_size: windows per forward pass.
        from_logits: the model outputs logits (sigmoid is applied before blending).

    Returns:
        float32 ``(N, H, W)`` probabilities.

    Raises:
        ValueError: for a non-4-D input or slices smaller than the window.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    n, height, width, _ = images.shape
    if window is None:
        fixed = model.input_shape[1] if model.input_shape[1] == model.input_shape[2] else None
        window = fixed or min(height, width)
    if window == height == width:
        windows = [(0, 0)]
    else:
        windows = [(y, x) for y in window_starts(height, window, overlap) for x in window_starts(width, window, overlap)]
    weights = gaussian_importance(window) if len(windows) > 1 else np.ones((window, window), np.float32)
    summed = np.zeros((n, height, width), np.float32)
    normaliser = np.zeros((height, width), np.float32)
    for y, x in windows:
        normaliser[y : y + window, x : x + window] += weights
    tiles = [(i, y, x) for i in range(n) for y, x in windows]
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = np.stack([images[i, y : y + window, x : x + window] for i, y, x in chunk])
        output = np.asarray(model.predict_on_batch(batch), np.float32)[..., 0]
        if from_logits:
            output = 1.0 / (1.0 + np.exp(-output))
        for (i, y, x), probability in zip(chunk, output):
            summed[i, y : y + window, x : x + window] += probability * weights
    return summed / normaliser[None]


__all__ = ["DEFAULT_OVERLAP", "gaussian_importance", "sliding_window_predict", "window_starts"]
