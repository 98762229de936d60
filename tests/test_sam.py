"""SAM (v1, standing in for paper 003's SAM2): frame geometry, box prompts, tiny-model wiring, local presets."""

from __future__ import annotations

import numpy as np
import pytest

from lungkit.data.nodule_slices import disc_mask
from lungkit.models.sam import (
    IMAGENET_MEAN_255,
    box_from_sam_frame,
    box_to_sam_frame,
    build_tiny_sam,
    from_sam_frame,
    grey_to_sam_rgb,
    jitter_box,
    load_sam,
    sam_frame_geometry,
    sam_frame_size,
    segment_with_boxes,
    to_sam_frame,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of the first and last pixel centres of a mask (segment_anything's batched_mask_to_box)."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)


@pytest.mark.parametrize("shape, centre", [((300, 500), (400.0, 220.0)), ((500, 300), (60.0, 410.0))])
def test_box_lands_on_the_nodule_in_the_frame_and_back(shape, centre):
    nodule = disc_mask(shape, centre, 15.0)
    image = np.where(nodule, 200.0, 20.0).astype(np.float32)
    box = _mask_box(nodule)

    frame_image, frame_box, frame = to_sam_frame(image, box, frame_size=1024)
    long_side = max(shape)
    expected = tuple(int(np.floor(n * 1024 / long_side + 0.5)) for n in shape)  # SAM's get_preprocess_shape
    assert frame.resized_shape == expected and sorted(expected) == [614, 1024]  # 300 * 1024 / 500 = 614.4
    assert frame_image.shape == (1024, 1024)
    # padding (bottom or right) holds the pad value, the image fills the top-left
    assert np.allclose(frame_image[expected[0]:, :], np.mean(IMAGENET_MEAN_255))
    assert np.allclose(frame_image[:, expected[1]:], np.mean(IMAGENET_MEAN_255))

    # the nodule in the frame sits inside the frame box, and the box hugs it (within one scaled pixel)
    frame_nodule = frame_image > 160  # nodule 200, background 20, padding 114.5
    scale = 1024 / long_side
    frame_extent = _mask_box(frame_nodule)
    assert np.all(np.abs(frame_extent - frame_box) <= scale + 1), (frame_extent, frame_box)
    # a point prompt at the nodule centre maps onto the nodule
    centre_frame = box_to_sam_frame([*centre, *centre], frame)[:2]
    assert frame_nodule[int(round(centre_frame[1])), int(round(centre_frame[0]))]

    # box round trip is exact; the mask comes back onto the same pixels
    np.testing.assert_allclose(box_from_sam_frame(frame_box, frame), box, atol=1e-3)
    back = from_sam_frame(frame_nodule.astype(np.float32), shape) > 0.5
    assert back.shape == shape
    assert _iou(back, nodule) > 0.93


def test_frame_geometry_by_hand():
    frame = sam_frame_geometry((512, 512), 1024)
    assert frame.resized_shape == (1024, 1024) and frame.scale_xy == (2.0, 2.0)
    frame = sam_frame_geometry((300, 500), 1024)
    assert frame.resized_shape == (614, 1024)  # 300 * 2.048 = 614.4
    expected = [10 * 2.048, 20 * 614 / 300, 30 * 2.048, 40 * 614 / 300]  # x by new_w / old_w, y by new_h / old_h
    np.testing.assert_allclose(box_to_sam_frame([10, 20, 30, 40], frame), expected, rtol=1e-6)


def test_jitter_is_seeded_bounded_and_clipped():
    box = np.array([40.0, 50.0, 60.0, 90.0])
    np.testing.assert_array_equal(jitter_box(box, 0.0), box)
    first, again = jitter_box(box, 0.1, 5), jitter_box(box, 0.1, 5)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, jitter_box(box, 0.1, 6))
    moves = np.abs(first - box)
    assert np.all(moves[[0, 2]] <= 0.1 * 20 + 1e-5) and np.all(moves[[1, 3]] <= 0.1 * 40 + 1e-5)
    many = np.stack([jitter_box([0.0, 0.0, 10.0, 10.0], 0.5, seed, image_shape=(8, 9)) for seed in range(50)])
    assert many.min() >= 0 and many[:, [0, 2]].max() <= 8 and many[:, [1, 3]].max() <= 7
    assert np.all(many[:, 0] <= many[:, 2]) and np.all(many[:, 1] <= many[:, 3])


def test_grey_to_rgb_uses_eq5():
    picture = grey_to_sam_rgb(np.array([[-1000.0, 0.0], [1000.0, 500.0]]))
    assert picture.shape == (2, 2, 3)
    np.testing.assert_allclose(picture[..., 1], [[0, 127.5], [255, 191.25]])


class _BoxEchoSAM:
    """Stand-in for SAMImageSegmenter: the low-res mask is +10 inside the box it is given, -10 outside.

    Run through segment_with_boxes, the probabilities must come back as the original box: this checks the
    whole frame -> low-res -> frame -> original chain independently of SAM's weights.
    """

    class _PromptEncoder:
        input_image_size = (128, 128)
        image_embedding_size = (8, 8)

    class _Backbone:
        pass

    def __init__(self):
        self.backbone = self._Backbone()
        self.backbone.prompt_encoder = self._PromptEncoder()
        self.preprocessor = None

    def __call__(self, inputs, training=False):
        assert inputs["images"].shape[1:] == (128, 128, 3) and inputs["images"].max() <= 1.0
        count = len(inputs["images"])
        low = np.full((count, 4, 32, 32), -10.0, np.float32)
        for n, ((x0, y0), (x1, y1)) in enumerate(inputs["boxes"][:, 0]):
            # low-res pixel centres (i + 0.5) * 4 - 0.5 in frame pixels
            centres = (np.arange(32) + 0.5) * 4 - 0.5
            rows = (centres >= y0) & (centres <= y1)
            cols = (centres >= x0) & (centres <= x1)
            low[n, 0][np.ix_(rows, cols)] = 10.0
        return {"masks": low, "iou_pred": np.zeros((count, 4), np.float32)}


def test_segment_with_boxes_maps_back_to_the_original_pixels():
    images = [np.random.default_rng(0).normal(size=(60, 100)), np.random.default_rng(1).normal(size=(90, 45))]
    boxes = np.array([[30.0, 10.0, 70.0, 40.0], [5.0, 50.0, 30.0, 80.0]])
    probabilities = segment_with_boxes(_BoxEchoSAM(), images, boxes, batch_size=1)
    assert [p.shape for p in probabilities] == [(60, 100), (90, 45)]
    for probability, (x0, y0, x1, y1), shape in zip(probabilities, boxes, [(60, 100), (90, 45)]):
        expected = np.zeros(shape, bool)
        expected[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        assert _iou(probability > 0.5, expected) > 0.85


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(image_size=64, seed=0)


def test_tiny_sam_end_to_end(tiny_sam):
    assert sam_frame_size(tiny_sam) == 64
    rng = np.random.default_rng(0)
    images = [rng.normal(-500, 300, size=(48, 80)), rng.normal(-500, 300, size=(90, 60))]
    boxes = [[20, 10, 40, 30], [10, 40, 30, 70]]
    probabilities = segment_with_boxes(tiny_sam, images, boxes, jitter_fraction=0.1, seed=0)
    assert [p.shape for p in probabilities] == [(48, 80), (90, 60)]
    for p in probabilities:
        assert p.dtype == np.float32 and np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1
    stacked = segment_with_boxes(tiny_sam, np.stack([images[0], images[0]]), [boxes[0], boxes[0]], multimask=True)
    assert stacked.shape == (2, 48, 80)
    np.testing.assert_allclose(stacked[0], stacked[1], atol=1e-5)  # same image, same box, same answer
    with pytest.raises(ValueError, match="one box per image"):
        segment_with_boxes(tiny_sam, images, boxes[:1])
    for too_many_or_none in (0, 9):
        with pytest.raises(ValueError, match="1 to 8 images per forward pass"):
            segment_with_boxes(tiny_sam, images, boxes, batch_size=too_many_or_none)


def test_registry_style_builder(monkeypatch, tmp_path):
    from lungkit.models.sam import build_sam

    assert sam_frame_size(build_sam("tiny", input_shape=(32, 32, 3))) == 32
    monkeypatch.delenv("LUNGKIT_SAM_PRESET", raising=False)
    with pytest.raises(FileNotFoundError, match="preset_dir=.*LUNGKIT_SAM_PRESET.*sam_base_sa1b"):
        build_sam("paper")
    monkeypatch.setenv("LUNGKIT_SAM_PRESET", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent: SAM preset folder not found"):
        build_sam("small")
    with pytest.raises(ValueError, match="unknown settings"):
        build_sam("tiny", layers=3)


def test_load_sam_only_from_a_local_preset(tmp_path, tiny_sam):
    with pytest.raises(FileNotFoundError, match=r"nowhere: SAM preset folder not found.*sam_base_sa1b"):
        load_sam(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_sam(tmp_path / "empty")
    preset = tmp_path / "tiny_preset"
    tiny_sam.save_to_preset(str(preset))
    loaded = load_sam(preset)
    image, box = np.random.default_rng(2).normal(size=(1, 40, 50)), [[10, 10, 30, 30]]
    np.testing.assert_allclose(
        segment_with_boxes(loaded, image, box), segment_with_boxes(tiny_sam, image, box), atol=1e-5
    )
