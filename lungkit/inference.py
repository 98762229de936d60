"""Apply a trained segmentation model: the one home of inference (evaluation, the notebooks and ``lungkit predict``
all come here).

Three layers, each usable alone:

- :func:`predict_probabilities`: a batched forward pass over model-ready inputs of the model's size, with an
  optional sigmoid (logit heads) and optional test-time flips.
- :func:`sliding_window_predict`: models trained on patches (nnU-Net's way of keeping small nodules at their native
  pixel scale) and models with a fixed input size (Swin-UNet, UNETR) cannot take a whole slice at once. It tiles
  each slice with overlapping windows of the model's input size, predicts every window, and blends the overlapping
  probabilities with a Gaussian importance map (weights highest at a window's centre, where the model saw the most
  context; nnU-Net uses sigma = 1/8 of the window). With a window as large as the slice it is one plain prediction.
- :func:`predict_hu_slices`: HU slices of any size -> probabilities of the same size, by exactly the steps training
  used (:class:`InferenceSettings`, read from a model card by :func:`lungkit.model_card.inference_settings`):
  resize to the training slice size, the named preprocessing, one pass or sliding window, resize back.
- :func:`sliding_window_query_predict`: the same windows for a query model (Mask2Former, MaskFormer), giving its
  blended probabilities and its own instances (the official instance inference per window, merged across windows).

Test-time flips (``flips=True``) average the prediction of the slice with those of its left-right and up-down
mirror images (each mirrored back); off by default, as in every result the kit reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    flips: bool = False,
) -> np.ndarray:
    """Probabilities for whole slices from a model that sees ``window x window`` inputs.

    Args:
        model: a Keras segmentation model with one output channel.
        images: model-ready inputs ``(N, H, W, C)`` (already preprocessed), every side >= ``window``.
        window: the model's input side; read from the model when it is fixed, else the slice size (one pass).
        overlap: fraction of a window shared with its neighbour.
        batch_size: windows per forward pass.
        from_logits: the model outputs logits (sigmoid is applied before blending).
        flips: average each window's prediction with those of its mirror images (see the module docstring).

    Returns:
        float32 ``(N, H, W)`` probabilities.

    Raises:
        ValueError: for a non-4-D input or slices smaller than the window.
    """
    images = np.asarray(images, np.float32)
    tiling = _Tiling.of(model, images, window, overlap)
    summed = np.zeros(images.shape[:3], np.float32)
    for chunk, batch in tiling.batches(images, batch_size):
        tiling.add(summed, chunk, _forward(model, batch, from_logits, flips)[..., 0])
    return tiling.blended(summed)


class _Tiling:
    """The windows tiling a stack of slices and their Gaussian blending, shared by the sliding-window passes.

    ``tiles`` are ``(slice, y, x)`` in slice order; ``weights`` is one window's Gaussian map and ``normaliser`` its
    sum over a slice (what blended predictions are divided by).
    """

    def __init__(self, n: int, height: int, width: int, window: int, overlap: float):
        if window == height == width:
            windows = [(0, 0)]
        else:
            windows = [(y, x) for y in window_starts(height, window, overlap)
                       for x in window_starts(width, window, overlap)]
        self.window = window
        self.windows_per_slice = len(windows)
        self.tiles = [(i, y, x) for i in range(n) for y, x in windows]
        self.weights = gaussian_importance(window) if len(windows) > 1 else np.ones((window, window), np.float32)
        self.normaliser = np.zeros((height, width), np.float32)
        for y, x in windows:
            self.normaliser[y : y + window, x : x + window] += self.weights

    @classmethod
    def of(cls, model, images: np.ndarray, window: int | None, overlap: float) -> "_Tiling":
        """The tiling of model-ready ``images`` (N, H, W, C); ``window`` None: the model's fixed square input side,
        else the slice's shorter side (one pass).

        Raises:
            ValueError: for a non-4-D input, or as :func:`window_starts`.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        n, height, width, _ = images.shape
        if window is None:
            fixed = model.input_shape[1] if model.input_shape[1] == model.input_shape[2] else None
            window = fixed or min(height, width)
        return cls(n, height, width, window, overlap)

    def batches(self, images: np.ndarray, batch_size: int):
        """``(chunk, batch)`` pairs: up to ``batch_size`` tiles and their stacked windows, in tile order."""
        side = self.window
        for start in range(0, len(self.tiles), batch_size):
            chunk = self.tiles[start : start + batch_size]
            yield chunk, np.stack([images[i, y : y + side, x : x + side] for i, y, x in chunk])

    def add(self, summed: np.ndarray, chunk, probabilities) -> None:
        """Add a batch's window probabilities (B, window, window), Gaussian-weighted, into ``summed`` (N, H, W)."""
        side = self.window
        for (i, y, x), probability in zip(chunk, probabilities):
            summed[i, y : y + side, x : x + side] += probability * self.weights

    def blended(self, summed: np.ndarray) -> np.ndarray:
        return summed / self.normaliser[None]


