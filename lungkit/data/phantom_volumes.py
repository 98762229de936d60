"""A small synthetic dataset in LUNA16 layout, so the volume path runs without real data.

:func:`write_phantom_luna16` writes::

    <root>/subset0/<seriesuid>.mhd + .raw   int16 HU, anisotropic spacing (about 0.7 x 0.7 x 2.5 mm), non-zero origin
    <root>/labels/<seriesuid>.nrrd          uint8 nodule labels (nodule_index + 1; 0 = background)
    <root>/annotations.csv                   seriesuid, coordX, coordY, coordZ, diameter_mm  (LUNA16 columns)
    <root>/candidates.csv                    seriesuid, coordX, coordY, coordZ, class (nodules + non-nodules)
    <root>/malignancy.csv                    seriesuid, nodule_index, malignancy, spiculated, diameter_mm
    <root>/COMPLETE

Each volume: air outside an elliptic body (soft tissue, 40 HU), two lungs (-850 HU) that taper towards the apex
and base, a few vessels (40 HU tubes) in the lungs, and 2-4 nodules: spheres, or lobulated spheres with spikes
("spiculated"), solid (about 30 HU) or, for some small ones, ground-glass (about -550 HU). Nodules are drawn
with partial volume along z (each slice shows the mean over its 2.5 mm slab, as a CT slice does) and labelled
wherever they enter the slab; Gaussian noise and a slight in-plane blur make the edges CT-like.

The malignancy score is a **proxy, not biology**: ``1 + [d >= 8 mm] + [d >= 14 mm] + [d >= 20 mm] +
[spiculated]``, clipped to 1..5. It follows the two signs radiologists weigh most (size, spiculation), so a
classifier has something learnable; paper 003's rule then drops score 3.

Everything is seeded; the same seed gives byte-identical files.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from lungkit.data.volumes import Volume, write_volume
from lungkit.profiles import Profile, get_profile

#: Volume sizes ``(slices, side in pixels)`` per profile name.
PHANTOM_VOLUME_SIZES = {"smoke": (64, 128), "quick": (64, 160), "paper": (96, 192)}
SLICE_SPACING_MM = 2.5
PIXEL_SPACING_RANGE_MM = (0.65, 0.8)
NODULE_DIAMETER_RANGE_MM = (4.0, 24.0)
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.9999"  # 9999: not a real TCIA series
COMPLETE_MARKER = "COMPLETE"
MARKER_TEXT = "lungkit phantom_volumes"

AIR_HU, TISSUE_HU, LUNG_HU, VESSEL_HU = -1000.0, 40.0, -850.0, 40.0
SOLID_NODULE_HU, GROUND_GLASS_HU = 30.0, -550.0
#: Depths (in slices, relative to the slice centre) where a nodule is sampled to mimic partial volume.
SLAB_SAMPLES = (-0.5, -0.3, -0.1, 0.1, 0.3, 0.5)


def _replaceable(root: Path) -> bool:
    """True for an empty folder or one this module wrote (never delete someone's real LUNA16 copy)."""
    if not root.is_dir():
        return False
    marker = root / COMPLETE_MARKER
    if marker.is_file():
        return marker.read_text().startswith(MARKER_TEXT)
    return not any(root.iterdir())  # the dataset is built beside and renamed in, so ours is never half there


def malignancy_proxy(diameter_mm: float, spiculated: bool) -> int:
    """The phantom's malignancy score 1-5 from size and spiculation (see the module docstring)."""
    score = 1 + int(diameter_mm >= 8) + int(diameter_mm >= 14) + int(diameter_mm >= 20) + int(spiculated)
    return int(min(score, 5))


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _nodule_shape(offsets_mm: np.ndarray, radius_mm: float, lobe_axes, spike_axes) -> np.ndarray:
    """Boolean occupancy of a sphere at offsets ``(..., 3)`` (x, y, z mm); lobulated and spiked when axes are given."""
    distance = np.linalg.norm(offsets_mm, axis=-1)
    if lobe_axes is None:
        return distance <= radius_mm
    directions = offsets_mm / np.maximum(distance, 1e-6)[..., None]
    # Lobulation: the radius swells and shrinks by up to 12 % with the angle to three random axes.
    lobulation = np.mean([np.cos(3.0 * np.arccos(np.clip(directions @ axis, -1, 1))) for axis in lobe_axes], axis=0)
    inside = distance <= radius_mm * (1.0 + 0.12 * lobulation)
    # Spicules: thin cones out to 1.6 R along a few random directions.
    for axis in spike_axes:
        along = offsets_mm @ axis
        across = np.linalg.norm(offsets_mm - along[..., None] * axis, axis=-1)
        inside |= (along > 0) & (along <= 1.6 * radius_mm) & (across <= 1.2 * (1.0 - along / (1.6 * radius_mm)))
    return inside


def _make_volume(rng: np.random.Generator, depth: int, side: int, spacing: tuple[float, float, float]):
    """HU array, lung mask and vessel points of one phantom chest."""
    spacing_x, spacing_y, spacing_z = spacing
    z, y, x = np.meshgrid(np.arange(depth), np.arange(side), np.arange(side), indexing="ij")
    x_mm, y_mm = x * spacing_x, y * spacing_y
    centre_x, centre_y = (side - 1) * spacing_x / 2, (side - 1) * spacing_y / 2
    half_width, half_height = 0.46 * side * spacing_x, 0.36 * side * spacing_y
    body = ((x_mm - centre_x) / half_width) ** 2 + ((y_mm - centre_y) / half_height) ** 2 <= 1.0
    hu = np.where(body, TISSUE_HU, AIR_HU).astype(np.float32)

    # Lungs taper towards apex and base: in-plane scale from 0.55 to 1 and back along z.
    taper = 0.55 + 0.45 * np.sin(np.pi * (z + 0.5) / depth)
    lung_half_x, lung_half_y = 0.16 * side * spacing_x * taper, 0.26 * side * spacing_y * taper
    lungs = np.zeros_like(body)
    for side_sign in (-1, 1):
        lung_centre_x = centre_x + side_sign * 0.21 * side * spacing_x
        lungs |= ((x_mm - lung_centre_x) / lung_half_x) ** 2 + ((y_mm - centre_y) / lung_half_y) ** 2 <= 1.0
    hu[lungs] = LUNG_HU

    # Vessels: straight tubes between two random lung points, 0.8-2 mm radius, drawn only inside the lungs.
    lung_points = np.argwhere(lungs)
    lung_mm = lung_points[:, ::-1] * np.asarray(spacing)  # (x, y, z) mm of each lung voxel
    vessel_samples = []
    for _ in range(8):
        start, end = lung_mm[rng.integers(len(lung_mm), size=2)]
        radius = rng.uniform(0.8, 2.0)
        segment = end - start
        length2 = max(float(segment @ segment), 1e-6)
        t = np.clip(((lung_mm - start) @ segment) / length2, 0.0, 1.0)
        distance = np.linalg.norm(lung_mm - (start + t[:, None] * segment), axis=1)
        on_vessel = distance <= radius
        hu[tuple(lung_points[on_vessel].T)] = VESSEL_HU
        vessel_samples.append(start + rng.uniform(0.2, 0.8) * segment)
    return hu, lungs, np.asarray(vessel_samples)


def _place_nodules(rng, hu, lungs, spacing, count):
    """Draw nodules into ``hu`` (in place); return their label volume and table rows (index coordinates)."""
    spacing_x, spacing_y, spacing_z = spacing
    depth, height, width = hu.shape
    label = np.zeros(hu.shape, dtype=np.uint8)
    # Distance (mm) of each lung voxel to the lung border: where a nodule of radius R fits.
    room = ndimage.distance_transform_edt(lungs, sampling=(spacing_z, spacing_y, spacing_x))
    nodules = []
    for index in range(count):
        diameter = float(rng.uniform(*NODULE_DIAMETER_RANGE_MM))
        spiculated = bool(rng.random() < 0.15 + 0.025 * diameter)  # larger nodules spiculate more often
        ground_glass = (not spiculated) and diameter < 10 and rng.random() < 0.3
        free = room * (label == 0)
        for existing in nodules:  # keep nodules apart
            zz, yy, xx = np.ogrid[:depth, :height, :width]
            gap = np.sqrt(((xx - existing["x"]) * spacing_x) ** 2 + ((yy - existing["y"]) * spacing_y) ** 2
                          + ((zz - existing["z"]) * spacing_z) ** 2)
            free = np.where(gap < existing["diameter_mm"] / 2 + diameter / 2 + 4, 0, free)
        fits = np.argwhere(free >= 0.8 * diameter / 2)
        while len(fits) == 0 and diameter > NODULE_DIAMETER_RANGE_MM[0]:
            diameter = max(diameter * 0.8, NODULE_DIAMETER_RANGE_MM[0])
            fits = np.argwhere(free >= 0.8 * diameter / 2)
        if len(fits) == 0:
            continue
        z0, y0, x0 = fits[rng.integers(len(fits))]
        # Sub-voxel centre so world coordinates are not grid-aligned.
        centre = np.array([x0, y0, z0], dtype=np.float64) + rng.uniform(-0.4, 0.4, size=3)
        radius = diameter / 2
        reach = 1.7 * radius  # spicules reach 1.6 R
        # One extra voxel each side: the slab samples reach half a slice beyond the voxel centres.
        lows = [max(int(math.floor(c - reach / s)) - 1, 0) for c, s in zip(centre, spacing)]
        highs = [min(int(math.ceil(c + reach / s)) + 2, n) for c, s, n in zip(centre, spacing, (width, height, depth))]
        zz, yy, xx = np.meshgrid(
            np.arange(lows[2], highs[2]), np.arange(lows[1], highs[1]), np.arange(lows[0], highs[0]), indexing="ij"
        )
        lobe_axes, spike_axes = (_unit_vectors(rng, 3), _unit_vectors(rng, 6)) if spiculated else (None, None)
        # Partial volume: a slice shows the mean over its slab, sampled at 6 depths from edge to edge. The label
        # marks every voxel the nodule enters anywhere in the slab (what a reader contours on thick slices).
        occupancy = np.zeros(zz.shape, dtype=np.float32)
        touched = np.zeros(zz.shape, dtype=bool)
        for depth_offset in SLAB_SAMPLES:
            offsets = np.stack(
                [
                    (xx - centre[0]) * spacing_x,
                    (yy - centre[1]) * spacing_y,
                    (zz + depth_offset - centre[2]) * spacing_z,
                ],
                axis=-1,
            )
            inside = _nodule_shape(offsets, radius, lobe_axes, spike_axes)
            occupancy += inside / len(SLAB_SAMPLES)
            touched |= inside
        block = (slice(lows[2], highs[2]), slice(lows[1], highs[1]), slice(lows[0], highs[0]))
        nodule_hu = GROUND_GLASS_HU if ground_glass else SOLID_NODULE_HU
        hu[block] = occupancy * nodule_hu + (1.0 - occupancy) * hu[block]
        label_block = label[block]
        label_block[touched] = len(nodules) + 1
        nodules.append(
            {"x": centre[0], "y": centre[1], "z": centre[2], "diameter_mm": diameter,
             "spiculated": spiculated, "ground_glass": ground_glass}
        )
    return label, nodules


def write_phantom_luna16(
    root: str | os.PathLike,
    profile: str | Profile = "smoke",
    n_volumes: int | None = None,
    seed: int = 0,
    depth: int | None = None,
    side: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a seeded LUNA16-layout phantom dataset (see the module docstring).

    Args:
        root: folder to create.
        profile: profile name or :class:`~lungkit.profiles.Profile`; gives the number of volumes
            (``phantom_volumes``) and the volume size (``PHANTOM_VOLUME_SIZES``).
        n_volumes: overrides the profile's count.
        seed: random seed; same seed, same files.
        depth: slices per volume (overrides the profile's).
        side: pixels per row and column (overrides the profile's).
        overwrite: rewrite a complete folder; otherwise a complete folder is returned untouched.

    Returns:
        ``root`` as a Path.

    Raises:
        FileExistsError: if ``root`` exists, is not empty and was not written by this function.
    """
    root = Path(root)
    if (root / COMPLETE_MARKER).is_file() and not overwrite:
        return root
    if root.exists() and not _replaceable(root):
        raise FileExistsError(
            f"{root}: exists and is not a lungkit phantom folder; refusing to replace it (choose another folder)"
        )
    profile = get_profile(profile) if isinstance(profile, str) else profile
    default_depth, default_side = PHANTOM_VOLUME_SIZES.get(profile.name, PHANTOM_VOLUME_SIZES["quick"])
    depth, side = depth or default_depth, side or default_side
    n_volumes = profile.phantom_volumes if n_volumes is None else n_volumes
    if n_volumes < 1:
        raise ValueError(f"n_volumes must be at least 1, got {n_volumes}")

    # Build everything in a sibling temp folder, then rename: readers never see half a dataset.
    root.parent.mkdir(parents=True, exist_ok=True)
    temp = root.parent / f".{root.name}.tmp{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    (temp / "subset0").mkdir(parents=True)
    (temp / "labels").mkdir()
    rng = np.random.default_rng(seed)
    annotations, candidates, malignancy = [], [], []
    for volume_index in range(n_volumes):
        uid = f"{UID_ROOT}.{seed}.{volume_index + 1:04d}"
        pixel = round(float(rng.uniform(*PIXEL_SPACING_RANGE_MM)), 4)
        spacing = (pixel, pixel, SLICE_SPACING_MM)
        origin = (
            round(-(side - 1) * pixel / 2 + rng.uniform(-20, 20), 3),
            round(-(side - 1) * pixel / 2 + rng.uniform(-40, 0), 3),
            round(-rng.uniform(150, 400), 3),
        )
        hu, lungs, vessel_points = _make_volume(rng, depth, side, spacing)
        label, nodules = _place_nodules(rng, hu, lungs, spacing, count=int(rng.integers(2, 5)))
        hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.6, 0.6)) + rng.normal(0, 15, hu.shape)
        hu_int16 = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
        write_volume(Volume(hu_int16, spacing, origin, source_path=None), temp / "subset0" / f"{uid}.mhd")
        write_volume(Volume(label, spacing, origin), temp / "labels" / f"{uid}.nrrd", compress=True)

        def world(x, y, z):
            return [origin[0] + x * spacing[0], origin[1] + y * spacing[1], origin[2] + z * spacing[2]]

        for nodule_index, nodule in enumerate(nodules):
            centre = world(nodule["x"], nodule["y"], nodule["z"])
            annotations.append([uid, *centre, nodule["diameter_mm"]])
            score = malignancy_proxy(nodule["diameter_mm"], nodule["spiculated"])
            malignancy.append([uid, nodule_index, score, int(nodule["spiculated"]), nodule["diameter_mm"]])
            # LUNA16 candidates are detector outputs, not the exact annotation centres: jitter by up to 1 mm.
            candidates.append([uid, *(np.asarray(centre) + rng.uniform(-1, 1, 3)), 1])
        # Non-nodule candidates: points on vessels and in plain lung, away from every nodule.
        lung_voxels = np.argwhere(lungs)
        plain = [lung_voxels[i][::-1] for i in rng.integers(len(lung_voxels), size=4)]
        for point in list(vessel_points / np.asarray(spacing))[:4] + plain:
            centre = world(*point)
            far = all(
                np.linalg.norm(np.asarray(centre) - np.asarray(a[1:4])) > a[4] for a in annotations if a[0] == uid
            )
            if far:
                candidates.append([uid, *centre, 0])

    def write_csv(name, rows, columns):
        pd.DataFrame(rows, columns=columns).to_csv(temp / name, index=False, float_format="%.4f")

    write_csv("annotations.csv", annotations, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    write_csv("candidates.csv", candidates, ["seriesuid", "coordX", "coordY", "coordZ", "class"])
    write_csv("malignancy.csv", malignancy, ["seriesuid", "nodule_index", "malignancy", "spiculated", "diameter_mm"])
    (temp / COMPLETE_MARKER).write_text(f"{MARKER_TEXT} seed={seed} volumes={n_volumes} depth={depth} side={side}\n")
    if root.exists():
        shutil.rmtree(root)
    os.replace(temp, root)
    return root
