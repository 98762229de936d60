"""lungkit.postprocess: thresholding, components, dense CRF and its scipy fallback."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungkit import postprocess as P
from lungkit.metrics import dice_per_image

HU_WINDOW = (-1000.0, 400.0)


def noisy_disc(seed):
    """A disc tumour (radius 12) on lung: HU image, true mask and a noisy probability map with false speckles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    target = (((yy - 32) ** 2 + (xx - 30) ** 2) <= 12**2).astype(np.uint8)
    image = np.where(target == 1, 40.0, -800.0) + rng.normal(0.0, 30.0, target.shape)
    prob = np.where(target == 1, 0.65, 0.35) + rng.normal(0.0, 0.2, target.shape)
    for y, x in [(5, 5), (50, 55), (10, 50)]:  # confident false positives away from the tumour
        prob[y : y + 3, x : x + 3] = 0.95
    return np.clip(prob, 0.0, 1.0), image, target


def test_threshold():
    prob = np.array([[0.2, 0.5], [0.51, 0.9]])
    np.testing.assert_array_equal(P.threshold(prob), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(P.threshold(prob, 0.6), [[0, 0], [0, 1]])
    assert P.threshold(prob).dtype == np.uint8


def test_keep_largest_components():
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[0:2, 0:5] = 1  # 10 px
    mask[5:6, 5:10] = 1  # 5 px
    mask[10, 10:12] = 1  # 2 px
    mask[11, 0] = 1  # 1 px, touching nothing
    sizes = lambda m: sorted(np.bincount(ndimage.label(m, np.ones((3, 3)))[0].ravel())[1:].tolist())  # noqa: E731
    assert sizes(P.keep_largest_components(mask)) == [10]
    assert sizes(P.keep_largest_components(mask, k=2)) == [5, 10]
    assert sizes(P.keep_largest_components(mask, k=None, min_size=2)) == [2, 5, 10]
    assert sizes(P.keep_largest_components(mask, k=None, min_size=6)) == [10]
    kept = P.keep_largest_components(mask, k=2)
    assert np.all(kept <= mask)  # never adds pixels
    assert not P.keep_largest_components(np.zeros((4, 4))).any()
    diagonal = np.eye(4, dtype=np.uint8)
    assert P.keep_largest_components(diagonal, connectivity=2).sum() == 4  # one 8-connected component
    assert P.keep_largest_components(diagonal, connectivity=1).sum() == 1
    with pytest.raises(ValueError, match="positive"):
        P.keep_largest_components(mask, k=0)


def test_image_to_uint8():
    hu = np.array([[-2048.0, -1000.0], [-300.0, 400.0]])
    scaled = P.image_to_uint8(hu, HU_WINDOW)
    np.testing.assert_array_equal(scaled, [[0, 0], [128, 255]])
    np.testing.assert_array_equal(P.image_to_uint8(np.array([[1.0, 3.0]])), [[0, 255]])
    assert not P.image_to_uint8(np.ones((2, 2))).any()


def test_guided_filter_preserves_edges_that_a_box_filter_blurs():
    step = np.zeros((32, 32))
    step[:, 16:] = 1.0
    guided = P.guided_filter(step, step, radius=3, eps=1e-4)
    assert np.abs(guided - step).max() < 0.05  # the guide's own edge survives
    box = ndimage.uniform_filter(step, 7)
    assert np.abs(box - step).max() > 0.3
    np.testing.assert_allclose(P.guided_filter(step, np.full_like(step, 0.3), 3, 1e-2), 0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fallback_improves_dice_over_thresholding(seed):
    prob, image, target = noisy_disc(seed)
    plain = dice_per_image(P.threshold(prob), target)
    mask, used = P.refine(prob, image, method="fallback", intensity_range=HU_WINDOW)
    assert used == "scipy_fallback"
    refined = dice_per_image(mask, target)
    assert refined > plain + 0.3 and refined > 0.9


@pytest.mark.skipif(not P.dense_crf_available(), reason="pydensecrf2 not installed (pip install 'lungkit[crf]')")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_crf_improves_dice_over_thresholding(seed):
    prob, image, target = noisy_disc(seed)
    plain = dice_per_image(P.threshold(prob), target)
    mask, used = P.refine(prob, image, method="dense_crf", intensity_range=HU_WINDOW)
    assert used == "dense_crf"
    refined = dice_per_image(mask, target)
    assert refined > plain + 0.3 and refined > 0.9
    refined_prob = P.dense_crf(prob, image, intensity_range=HU_WINDOW)
    assert refined_prob.shape == prob.shape and 0.0 <= refined_prob.min() and refined_prob.max() <= 1.0


@pytest.mark.parametrize("method", ["fallback", "dense_crf"])
def test_refinement_does_not_invent_tumour(method):
    if method == "dense_crf" and not P.dense_crf_available():
        pytest.skip("pydensecrf2 not installed (pip install 'lungkit[crf]')")
    rng = np.random.default_rng(4)
    prob = np.clip(0.1 + rng.normal(0, 0.05, (32, 32)), 0, 1)
    image = rng.normal(-800.0, 30.0, (32, 32))
    mask, _ = P.refine(prob, image, method=method, intensity_range=HU_WINDOW)
    assert not mask.any()


def test_refine_reports_the_method_used(monkeypatch):
    prob, image, _ = noisy_disc(0)
    mask, used = P.refine(prob[..., None], method="none")
    assert used == "none" and np.array_equal(mask, P.threshold(prob))
    _, used = P.refine(prob, image, method="auto")
    assert used == ("dense_crf" if P.dense_crf_available() else "scipy_fallback")
    with pytest.raises(ValueError, match="unknown refine method"):
        P.refine(prob, image, method="crf")
    with pytest.raises(ValueError, match="needs the image"):
        P.refine(prob, None, method="fallback")
    monkeypatch.setattr(P, "dense_crf_available", lambda: False)
    assert P.refine(prob, image, method="auto")[1] == "scipy_fallback"
    with pytest.raises(ImportError, match="pydensecrf2"):
        P.refine(prob, image, method="dense_crf")


def test_refine_batch():
    pairs = [noisy_disc(seed) for seed in range(2)]
    probs = np.stack([p for p, _, _ in pairs])[..., None]
    images = np.stack([i for _, i, _ in pairs])
    masks, used = P.refine_batch(probs, images, method="fallback", intensity_range=HU_WINDOW)
    assert masks.shape == (2, 64, 64) and used == "scipy_fallback"
    single, _ = P.refine(probs[1], images[1], method="fallback", intensity_range=HU_WINDOW)
    np.testing.assert_array_equal(masks[1], single)
    with pytest.raises(ValueError, match="2 probability maps but 1 images"):
        P.refine_batch(probs, images[:1])


def _chest(side: int = 128):
    """A synthetic axial slice in HU: air around a soft-tissue body holding two lungs, a solid nodule attached to the
    right lung's outer wall (it cuts a notch into the lung's air) and a soft-tissue spot in the body wall."""
    yy, xx = np.mgrid[:side, :side]
    hu = np.full((side, side), -1000.0)
    hu[((yy - 64) / 50) ** 2 + ((xx - 64) / 60) ** 2 <= 1] = 40.0
    left = ((yy - 64) / 30) ** 2 + ((xx - 40) / 18) ** 2 <= 1
    right = ((yy - 64) / 30) ** 2 + ((xx - 88) / 18) ** 2 <= 1
    hu[left | right] = -850.0
    nodule = (yy - 64) ** 2 + (xx - 104) ** 2 <= 5**2  # centred on the right lung's outer edge (x = 106)
    hu[nodule] = 30.0
    outside_body_wall = (yy - 20) ** 2 + (xx - 64) ** 2 <= 3**2
    return hu, left | right, nodule, outside_body_wall


def test_lung_region_keeps_a_juxtapleural_nodule_and_drops_the_body_wall():
    hu, lungs, nodule, body_wall = _chest()
    region = P.lung_region(hu, margin_px=8)
    assert region[lungs].all() and region[nodule].all()
    assert not region[body_wall].any()
    assert not region[0, :].any()  # the air around the body is not lung
    bare = P.lung_region(hu, margin_px=0)
    assert not bare[nodule].all(), "without a margin the solid nodule's outer half lies outside the lung air"


def test_restricting_to_the_lungs_removes_false_positives_outside_them():
    hu, lungs, nodule, body_wall = _chest()
    probabilities = np.zeros((2, *hu.shape), np.float32)
    probabilities[:, nodule] = 0.9
    probabilities[:, body_wall] = 0.9
    patch = np.full(hu.shape, 40.0)  # a slice without lungs (a tumour patch, a slice above the chest)
    restricted, unrestricted = P.restrict_to_lungs(probabilities, np.stack([hu, patch]), margin_px=8)
    assert unrestricted == 1
    assert restricted[0][nodule].min() == pytest.approx(0.9) and restricted[0][body_wall].max() == 0.0
    np.testing.assert_array_equal(restricted[1], probabilities[1])
    with pytest.raises(ValueError, match="same shape"):
        P.restrict_to_lungs(probabilities, hu[None], margin_px=6)