#: (query, class) pairs a query model's window gives before the score threshold.
DEFAULT_INSTANCE_TOP_K = 10
#: Instances of a query model kept for lesion matching: score (class probability x mean mask probability) above.
DEFAULT_INSTANCE_SCORE = 0.5
#: Two window instances are one lesion when they share at least this fraction of the smaller one's pixels.
DEFAULT_DUPLICATE_FRACTION = 0.5


def merge_window_instances(instances: list[dict], duplicate_fraction: float = DEFAULT_DUPLICATE_FRACTION) -> list[dict]:
    """One slice's instances from overlapping windows -> one instance per lesion.

    A tumour inside two overlapping windows comes back twice, whole in one and often cut by the other's border, so
    IoU misses the duplicate; the share of the smaller mask does not. Best score first, an instance that shares at
    least ``duplicate_fraction`` of the smaller one's pixels with a kept instance is merged into it (union of the
    masks, the kept score), as the probability maps of the windows are blended; merging repeats until no two kept
    instances are duplicates (a union can grow onto an instance kept before it).

    Args:
        instances: ``{"mask": bool (H, W), "score": float, ...}`` in slice coordinates.
        duplicate_fraction: in (0, 1].

    Returns:
        The merged instances, best score first.
    """
    if not 0.0 < duplicate_fraction <= 1.0:
        raise ValueError(f"duplicate_fraction must be in (0, 1], got {duplicate_fraction}")
    def duplicates(first: np.ndarray, second: np.ndarray) -> bool:
        shared = int(np.logical_and(first, second).sum())
        return shared >= duplicate_fraction * min(int(first.sum()), int(second.sum()))

    kept: list[dict] = []
    for instance in sorted(instances, key=lambda item: -item["score"]):
        mask = np.asarray(instance["mask"], bool)
        if not mask.any():
            continue
        for other in kept:
            if duplicates(mask, other["mask"]):
                other["mask"] = np.logical_or(other["mask"], mask)
                break
        else:
            kept.append({**instance, "mask": mask.copy()})
    # a union can grow onto an instance kept before it: merge again until no two kept instances are duplicates
    merged_any = True
    while merged_any:
        merged_any = False
        for a, b in ((a, b) for a in range(len(kept)) for b in range(a + 1, len(kept))):
            if duplicates(kept[a]["mask"], kept[b]["mask"]):
                kept[a]["mask"] = np.logical_or(kept[a]["mask"], kept.pop(b)["mask"])
                merged_any = True
                break
    return kept


def sliding_window_query_predict(
    model,
    images: np.ndarray,
    window: int | None = None,
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 8,
    top_k: int = DEFAULT_INSTANCE_TOP_K,
    score_threshold: float = DEFAULT_INSTANCE_SCORE,
    duplicate_fraction: float = DEFAULT_DUPLICATE_FRACTION,
) -> tuple[np.ndarray, list[list[dict]]]:
    """A query model's (Mask2Former, MaskFormer) probabilities and instances for whole slices, from one pass.

    Each window's heads give both readings: the semantic map (blended exactly as :func:`sliding_window_predict`
    blends) and the official instance inference (:func:`lungkit.models.query_decoder.instance_predictions`: top-k
    (query, class) pairs, mask = logit > 0, score = class probability x mean mask probability), kept above
    ``score_threshold``, pasted into the slice and merged across windows (:func:`merge_window_instances`).

    Args:
        model: a :class:`lungkit.models.mask2former.MaskQuerySegmenter` (its call returns the heads).
        images: model-ready inputs ``(N, H, W, C)``.
        window: the window side; read from the model when None.
        overlap: fraction of a window shared with its neighbour.
        batch_size: windows per forward pass.
        top_k: (query, class) pairs per window before the score threshold.
        score_threshold: instances scoring at or below it are dropped (the semantic map is unaffected).
        duplicate_fraction: see :func:`merge_window_instances`.

    Returns:
        ``(probabilities (N, H, W) float32, instances)``: per slice a list of ``{"mask": bool (H, W), "score",
        "class", "query"}``, best first.

    Raises:
        ValueError: for a non-4-D input or slices smaller than the window.
    """
    import tensorflow as tf

    from lungkit.models.query_decoder import instance_predictions

    # a graph call: eager calls of the whole model cost several times a traced one on a CPU
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    images = np.asarray(images, np.float32)
    tiling = _Tiling.of(model, images, window, overlap)
    n, height, width, _ = images.shape
    side = tiling.window
    summed = np.zeros((n, height, width), np.float32)
    found: list[list[dict]] = [[] for _ in range(n)]
    merged_upto, tiles_done = 0, 0
    for chunk, batch in tiling.batches(images, batch_size):
        heads = forward(tf.constant(batch))
        tiling.add(summed, chunk, np.asarray(model.probabilities(heads), np.float32)[..., 0])
        per_window = instance_predictions(heads["class_logits"][-1], heads["mask_logits"][-1], (side, side),
                                          top_k=top_k, score_threshold=score_threshold)
        for (i, y, x), instances in zip(chunk, per_window):
            for instance in instances:
                mask = np.zeros((height, width), bool)
                mask[y : y + side, x : x + side] = instance["mask"]
                found[i].append({**instance, "mask": mask})
        # merge each slice as soon as its last window is in: only one slice's window instances are held at a time
        tiles_done += len(chunk)
        complete = tiles_done // tiling.windows_per_slice  # slices whose every window is in
        for i in range(merged_upto, complete):
            found[i] = merge_window_instances(found[i], duplicate_fraction)
        merged_upto = complete
    return tiling.blended(summed), found


