"""From probability maps to masks: thresholding, connected components, dense CRF (paper 004) and its fallback.

Paper 004 refines its segmentation with a conditional random field, E(x) = sum_i psi_u(x_i) + sum_{i<j} psi_p(x_i, x_j)
(eq. 10), and prints no parameters. The kit uses the fully connected CRF of Kraehenbuehl & Koltun (2011) through
``pydensecrf2`` (import name ``pydensecrf``; ``pip install lungkit[crf]``, builds from source in about a minute)
when it is installed. Without it, :func:`refine` falls back to :func:`guided_mean_field`: a few mean-field updates of a
*local* two-label Potts model whose messages are a Gaussian filter plus an edge-aware guided filter (He et al. 2013)
of the current foreground belief. That smooths the map while respecting image edges, as the CRF's Gaussian and
bilateral kernels do, but it is NOT the dense CRF: its kernels are local and the guided filter only approximates a
bilateral kernel. :func:`refine` returns which method ran, so the result's protocol says so
(``dense_crf`` | ``scipy_fallback`` | ``none``).

Parameters of both are ours (the paper gives none) and were chosen on synthetic discs, not tuned on test data.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from scipy import ndimage

#: Names :func:`refine` reports as the method actually used (they go into summary.json's protocol.postprocess).
REFINE_METHODS_USED = ("dense_crf", "scipy_fallback", "none")


def threshold(prob: np.ndarray, t: float = 0.5) -> np.ndarray:
    """Binary mask of ``prob >= t`` as uint8 (0/1).

    Args:
        prob: probability map of any shape.
        t: threshold; a pixel whose probability is at least ``t`` is tumour.

    Returns:
        uint8 array of the same shape.
    """
    return (np.asarray(prob) >= t).astype(np.uint8)


def keep_largest_components(
    mask: np.ndarray, k: int | None = 1, min_size: int = 0, connectivity: int = 2
) -> np.ndarray:
    """Keep the ``k`` largest connected components of a binary mask that have at least ``min_size`` pixels.

    Careful: a slice can hold several tumours; ``k=1`` keeps only one of them.

    Args:
        mask: binary 2-D (or N-D) mask.
        k: how many components to keep (largest first); None keeps every component of at least ``min_size``.
        min_size: components smaller than this (pixels) are removed.
        connectivity: 1 (4-neighbourhood in 2-D) or 2 (8-neighbourhood).

    Returns:
        uint8 mask of the same shape.

    Raises:
        ValueError: if ``k`` is not positive.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be a positive number of components or None; got {k}")
    mask = np.asarray(mask).astype(bool)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, n_components = ndimage.label(mask, structure=structure)
    if n_components == 0:
        return np.zeros(mask.shape, dtype=np.uint8)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")  # ties: lower label first, so the result is deterministic
    order = order[sizes[order] >= min_size]
    if k is not None:
        order = order[:k]
    keep = np.zeros(n_components + 1, dtype=bool)
    keep[order + 1] = True
    return keep[labels].astype(np.uint8)


#: HU below which a pixel of an axial slice counts as air (lung parenchyma is about -850, soft tissue above -100).
LUNG_AIR_HU = -400.0
#: A lung region smaller than this share of the slice is not trusted (a patch, a slice above the lungs):
#: the slice is then left unrestricted.
MIN_LUNG_FRACTION = 0.02


def lung_region(hu: np.ndarray, margin_px: int, air_hu: float = LUNG_AIR_HU) -> np.ndarray | None:
    """The lungs of one axial CT slice from HU alone, grown by ``margin_px``; None when no plausible lung is found.

    Air below ``air_hu`` that does not touch the slice border (the air around the body and in the table does) is
    the lungs and airways; holes are filled (vessels, nodules inside the lung), a closing of radius ``margin_px``
    puts back the notches that juxtapleural nodules cut into the lung's outline, and a dilation by ``margin_px``
    keeps the pleura-attached tumour whose edge lies outside the air. No model is involved, so it works on any CT
    in HU and on no other input (a tumour patch or a slice without lungs gives None).

    Args:
        hu: 2-D slice in Hounsfield units.
        margin_px: pixels the region is grown by (and the closing radius); 0 keeps the filled air region.
        air_hu: the air threshold.

    Returns:
        Boolean mask of the slice's shape, or None.
    """
    from skimage.morphology import disk
    from skimage.segmentation import clear_border

    hu = np.asarray(hu, np.float32)
    if hu.ndim != 2:
        raise ValueError(f"expected one 2-D slice, got shape {hu.shape}")
    inside = clear_border(ndimage.label(hu < air_hu)[0]) > 0
    if inside.mean() < MIN_LUNG_FRACTION:
        return None
    region = ndimage.binary_fill_holes(inside)
    if margin_px > 0:
        footprint = disk(int(margin_px))
        region = ndimage.binary_closing(region, structure=footprint, border_value=0)
        region = ndimage.binary_dilation(region, structure=footprint)
        region = ndimage.binary_fill_holes(region)
    return region


