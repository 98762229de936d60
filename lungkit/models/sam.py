"""Box-prompted nodule segmentation with the Segment Anything Model (SAM v1, keras-hub).

.. important::
   Paper 003 uses **SAM2**. keras-hub (0.32) has SAM (v1) and SAM3 but no SAM2, and there is no Keras SAM2
   anywhere, so lungkit uses **SAM v1** (ViT-B/L/H image encoder, prompt encoder, two-way-transformer mask
   decoder) with the same box prompts. Every result made with this module must say "SAM (v1) standing in for
   SAM2". For images SAM2 differs mainly in its Hiera encoder; its video memory is not used on single slices.

Weights are never downloaded by lungkit. :func:`load_sam` loads a keras-hub preset folder the user has put on
disk (see ``SAM_DOWNLOAD_HELP``); :func:`build_tiny_sam` makes a random-initialised miniature SAM for wiring tests
(its masks mean nothing: results from it are ``status = "wiring_only"``).

The SAM frame (what ``segment_anything.utils.transforms.ResizeLongestSide`` does for the original model): the
image's longer side is resized to the model's input size (1024 for the presets) keeping the aspect ratio, then
the image is padded at the bottom and right to a square. Box coordinates are scaled by the same factors
(``x * new_w / old_w``, ``y * new_h / old_h``). The decoder's low-resolution logits (a quarter of the frame) are
upsampled to the frame, the padding is cut away, and the rest is resized to the original image, as SAM's
``postprocess_masks`` does. The padding value is the ImageNet mean colour, which the encoder's normalisation
maps to 0 - the same as SAM, which pads after normalising.

Boxes are ``(x0, y0, x1, y1)`` in pixel coordinates with pixel centres at integers (x = column, y = row).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: How to obtain real SAM weights (printed by :func:`load_sam` when the folder is missing).
SAM_DOWNLOAD_HELP = (
    "lungkit never downloads weights. On a machine with network access, download a keras-hub SAM preset "
    "(Kaggle model 'keras/sam', framework Keras, variation 'sam_base_sa1b' (94M parameters, ~375 MB) or "
    "'sam_large_sa1b' / 'sam_huge_sa1b'): either from https://www.kaggle.com/models/keras/sam/keras/sam_base_sa1b "
    "(Download -> unpack the archive), or with Python: `import kagglehub; "
    "kagglehub.model_download('keras/sam/keras/sam_base_sa1b')`, which prints the folder it wrote. Copy that folder "
    "(it holds config.json, model.weights.h5, metadata.json, preprocessor.json) to this machine and pass its path "
    "to lungkit.models.sam.load_sam(path) (notebooks: the `sam_preset_dir` parameter)."
)

#: ImageNet mean colour in 0-255: padding with it becomes 0 after the encoder's normalisation.
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)


#: ``tiny``: random-initialised miniature (wiring tests, ``status = "wiring_only"``). ``small`` / ``paper``: real
#: weights from a local preset folder (``preset_dir``); the paper does not say which SAM2 size it used, so both
#: suggest the base model. Results from either must say "SAM (v1) standing in for SAM2".
CONFIGS = {
    "tiny": {"image_size": 64, "preset_dir": None, "suggested_preset": None},
    "small": {"image_size": 1024, "preset_dir": None, "suggested_preset": "sam_base_sa1b"},
    "paper": {"image_size": 1024, "preset_dir": None, "suggested_preset": "sam_base_sa1b"},
}
#: Environment variable read when no ``preset_dir`` is given to :func:`build_sam`.
SAM_PRESET_ENV = "LUNGKIT_SAM_PRESET"


def build_sam(scale: str = "paper", input_shape=None, **overrides):
    """Registry builder: the tiny random SAM (``scale="tiny"``) or a pretrained SAM from a local preset folder.

    Args:
        scale: ``tiny``, ``small`` or ``paper`` (see ``CONFIGS``).
        input_shape: ``(side, side, 3)`` for ``tiny`` (the frame size); ignored for presets (always 1024).
        **overrides: ``preset_dir`` (folder of a keras-hub SAM preset; else ``$LUNGKIT_SAM_PRESET``),
            ``image_size`` (tiny only).

    Returns:
        A ``keras_hub.models.SAMImageSegmenter`` (inference only).

    Raises:
        ValueError: unknown scale or setting.
        FileNotFoundError: ``small`` / ``paper`` without an existing preset folder (says what to download).
    """
    if scale not in CONFIGS:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(CONFIGS)}")
    config = dict(CONFIGS[scale])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for sam; known: {sorted(config)}")
    config.update(overrides)
    if scale == "tiny":
        size = int(input_shape[0]) if input_shape is not None else int(config["image_size"])
        return build_tiny_sam(image_size=size)
    preset_dir = config["preset_dir"] or os.environ.get(SAM_PRESET_ENV)
    if not preset_dir:
        raise FileNotFoundError(
            f"SAM scale {scale!r} needs pretrained weights: pass preset_dir=... or set ${SAM_PRESET_ENV}. "
            f"Suggested preset: {config['suggested_preset']}. {SAM_DOWNLOAD_HELP}"
        )
    return load_sam(preset_dir)


def load_sam(preset_dir: str | os.PathLike):
    """Load a keras-hub SAM image segmenter from a local preset folder.

    Args:
        preset_dir: folder holding a keras-hub SAM preset (``config.json``, ``model.weights.h5``, ...).

    Returns:
        ``keras_hub.models.SAMImageSegmenter`` (inference only; keras-hub SAM cannot be trained).

    Raises:
        FileNotFoundError: if the folder or its ``config.json`` is missing; the message says what to download
            and where to put it (``SAM_DOWNLOAD_HELP``).
    """
    preset_dir = Path(preset_dir).expanduser()
    if not preset_dir.is_dir() or not (preset_dir / "config.json").is_file():
        what = "folder not found" if not preset_dir.is_dir() else "no config.json in this folder"
        raise FileNotFoundError(f"{preset_dir}: SAM preset {what}. {SAM_DOWNLOAD_HELP}")
    import keras_hub

    return keras_hub.models.SAMImageSegmenter.from_preset(str(preset_dir))


#: Random-initialised SAM architectures (keras-hub building blocks). ``tiny``: wiring tests only (hidden size 16,
#: 2 encoder layers, patch 8, one decoder layer; about 19 thousand parameters). ``base``: the layers and sizes of
#: keras-hub's ``sam_base_sa1b`` preset (93,735,728 parameters at 1024 px), for timing SAM without its weights.
RANDOM_SAM_ARCHITECTURES = {
    "tiny": {
        "patch_size": 8,
        "frame_multiple": 32,  # patch 8, windows of 4 patches
        "encoder": dict(hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2,
                        global_attention_layer_indices=[1], num_output_channels=16, window_size=4),
        "prompt": dict(hidden_size=16, mask_in_channels=4),
        "decoder": dict(num_layers=1, hidden_size=16, intermediate_dim=32, num_heads=2, embedding_dim=16,
                        num_multimask_outputs=3, iou_head_depth=2, iou_head_hidden_dim=16),
    },
    "base": {
        "patch_size": 16,
        "frame_multiple": 16,  # ViTDet pads the 14-patch windows itself
        "encoder": dict(hidden_size=768, num_layers=12, intermediate_dim=3072, num_heads=12,
                        global_attention_layer_indices=[2, 5, 8, 11], num_output_channels=256, window_size=14),
        "prompt": dict(hidden_size=256, mask_in_channels=16),
        "decoder": dict(num_layers=2, hidden_size=256, intermediate_dim=2048, num_heads=8, embedding_dim=256,
                        num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256),
    },
}


def build_random_sam(architecture: str, image_size: int, seed: int = 0):
    """A random-initialised SAM of one of :data:`RANDOM_SAM_ARCHITECTURES`; its numbers mean nothing.

    Same building blocks as the presets: ViTDet encoder with windowed + global attention and relative positions,
    SAM prompt encoder, two-way-transformer mask decoder with 3 multimask outputs.

    Args:
        architecture: ``tiny`` or ``base``.
        image_size: side of the square SAM frame (a multiple of the architecture's ``frame_multiple``).
        seed: weight initialisation seed.

    Returns:
        An uncompiled ``keras_hub.models.SAMImageSegmenter`` without preprocessor (inputs in [0, 1]).

    Raises:
        ValueError: an unknown architecture, or a frame side that is not a multiple of ``frame_multiple``.
    """
    import keras
    import keras_hub

    if architecture not in RANDOM_SAM_ARCHITECTURES:
        raise ValueError(f"unknown SAM architecture {architecture!r}; expected one of {sorted(RANDOM_SAM_ARCHITECTURES)}")
    spec = RANDOM_SAM_ARCHITECTURES[architecture]
    patch = spec["patch_size"]
    if image_size % spec["frame_multiple"]:
        raise ValueError(
            f"image_size must be a multiple of {spec['frame_multiple']} for the {architecture} SAM, got {image_size}"
        )
    keras.utils.set_random_seed(seed)
    encoder = keras_hub.models.ViTDetBackbone(
        patch_size=patch, image_shape=(image_size, image_size, 3), **spec["encoder"]
    )
    prompt_encoder = keras_hub.layers.SAMPromptEncoder(
        image_embedding_size=(image_size // patch, image_size // patch),
        input_image_size=(image_size, image_size),
        **spec["prompt"],
    )
    mask_decoder = keras_hub.layers.SAMMaskDecoder(**spec["decoder"])
    backbone = keras_hub.models.SAMBackbone(
        image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )
    return keras_hub.models.SAMImageSegmenter(backbone=backbone)


def build_tiny_sam(image_size: int = 64, seed: int = 0):
    """A random-initialised miniature SAM with the real architecture, for wiring tests only
    (``build_random_sam("tiny", ...)``; see :data:`RANDOM_SAM_ARCHITECTURES`).

    Args:
        image_size: side of the square SAM frame (a multiple of 32).
        seed: weight initialisation seed.
    """
    return build_random_sam("tiny", image_size, seed)


def sam_frame_size(model) -> int:
    """Side of the square input frame a SAM model expects (1024 for the presets)."""
    height, width = model.backbone.prompt_encoder.input_image_size
    if height != width:
        raise ValueError(f"SAM frame must be square, got {height}x{width}")
    return int(height)


@dataclass(frozen=True)
class SamFrame:
    """Geometry of one image inside the SAM frame.

    Attributes:
        original_shape: ``(height, width)`` of the image.
        resized_shape: ``(height, width)`` after scaling the longer side to ``frame_size``.
        frame_size: side of the square frame.
    """

    original_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    frame_size: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Factors ``(new_w / old_w, new_h / old_h)`` applied to x and y coordinates."""
        return (
            self.resized_shape[1] / self.original_shape[1],
            self.resized_shape[0] / self.original_shape[0],
        )


def sam_frame_geometry(original_shape, frame_size: int = 1024) -> SamFrame:
    """Where an image of ``original_shape`` lands in the frame (SAM's ``get_preprocess_shape``)."""
    height, width = int(original_shape[0]), int(original_shape[1])
    scale = frame_size / max(height, width)
    resized = (int(math.floor(height * scale + 0.5)), int(math.floor(width * scale + 0.5)))
    return SamFrame((height, width), resized, int(frame_size))


def box_to_sam_frame(box, frame: SamFrame) -> np.ndarray:
    """Map ``(x0, y0, x1, y1)`` (or an ``(n, 4)`` array) from image pixels into the SAM frame."""
    scale_x, scale_y = frame.scale_xy
    return np.asarray(box, dtype=np.float32) * np.asarray([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)


def box_from_sam_frame(box, frame: SamFrame) -> np.ndarray:
    """Inverse of :func:`box_to_sam_frame`."""
    scale_x, scale_y = frame.scale_xy
    return np.asarray(box, dtype=np.float32) / np.asarray([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    height, width = shape
    if image.shape[:2] == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = height < image.shape[0] or width < image.shape[1]
    # INTER_AREA when shrinking avoids aliasing (SAM resizes with PIL's antialiased bilinear).
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image.astype(np.float32, copy=False), (width, height), interpolation=interpolation)
    return resized.reshape((height, width) + image.shape[2:])


def to_sam_frame(image, box=None, frame_size: int = 1024, pad_value=IMAGENET_MEAN_255):
    """Put an image (and its box) into the square SAM frame.

    Args:
        image: ``(height, width)`` or ``(height, width, channels)`` array, values as the model expects them
            before its preprocessing (0-255 for SAM).
        box: optional ``(x0, y0, x1, y1)`` in image pixels.
        frame_size: side of the frame (``sam_frame_size(model)``).
        pad_value: value of the padding, one number or one per channel.

    Returns:
        ``(frame_image, frame_box, frame)``: float32 ``(frame_size, frame_size[, channels])``, the box in frame
        pixels (None if no box was given), and the :class:`SamFrame` needed to map back.
    """
    image = np.asarray(image, dtype=np.float32)
    frame = sam_frame_geometry(image.shape[:2], frame_size)
    resized = _resize(image, frame.resized_shape)
    canvas_shape = (frame_size, frame_size) + image.shape[2:]
    pad = np.asarray(pad_value, dtype=np.float32)
    if image.ndim == 2 and pad.ndim > 0:
        pad = pad.mean()
    canvas = np.empty(canvas_shape, dtype=np.float32)
    canvas[...] = pad
    canvas[: frame.resized_shape[0], : frame.resized_shape[1]] = resized
    frame_box = None if box is None else box_to_sam_frame(box, frame)
    return canvas, frame_box, frame


def from_sam_frame(frame_mask, original_shape, frame_size: int | None = None) -> np.ndarray:
    """Map a frame-sized mask (probabilities or logits) back onto the original image.

    The padding is cut away and the rest is resized (bilinear) to ``original_shape``.

    Args:
        frame_mask: ``(frame_size, frame_size)`` array.
        original_shape: ``(height, width)`` of the original image.
        frame_size: defaults to ``frame_mask.shape[0]``.

    Returns:
        float32 ``(height, width)`` array.
    """
    frame_mask = np.asarray(frame_mask, dtype=np.float32)
    frame = sam_frame_geometry(original_shape, frame_size or frame_mask.shape[0])
    valid = frame_mask[: frame.resized_shape[0], : frame.resized_shape[1]]
    import cv2

    height, width = frame.original_shape
    # Bilinear in both directions, as SAM's postprocess_masks (F.interpolate, align_corners=False).
    return cv2.resize(valid, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width)


def jitter_box(box, fraction: float, rng: np.random.Generator | int | None = None, image_shape=None) -> np.ndarray:
    """Perturb a box prompt like a hurried annotator: each side moves by up to ``fraction`` of the box size.

    x coordinates move by ``U(-fraction, fraction) * width``, y coordinates by ``... * height`` (MedSAM trains with
    a similar random shift). The result is re-ordered so ``x0 <= x1``, ``y0 <= y1``, and clipped to the image.

    Args:
        box: ``(x0, y0, x1, y1)``.
        fraction: largest shift as a fraction of the box's width / height (0 = no change).
        rng: a ``numpy.random.Generator`` or a seed.
        image_shape: ``(height, width)`` to clip to, or None.

    Returns:
        float32 array of 4 values.
    """
    box = np.asarray(box, dtype=np.float32).copy()
    if fraction < 0:
        raise ValueError(f"jitter fraction must be >= 0, got {fraction}")
    if fraction > 0:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        width, height = box[2] - box[0], box[3] - box[1]
        box += rng.uniform(-fraction, fraction, size=4).astype(np.float32) * np.array([width, height, width, height])
        box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
    if image_shape is not None:
        height, width = image_shape[:2]
        box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    return box.astype(np.float32)


def grey_to_sam_rgb(image, hu_window: tuple[float, float] | None = None) -> np.ndarray:
    """A CT slice as the 0-255 three-channel picture SAM expects: min-max (paper 003 Eq. 5), grey to RGB.

    Args:
        image: ``(height, width)`` HU (or any grey values), or ``(height, width, 3)`` already in 0-255.
        hu_window: optional HU window applied before min-max.

    Returns:
        float32 ``(height, width, 3)`` in [0, 255].
    """
    from lungkit.data.volumes import minmax_to_255

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 3:
        return image
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected a (height, width) slice or (height, width, 3) picture, got {image.shape}")
    return np.repeat(minmax_to_255(image, hu_window)[..., None], 3, axis=-1)


def _input_scaler(model):
    """How the model wants 0-255 pixels scaled: the preset's image converter (1/255 for keras-hub SAM) or 1/255."""
    converter = getattr(getattr(model, "preprocessor", None), "image_converter", None)
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    scale = np.asarray(1.0 / 255.0 if scale is None else scale, dtype=np.float32)
    offset = np.asarray(0.0 if offset is None else offset, dtype=np.float32)
    return lambda pixels: pixels * scale + offset


#: Largest forward-pass batch: keras-hub 0.32's SAM aborts the process (a native crash, not a Python error) on
#: batches above 8 on the TensorFlow backend, so :func:`segment_with_boxes` refuses them up front.
MAX_SAM_BATCH = 8


def segment_with_boxes(
    model,
    images,
    boxes,
    *,
    batch_size: int = 4,
    hu_window: tuple[float, float] | None = None,
    jitter_fraction: float = 0.0,
    seed: int = 0,
    multimask: bool = False,
):
    """Segment one object per image from a box prompt with SAM; probabilities at the original image size.

    Per image: :func:`grey_to_sam_rgb` (min-max to 0-255, grey to RGB), :func:`to_sam_frame` (longest side to the
    model's frame, pad), optional :func:`jitter_box`, SAM forward pass with the box, the low-resolution logits
    upsampled to the frame, padding removed, resized back (:func:`from_sam_frame`), then a sigmoid.

    The model is called directly (not through ``predict``), so its keras-hub preprocessor does not run twice:
    this function does the resize itself (aspect-preserving, unlike the converter's crop) and applies the
    converter's scale and offset.

    Args:
        model: a ``SAMImageSegmenter`` (:func:`load_sam` or :func:`build_tiny_sam`).
        images: a list of 2-D slices (sizes may differ) or an array ``(n, height, width)``; HU are fine.
        boxes: ``(n, 4)`` boxes ``(x0, y0, x1, y1)`` in each image's pixels.
        batch_size: images per forward pass, 1 to :data:`MAX_SAM_BATCH` (SAM-B at 1024 needs about 1 GB of
            activations per image).
        hu_window: optional HU window before the min-max scaling.
        jitter_fraction: box jitter (see :func:`jitter_box`), seeded by ``seed``; 0 = exact boxes.
        seed: jitter seed.
        multimask: False takes SAM's single-mask output (token 0, what SAM uses for one unambiguous prompt);
            True takes the best of the three multimask outputs by predicted IoU.

    Returns:
        Probabilities in [0, 1]: an array ``(n, height, width)`` when ``images`` is an array, else a list of
        ``(height_i, width_i)`` arrays.

    Raises:
        ValueError: a batch size outside 1..``MAX_SAM_BATCH``, or not one box per image.
    """
    import keras

    if not 1 <= int(batch_size) <= MAX_SAM_BATCH:
        raise ValueError(
            f"batch_size={batch_size}: SAM runs 1 to {MAX_SAM_BATCH} images per forward pass (keras-hub's SAM "
            f"crashes the process on larger batches)"
        )
    stacked = isinstance(images, np.ndarray)
    image_list = list(images)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(image_list) != len(boxes):
        raise ValueError(f"{len(image_list)} images but {len(boxes)} boxes; give one box per image")
    frame_size = sam_frame_size(model)
    embedding_size = model.backbone.prompt_encoder.image_embedding_size
    scale_pixels = _input_scaler(model)
    rng = np.random.default_rng(seed)
    results = []
    for start in range(0, len(image_list), batch_size):
        frames, frame_boxes, geometries = [], [], []
        for image, box in zip(image_list[start : start + batch_size], boxes[start : start + batch_size]):
            picture = grey_to_sam_rgb(image, hu_window)
            box = jitter_box(box, jitter_fraction, rng, image_shape=picture.shape) if jitter_fraction else box
            frame_image, frame_box, geometry = to_sam_frame(picture, box, frame_size)
            frames.append(scale_pixels(frame_image))
            frame_boxes.append(frame_box.reshape(1, 2, 2))
            geometries.append(geometry)
        count = len(frames)
        inputs = {
            "images": np.stack(frames).astype(np.float32),
            "points": np.zeros((count, 0, 2), np.float32),
            "labels": np.zeros((count, 0), np.float32),
            "boxes": np.stack(frame_boxes).astype(np.float32),
            "masks": np.zeros((count, 0, 4 * embedding_size[0], 4 * embedding_size[1], 1), np.float32),
        }
        outputs = model(inputs, training=False)
        logits = keras.ops.convert_to_numpy(outputs["masks"]).astype(np.float32)  # (count, 4, h/4, w/4)
        if multimask:
            iou = keras.ops.convert_to_numpy(outputs["iou_pred"])[:, 1:]
            chosen = logits[np.arange(count), 1 + iou.argmax(axis=1)]
        else:
            chosen = logits[:, 0]
        for low_res, geometry in zip(chosen, geometries):
            frame_logits = _resize_linear(low_res, (frame_size, frame_size))
            original_logits = from_sam_frame(frame_logits, geometry.original_shape, frame_size)
            results.append((1.0 / (1.0 + np.exp(-original_logits))).astype(np.float32))
    return np.stack(results) if stacked else results


def _resize_linear(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(array, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