def is_query_model(model) -> bool:
    """True for the set-prediction models whose call returns class and mask heads (Mask2Former, MaskFormer)."""
    return callable(getattr(model, "probabilities", None)) and hasattr(model, "query_decoder")


def _sigmoid(values: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(values).astype(np.float32)


def _forward(model, batch: np.ndarray, from_logits: bool, flips: bool) -> np.ndarray:
    """One forward pass of a batch ``(B, H, W, C)`` -> probabilities ``(B, H, W, 1)``, optionally flip-averaged."""
    def once(inputs):
        output = np.asarray(model.predict_on_batch(inputs), np.float32)
        return _sigmoid(output) if from_logits else output

    probabilities = once(batch)
    if flips:
        # mirror, predict, mirror back: axis 2 is left-right, axis 1 up-down
        probabilities = probabilities + once(batch[:, :, ::-1])[:, :, ::-1] + once(batch[:, ::-1])[:, ::-1]
        probabilities = probabilities / 3.0
    return probabilities


def predict_probabilities(model, images, batch_size: int = 8, from_logits: bool = False,
                          flips: bool = False) -> np.ndarray:
    """Tumour probabilities for a stack of model-ready images of the model's input size.

    Args:
        model: a segmentation model with one output channel.
        images: array (N, H, W) or (N, H, W, C), or a batched ``tf.data.Dataset`` yielding images (or
            (image, mask) pairs; the masks are ignored).
        batch_size: prediction batch size (arrays only).
        from_logits: the model outputs logits; a sigmoid is applied.
        flips: test-time flips (arrays only; see the module docstring).

    Returns:
        float32 array (N, H, W, 1) in [0, 1].

    Raises:
        ValueError: for an array that is not 3-D or 4-D, a non-positive batch size, or flips asked of a dataset.
    """
    import tensorflow as tf

    if isinstance(images, tf.data.Dataset):
        if flips:
            raise ValueError("test-time flips need an array of images, not a tf.data.Dataset")
        outputs = np.asarray(model.predict(images, verbose=0), np.float32)
        return _sigmoid(outputs) if from_logits else outputs
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(images) == 0:
        return np.zeros(images.shape[:3] + (1,), np.float32)
    if not flips:
        # keras' own batching: it distributes batches over the replicas of a strategy the model was built under
        outputs = np.asarray(model.predict(images, batch_size=batch_size, verbose=0), np.float32)
        return _sigmoid(outputs) if from_logits else outputs
    return np.concatenate([
        _forward(model, images[start : start + batch_size], from_logits, flips)
        for start in range(0, len(images), batch_size)
    ])


@dataclass(frozen=True)
class InferenceSettings:
    """How a model saw its slices in training, so that inference repeats it exactly.

    Args:
        slice_size: side training slices were resized to (the recipe's ``image_size``); every slice is resized to
            ``slice_size x slice_size`` before preprocessing, as evaluation does.
        channels: model input channels (1, or 3 = the slice repeated).
        preprocessing: name in :data:`lungkit.preprocess.PREPROCESSING`.
        window: sliding-window side for models trained on patches (the recipe's ``patch_size``); None: one pass
            over the whole slice (then the model's input side must be ``slice_size`` or free).
        from_logits: the model outputs logits.
        overlap: sliding-window overlap.
        flips: test-time flips.
    """

    slice_size: int
    channels: int
    preprocessing: str
    window: int | None = None
    from_logits: bool = False
    overlap: float = DEFAULT_OVERLAP
    flips: bool = False

    def describe(self) -> str:
        """One line for a prediction's record."""
        passes = (f"Gaussian-weighted sliding window of {self.window} px (overlap {self.overlap:g})" if self.window
                  else "one pass per slice")
        return (f"slices resized to {self.slice_size} px (bilinear), preprocessing {self.preprocessing!r}, "
                f"{self.channels} channel(s), {passes}, test-time flips {'on' if self.flips else 'off'}, "
                "probabilities resized back to the input's size (bilinear)")


def model_inputs_from_hu(hu_slices: np.ndarray, settings: InferenceSettings) -> tuple[np.ndarray, int]:
    """HU slices ``(N, H, W)`` -> model inputs ``(N, S, S, C)`` at ``settings.slice_size``.

    Returns:
        ``(inputs, slices without a plausible lung)``: the second counts slices of a lung-masked preprocessing that
        fell back to the whole slice (always 0 for other preprocessings).
    """
    from lungkit.postprocess import lung_region
    from lungkit.preprocess import get_preprocessing, needs_lung_mask, resize_image

    preprocess = get_preprocessing(settings.preprocessing)
    with_lungs = needs_lung_mask(settings.preprocessing)
    inputs, without_lungs = [], 0
    for hu in np.asarray(hu_slices, np.float32):
        if hu.shape != (settings.slice_size, settings.slice_size):
            hu = resize_image(hu, settings.slice_size)
        if with_lungs:
            # training read the lungs from the dataset's lung masks; a new scan has none, so they come from HU
            lungs = lung_region(hu, margin_px=0)
            if lungs is None:
                without_lungs += 1
                lungs = np.ones(hu.shape, bool)
            inputs.append(preprocess(hu, lungs))
        else:
            inputs.append(preprocess(hu))
    images = np.stack(inputs)[..., None] if inputs else np.zeros((0, settings.slice_size, settings.slice_size, 1),
                                                                    np.float32)
    if settings.channels == 3:
        images = np.repeat(images, 3, axis=-1)
    return images.astype(np.float32), without_lungs


def predict_hu_slices(model, hu_slices: np.ndarray, settings: InferenceSettings, batch_size: int = 8,
                      progress: bool = False, description: str = "predict") -> np.ndarray:
    """Probabilities for HU slices of any size, by the steps the model was trained with.

    Args:
        model: the trained model.
        hu_slices: ``(N, H, W)`` slices in Hounsfield units.
        settings: how the model saw its slices (:func:`lungkit.model_card.inference_settings`).
        batch_size: slices (one pass) or windows (sliding window) per forward pass; slices are also processed in
            chunks of this many, so memory stays bounded on a long series.
        progress: show a progress bar (slices).
        description: the progress bar's label.

    Returns:
        float32 ``(N, H, W)`` probabilities in [0, 1].

    Raises:
        ValueError: for input that is not ``(N, H, W)`` or a non-positive batch size.
    """
    from lungkit.preprocess import resize_image
    from lungkit.progress import progress_bar

    hu_slices = np.asarray(hu_slices)
    if hu_slices.ndim != 3:
        raise ValueError(f"hu_slices must be (N, H, W), got shape {hu_slices.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    count, height, width = hu_slices.shape
    probabilities = np.zeros((count, height, width), np.float32)
    bar = progress_bar(total=count, desc=description, unit="slice", disable=not progress)
    try:
        for start in range(0, count, batch_size):
            images, _ = model_inputs_from_hu(hu_slices[start : start + batch_size], settings)
            if settings.window:
                chunk = sliding_window_predict(model, images, window=settings.window, overlap=settings.overlap,
                                               batch_size=batch_size, from_logits=settings.from_logits,
                                               flips=settings.flips)
            else:
                chunk = predict_probabilities(model, images, batch_size=batch_size,
                                              from_logits=settings.from_logits, flips=settings.flips)[..., 0]
            for offset, probability in enumerate(chunk):
                if probability.shape != (height, width):
                    probability = resize_image(probability, (height, width))
                probabilities[start + offset] = np.clip(probability, 0.0, 1.0)
            bar.update(len(chunk))
    finally:
        bar.close()
    return probabilities


__all__ = [
    "DEFAULT_OVERLAP",
    "InferenceSettings",
    "gaussian_importance",
    "model_inputs_from_hu",
    "predict_hu_slices",
    "predict_probabilities",
    "sliding_window_predict",
    "window_starts",
]