def restrict_to_lungs(probabilities: np.ndarray, hu: np.ndarray, margin_px: int) -> tuple[np.ndarray, int]:
    """Zero the probabilities outside each slice's :func:`lung_region` (grown by ``margin_px``).

    Args:
        probabilities: ``(N, H, W)`` maps.
        hu: ``(N, H, W)`` slices in HU, the same size.
        margin_px: see :func:`lung_region`.

    Returns:
        ``(restricted probabilities, number of slices left unrestricted because no lung was found)``.
    """
    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape != np.shape(hu):
        raise ValueError(f"probabilities {probabilities.shape} and HU {np.shape(hu)} must have the same shape")
    restricted, unrestricted = probabilities.copy(), 0
    for index in range(len(probabilities)):
        region = lung_region(hu[index], margin_px)
        if region is None:
            unrestricted += 1
        else:
            restricted[index][~region] = 0.0
    return restricted, unrestricted


def image_to_uint8(image: np.ndarray, intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Scale a grey image to uint8 for the CRF's appearance kernel.

    Args:
        image: 2-D grey image (HU, z-scored or [0, 1]); uint8 is returned unchanged.
        intensity_range: (low, high) mapped to 0..255 after clipping, e.g. (-1000, 400) for HU; per-image min-max
            when None. Pass the range for raw HU: min-max of a slice with -2048 padding wastes most grey levels.

    Returns:
        uint8 array of the same shape.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    low, high = intensity_range if intensity_range is not None else (image.min(), image.max())
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (np.clip(image, low, high) - low) / (high - low)
    return np.round(scaled * 255.0).astype(np.uint8)


def _check_pair(prob: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob, dtype=np.float64)
    image = np.asarray(image)
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if prob.ndim != 2:
        raise ValueError(f"expected one 2-D probability map; got shape {prob.shape}")
    if image.shape != prob.shape:
        raise ValueError(f"image shape {image.shape} differs from probability map shape {prob.shape}")
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise ValueError("probability map must be finite and lie in [0, 1] (apply a sigmoid to logits)")
    return prob, image


def dense_crf_available() -> bool:
    """True when ``pydensecrf2`` (module ``pydensecrf``) is installed."""
    return importlib.util.find_spec("pydensecrf") is not None


def dense_crf(
    prob: np.ndarray,
    image: np.ndarray,
    n_iter: int = 5,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 10.0,
    bilateral_srgb: float = 20.0,
    bilateral_compat: float = 5.0,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Fully connected CRF (Kraehenbuehl & Koltun) on a two-label probability map, with ``pydensecrf2``.

    Unary: -log of (1 - p, p). Pairwise: a Gaussian smoothness kernel (``gaussian_sxy`` px) and a bilateral
    appearance kernel (``bilateral_sxy`` px, ``bilateral_srgb`` grey levels of the uint8 image), Potts compatibility.

    Args:
        prob: foreground probability (H, W) in [0, 1].
        image: the grey slice the prediction was made on (H, W), see :func:`image_to_uint8`.
        n_iter: mean-field iterations.
        gaussian_sxy, gaussian_compat: smoothness kernel width and weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel widths and weight.
        intensity_range: passed to :func:`image_to_uint8`.

    Returns:
        Refined foreground probability (H, W), float32.

    Raises:
        ImportError: if ``pydensecrf2`` is not installed (``pip install lungkit[crf]``).
        ValueError: on mismatched shapes or probabilities outside [0, 1].
    """
    if not dense_crf_available():
        raise ImportError("dense_crf needs pydensecrf2 (pip install 'lungkit[crf]' or pip install pydensecrf2==1.1)")
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    prob, image = _check_pair(prob, image)
    height, width = prob.shape
    p = np.clip(prob, 1e-6, 1.0 - 1e-6).astype(np.float32)
    unary = np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - p, p])))
    rgb = np.ascontiguousarray(np.repeat(image_to_uint8(image, intensity_range)[..., None], 3, axis=-1))
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat)
    q = np.asarray(crf.inference(n_iter), dtype=np.float32).reshape(2, height, width)
    return q[1]


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving guided filter (He, Sun, Tang 2013) with box windows of side 2 * radius + 1.

    Args:
        guide: guidance image scaled to [0, 1].
        source: image to filter (same shape).
        radius: window radius in pixels.
        eps: regularisation; small values keep more of the guide's edges.

    Returns:
        Filtered ``source`` (float64).
    """
    size = 2 * radius + 1

    def box(values):
        return ndimage.uniform_filter(values, size=size, mode="reflect")

    mean_guide = box(guide)
    mean_source = box(source)
    covariance = box(guide * source) - mean_guide * mean_source
    variance = box(guide * guide) - mean_guide**2
    a = covariance / (variance + eps)
    b = mean_source - a * mean_guide
    return box(a) * guide + box(b)


def guided_mean_field(
    prob: np.ndarray,
    image: np.ndarray,
    n_iter: int = 5,
    gaussian_sigma: float = 3.0,
    gaussian_weight: float = 3.0,
    guided_radius: int = 4,
    guided_eps: float = 1e-2,
    guided_weight: float = 5.0,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The scipy fallback for :func:`dense_crf`: mean field of a local Potts model with edge-aware messages.

    Each iteration sets ``q = sigmoid(logit(p) + sum_k w_k * (2 * F_k(q) - 1))`` where ``F_k`` are a Gaussian filter
    and a guided filter steered by the image. ``2 F(q) - 1`` is the Potts message for two labels (neighbours'
    foreground belief minus their background belief). NOT the dense CRF: the kernels are local and the guided filter
    stands in for the bilateral kernel.

    Args:
        prob: foreground probability (H, W) in [0, 1].
        image: the grey slice (H, W), scaled like :func:`image_to_uint8` then to [0, 1].
        n_iter: mean-field iterations.
        gaussian_sigma, gaussian_weight: smoothness kernel width (px) and weight.
        guided_radius, guided_eps, guided_weight: appearance kernel window radius, edge regularisation and weight.
        intensity_range: passed to :func:`image_to_uint8`.

    Returns:
        Refined foreground probability (H, W), float32.
    """
    prob, image = _check_pair(prob, image)
    guide = image_to_uint8(image, intensity_range).astype(np.float64) / 255.0
    p = np.clip(prob, 1e-6, 1.0 - 1e-6)
    unary_logit = np.log(p) - np.log1p(-p)
    q = prob.copy()
    for _ in range(n_iter):
        message = gaussian_weight * (2.0 * ndimage.gaussian_filter(q, gaussian_sigma, mode="reflect") - 1.0)
        message += guided_weight * (2.0 * guided_filter(guide, q, guided_radius, guided_eps) - 1.0)
        q = 1.0 / (1.0 + np.exp(-(unary_logit + message)))
    return q.astype(np.float32)


def refine(
    prob: np.ndarray,
    image: np.ndarray | None = None,
    method: str = "auto",
    t: float = 0.5,
    **method_kwargs,
) -> tuple[np.ndarray, str]:
    """Turn one probability map into a mask, optionally refined; report the method actually used.

    Args:
        prob: foreground probability (H, W) or (H, W, 1) in [0, 1].
        image: the grey slice the prediction was made on; needed by every method except ``none``.
        method: ``auto`` (dense CRF when pydensecrf2 is installed, else the scipy fallback), ``dense_crf``,
            ``fallback`` (:func:`guided_mean_field`) or ``none`` (plain threshold).
        t: threshold applied to the (refined) probability.
        **method_kwargs: passed to :func:`dense_crf` or :func:`guided_mean_field`.

    Returns:
        ``(mask, method_used)``: uint8 (H, W) mask and one of ``dense_crf``, ``scipy_fallback``, ``none``.

    Raises:
        ValueError: for an unknown method, or a missing image.
        ImportError: for ``dense_crf`` without pydensecrf2.
    """
    used = resolve_refine_method(method)
    if used == "none":
        prob = np.asarray(prob)
        return threshold(prob[..., 0] if prob.ndim == 3 and prob.shape[-1] == 1 else prob, t), "none"
    if image is None:
        raise ValueError(f"refine method {method!r} needs the image the prediction was made on")
    if used == "dense_crf":
        return threshold(dense_crf(prob, image, **method_kwargs), t), used
    return threshold(guided_mean_field(prob, image, **method_kwargs), t), used


def resolve_refine_method(method: str) -> str:
    """The method :func:`refine` will use for ``method``: ``dense_crf``, ``scipy_fallback`` or ``none``.

    Raises:
        ValueError: for an unknown method.
        ImportError: for ``dense_crf`` without pydensecrf2.
    """
    known = ("auto", "dense_crf", "fallback", "none")
    if method not in known:
        raise ValueError(f"unknown refine method {method!r}; expected one of {known}")
    if method == "auto":
        return "dense_crf" if dense_crf_available() else "scipy_fallback"
    if method == "dense_crf" and not dense_crf_available():
        raise ImportError("refine(method='dense_crf') needs pydensecrf2 (pip install 'lungkit[crf]'); "
                          "use method='auto' to fall back to the scipy approximation")
    return {"fallback": "scipy_fallback"}.get(method, method)


def refine_batch(
    probs: np.ndarray, images: np.ndarray | None = None, method: str = "auto", t: float = 0.5, **method_kwargs
) -> tuple[np.ndarray, str]:
    """:func:`refine` over a batch (N, H, W[, 1]); returns ``(masks (N, H, W) uint8, method_used)``."""
    probs = np.asarray(probs)
    if images is not None and len(images) != len(probs):
        raise ValueError(f"{len(probs)} probability maps but {len(images)} images")
    used = resolve_refine_method(method)
    method = {"scipy_fallback": "fallback"}.get(used, used)  # fixed for the whole batch
    masks = [
        refine(probs[i], None if images is None else images[i], method, t, **method_kwargs)[0]
        for i in range(len(probs))
    ]
    if not masks:
        return np.zeros((0,) + probs.shape[1:3], dtype=np.uint8), used
    return np.stack(masks), used
