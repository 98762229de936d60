"""Named intensity preprocessing and resizing, the same code for numpy arrays and inside tf.data.

Every function is written once, with TensorFlow ops, and works two ways:

- given ``tf.Tensor`` inputs (for example inside ``tf.data.Dataset.map``) it returns a ``tf.Tensor`` and adds
  nothing to the graph but the arithmetic;
- given numpy arrays (or anything ``np.asarray`` accepts) it checks the input (finite, numeric), runs the same ops
  eagerly and returns a float32 numpy array. A NaN or infinite value raises a ``ValueError`` saying which argument.

So a notebook that preprocesses one slice with numpy sees exactly the numbers the training pipeline feeds the model.

The papers' profiles are in :data:`PREPROCESSING` (name -> function of ``hu`` and, for ``lung_masked_hu``, the lung
mask). "Per image" means the statistics are taken over the whole array passed in: pass one slice at a time.

Resizing uses ``tf.image.resize`` without antialiasing: bilinear for images, nearest neighbour (half-pixel centres)
for masks (source pixel ``floor((i + 0.5) * in / out)``), so a binary mask stays binary. OpenCV's ``INTER_LINEAR``
and ``INTER_NEAREST_EXACT``, which :mod:`lungkit.augment` uses, resample alike: bilinear values agree to about 1e-4
relative, nearest-neighbour picks the same pixels except where ``(i + 0.5) * in / out`` is exactly an integer
(512 -> 224, for one), which OpenCV's fixed-point arithmetic rounds down.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import numpy as np
import tensorflow as tf

#: The lung window of paper 004 (and the window every HU-based profile here uses), in Hounsfield units.
HU_WINDOW_LOW = -1000.0
HU_WINDOW_HIGH = 400.0
#: Floor on the standard deviation in :func:`zscore`; only a (near) constant image reaches it.
ZSCORE_EPS = 1e-6


def _numpy_or_tensor(*array_arguments: str) -> Callable:
    """Let a function written with TF ops also take and return numpy arrays.

    Args:
        *array_arguments: names of the parameters that hold arrays (checked on the numpy path).

    Returns:
        A decorator. When none of the array arguments is a ``tf.Tensor`` the wrapped function checks them
        (finite numbers), runs eagerly on float32 tensors and returns ``.numpy()``.
    """

    def decorator(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            arrays = {name: bound.arguments[name] for name in array_arguments if bound.arguments.get(name) is not None}
            if any(tf.is_tensor(value) for value in arrays.values()):
                return function(*bound.args, **bound.kwargs)
            for name, value in arrays.items():
                bound.arguments[name] = tf.convert_to_tensor(_finite_float32(value, name, function.__name__))
            return function(*bound.args, **bound.kwargs).numpy()

        return wrapper

    return decorator


def _finite_float32(value, argument: str, function_name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == bool:
        array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{function_name}: {argument} must be a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{function_name}: {argument} contains {bad} NaN or infinite value(s) of {array.size}; "
            "fix the source slice (HU must be finite) before preprocessing"
        )
    return array


@_numpy_or_tensor("hu")
def hu_window(hu, low: float = HU_WINDOW_LOW, high: float = HU_WINDOW_HIGH):
    """Clip Hounsfield units to a window.

    Args:
        hu: HU array or tensor (any shape).
        low: lower window bound in HU.
        high: upper window bound in HU.

    Returns:
        float32 HU clipped to ``[low, high]``.

    Raises:
        ValueError: on the numpy path, for NaN / infinite input or ``low >= high``.
    """
    if not low < high:
        raise ValueError(f"hu_window: low ({low}) must be below high ({high})")
    return tf.clip_by_value(tf.cast(hu, tf.float32), low, high)


@_numpy_or_tensor("x")
def zscore(x, eps: float = ZSCORE_EPS):
    """Standardise one image: subtract its mean, divide by its standard deviation.

    Args:
        x: one image (statistics are taken over every element).
        eps: floor on the standard deviation, so a constant image becomes all zeros instead of NaN.

    Returns:
        float32 ``(x - mean) / max(std, eps)``: mean 0 and standard deviation 1 unless the image is constant.
    """
    x = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x)
    std = tf.math.reduce_std(x)
    return (x - mean) / tf.maximum(std, eps)


@_numpy_or_tensor("x")
def minmax(x):
    """Scale one image to [0, 1] by its own minimum and maximum (paper 003, equation 5, without the x255).

    Args:
        x: one image.

    Returns:
        float32 ``(x - min) / (max - min)``; all zeros for a constant image.
    """
    x = tf.cast(x, tf.float32)
    low = tf.reduce_min(x)
    return tf.math.divide_no_nan(x - low, tf.reduce_max(x) - low)


@_numpy_or_tensor("hu")
def hu_unchanged(hu):
    """HU as float32, no windowing: the input of post-processing, intensity perturbations and figures."""
    return tf.cast(hu, tf.float32)


@_numpy_or_tensor("hu")
def hu_window_unit(hu, low: float = HU_WINDOW_LOW, high: float = HU_WINDOW_HIGH):
    """Clip HU to ``[low, high]`` and map the window linearly onto [0, 1].

    Args:
        hu: HU array or tensor.
        low: HU mapped to 0.
        high: HU mapped to 1.

    Returns:
        float32 in [0, 1].
    """
    return (hu_window(hu, low, high) - low) / (high - low)


@_numpy_or_tensor("hu")
def hu_window_zscore(hu, low: float = HU_WINDOW_LOW, high: float = HU_WINDOW_HIGH, eps: float = ZSCORE_EPS):
    """Paper 004's normalisation: clip HU to the lung window [-1000, 400], then z-score the slice.

    The paper allows mean and standard deviation "per scan" or over the whole dataset; we use the slice itself,
    since the kit's unit is a slice and per-slice statistics need no pass over the training set.

    Args:
        hu: one HU slice.
        low: lower window bound in HU.
        high: upper window bound in HU.
        eps: see :func:`zscore`.

    Returns:
        float32 with mean 0 and standard deviation 1 (all zeros if the windowed slice is constant).
    """
    return zscore(hu_window(hu, low, high), eps)


@_numpy_or_tensor("hu", "lung_mask")
def lung_masked_hu(hu, lung_mask, low: float = HU_WINDOW_LOW, high: float = HU_WINDOW_HIGH):
    """Keep the lungs only: HU inside the lung mask, ``low`` (air) outside, then window to [0, 1].

    This mirrors the Lung-RADS pickles' ``hu_array`` column (HU x lung mask), except that outside the lungs we
    put air rather than 0 HU, so the background is not brighter than the lung parenchyma.

    Args:
        hu: one HU slice.
        lung_mask: lung mask of the same shape; any value > 0 counts as lung.
        low: HU put outside the lungs and mapped to 0.
        high: HU mapped to 1.

    Returns:
        float32 in [0, 1].

    Raises:
        ValueError: if ``lung_mask`` is missing (numpy path: also for NaN input).
    """
    if lung_mask is None:
        raise ValueError("lung_masked_hu needs the lung mask (the kit dataset's lungs/<id>.png)")
    hu = tf.cast(hu, tf.float32)
    inside = tf.cast(lung_mask, tf.float32) > 0
    return hu_window_unit(tf.where(inside, hu, tf.fill(tf.shape(hu), tf.constant(low, tf.float32))), low, high)


def _size_pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        pair = (int(size), int(size))
    else:
        pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return pair


def _resize(image, size, method: str):
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (2, 3):
        raise ValueError(f"expected one image of shape (H, W) or (H, W, C), got shape {image.shape}")
    batched = image[..., tf.newaxis] if rank == 2 else image
    resized = tf.image.resize(batched, _size_pair(size), method=method, antialias=False)
    return resized[..., 0] if rank == 2 else resized


@_numpy_or_tensor("image")
def resize_image(image, size):
    """Resize one image bilinearly (no antialiasing, as paper 004 states and as OpenCV's INTER_LINEAR does).

    Args:
        image: (H, W) or (H, W, C) array or tensor.
        size: target side (int, square) or (height, width).

    Returns:
        float32 image of the new size, same rank.
    """
    return tf.cast(_resize(tf.cast(image, tf.float32), size, "bilinear"), tf.float32)


def resize_mask(mask, size):
    """Resize a label mask by nearest neighbour, so it keeps its values (a binary mask stays binary).

    Args:
        mask: (H, W) or (H, W, C) array or tensor, any numeric or bool dtype.
        size: target side (int, square) or (height, width).

    Returns:
        The resized mask, same rank and dtype as given (numpy in, numpy out).
    """
    if tf.is_tensor(mask):
        if mask.dtype == tf.bool:
            return tf.cast(_resize(tf.cast(mask, tf.uint8), size, "nearest"), tf.bool)
        return _resize(mask, size, "nearest")
    mask = np.asarray(mask)
    as_uint8 = mask.dtype == bool
    resized = _resize(mask.astype(np.uint8) if as_uint8 else mask, size, "nearest").numpy()
    return resized.astype(bool) if as_uint8 else resized


#: Preprocessing profiles by name: function(hu) -> float32, or function(hu, lung_mask) for those in
#: :data:`NEEDS_LUNG_MASK`.
PREPROCESSING: dict[str, Callable] = {
    "hu": hu_unchanged,
    "hu_window_zscore": hu_window_zscore,
    "hu_window_unit": hu_window_unit,
    "minmax": minmax,
    "lung_masked_hu": lung_masked_hu,
}
#: Profiles that take the lung mask as their second argument.
NEEDS_LUNG_MASK = frozenset({"lung_masked_hu"})


def get_preprocessing(name: str) -> Callable:
    """Return the preprocessing function registered under ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return PREPROCESSING[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing {name!r}; expected one of {sorted(PREPROCESSING)}") from None


def needs_lung_mask(name: str) -> bool:
    """True when the named profile takes the lung mask (raises ``ValueError`` for an unknown name)."""
    get_preprocessing(name)
    return name in NEEDS_LUNG_MASK
