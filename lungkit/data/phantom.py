"""Synthetic chest CT slices in the exact schema of the Lung-RADS pickles: the kit's default data.

Without the real data (it cannot be downloaded from CI machines) every notebook still runs end to end on a
phantom that goes through the same reader, converter and pipeline as the real pickles. The phantom is written as
``lung_cancer_train.pkl`` / ``lung_cancer_test.pkl`` with exactly the real files' layout: a DataFrame with object
columns ``label1, mask, hu_array, hu_array_old``; float64 integer-valued HU; ``mask`` int64 in train and int8 in
test; ``hu_array`` = automatic lung mask x HU (0, or -0.0, outside); padding -2048 or -1024 outside the circular
field of view; rows grouped by class (LR2, LR3, LR4A, LR4B); pickle protocol 4.

Geometry: a fixed 358.4 mm field of view, so the pixel spacing is ``0.7 mm x 512 / image_size``
(:func:`phantom_pixel_spacing_mm`: 0.7 mm at 512 px, 1.4 mm at 256 px, 2.8 mm at 128 px), like a typical chest CT
reconstructed at 512 x 512.

What is drawn (HU): body ellipse with subcutaneous fat (about -100) over muscle (about +40); ribs, sternum and a
vertebra (bone); mediastinum, heart in its fat, aorta, trachea or main bronchi at the upper levels, the liver dome at
the lowest; two lung fields (about -850, denser posteriorly, with low-frequency texture); a branching vessel tree
from each hilum plus vessels crossing the slice (dots and short oblique tubes, +40 with partial-volume blurring,
thinner towards the periphery); airways as dark rings with walls beside vessels; the CT table; Gaussian blur and
correlated noise (about 20 HU).

The nodule (exactly one per slice, the tumour mask) is solid (about +30), part-solid (a solid core in a
ground-glass halo) or ground-glass (about -600), lobulated / irregular, sometimes spiculated (spicules are drawn
but, as in most reference masks, not labelled), and in about a quarter of the cases touching the pleura (flattened
against the chest wall; the automatic lung mask then excludes it, as a threshold mask does on real CT). Its size
follows the Lung-RADS class, as the mask's equivalent diameter (circle of equal area) in mm:
LR2 3-6 mm, LR3 6-8 mm, LR4A 8-15 mm, LR4B 15-30 mm (:data:`NODULE_DIAMETER_RANGES_MM`). An LR2 nodule is 4-9 px
across at 512 px and 2-4 px at 256 px, as hard as on real CT. Vessel cross-sections of the same size, some of
them round and paired with an airway, are the distractors: pixel brightness alone does not find the nodule; shape
and context must.

Like the real files (no patient id, neighbouring rows from one scan), consecutive rows of a class come from one
simulated patient: 1-5 neighbouring slices with the same anatomy and nodule, vessels shifted slightly from slice to
slice, fresh noise. Generation is deterministic per ``(seed, split)``; train and test use different streams.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from lungkit.data.kit_dataset import LUNGRADS_LABELS
from lungkit.data.lungrads import LUNGRADS_COLUMNS, LUNGRADS_FILE_NAMES

#: Field of view of every phantom slice (0.7 mm x 512 px), in mm.
PHANTOM_FIELD_OF_VIEW_MM = 0.7 * 512
#: Lung-RADS class -> [low, high) equivalent diameter of the nodule mask, in mm (Lung-RADS v1.1 solid-nodule sizes:
#: 2 is < 6 mm, 3 is 6 to < 8 mm, 4A is 8 to < 15 mm, 4B is >= 15 mm; the phantom starts at 3 mm and caps at 30 mm).
NODULE_DIAMETER_RANGES_MM = {"LR2": (3.0, 6.0), "LR3": (6.0, 8.0), "LR4A": (8.0, 15.0), "LR4B": (15.0, 30.0)}
#: Class mix of the real test file (35 / 37 / 97 / 95 rows), the default for both phantom splits.
DEFAULT_CLASS_PROPORTIONS = {"LR2": 35, "LR3": 37, "LR4A": 97, "LR4B": 95}
#: Nodule kind probabilities (solid, part-solid, ground-glass) and chance of touching the pleura, per class.
_KIND_PROBABILITIES = {
    "LR2": (0.6, 0.1, 0.3),
    "LR3": (0.55, 0.2, 0.25),
    "LR4A": (0.6, 0.25, 0.15),
    "LR4B": (0.65, 0.25, 0.1),
}
_NODULE_KINDS = ("solid", "part_solid", "ground_glass")
_PLEURAL_PROBABILITY = {"LR2": 0.2, "LR3": 0.25, "LR4A": 0.3, "LR4B": 0.35}
_LOBULATION = {"LR2": 0.12, "LR3": 0.18, "LR4A": 0.28, "LR4B": 0.38}
_SPLIT_STREAM = {"train": 0, "test": 1}
_MASK_DTYPE = {"train": np.int64, "test": np.int8}
_MIN_IMAGE_SIZE = 96


def phantom_pixel_spacing_mm(image_size: int) -> float:
    """Pixel spacing of a phantom slice: the fixed 358.4 mm field of view over ``image_size`` pixels.

    Args:
        image_size: side of the square slice in pixels.

    Returns:
        Spacing in mm per pixel (0.7 at 512, 1.4 at 256).
    """
    return PHANTOM_FIELD_OF_VIEW_MM / int(image_size)


#: Alias under the name used in the design notes.
PHANTOM_PIXEL_SPACING_MM = phantom_pixel_spacing_mm


@dataclass(frozen=True)
class PhantomNodule:
    """Ground truth of one phantom row, beyond what the pickle schema holds (kept in ``phantom_nodules.csv``).

    Attributes:
        split: ``train`` or ``test``.
        row: 0-based row in the pickle.
        label1: Lung-RADS class.
        kind: ``solid``, ``part_solid`` or ``ground_glass``.
        pleural: whether the nodule touches the pleura.
        spiculated: whether spicules were drawn around it (not part of the mask).
        patient: index of the simulated patient within the split (neighbouring rows share it).
        slice_in_patient: 0-based slice index within the patient.
        area_px: pixels in the mask.
        equivalent_diameter_mm: diameter of the circle with the mask's area.
        centre_y: nodule centre row in pixels.
        centre_x: nodule centre column in pixels.
        padding_hu: value outside the field of view.
    """

    split: str
    row: int
    label1: str
    kind: str
    pleural: bool
    spiculated: bool
    patient: int
    slice_in_patient: int
    area_px: int
    equivalent_diameter_mm: float
    centre_y: float
    centre_x: float
    padding_hu: float


# ----------------------------------------------------------------------------------------------------------------
# Drawing on a canvas in mm coordinates


@lru_cache(maxsize=8)
def _pixel_grid_mm(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (mm from the image centre) of every pixel centre; read-only, shared."""
    spacing = phantom_pixel_spacing_mm(image_size)
    axis = (np.arange(image_size, dtype=np.float64) - (image_size - 1) / 2.0) * spacing
    y, x = np.meshgrid(axis, axis, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


@lru_cache(maxsize=8)
def _outside_field_of_view(image_size: int) -> np.ndarray:
    """Pixels outside the circular field of view (the scanner's reconstruction circle); read-only, shared."""
    y, x = _pixel_grid_mm(image_size)
    outside = np.hypot(y, x) > PHANTOM_FIELD_OF_VIEW_MM / 2.0
    outside.flags.writeable = False
    return outside


class _Canvas:
    """An HU image with painters for soft-edged (partial-volume) ellipses and capsules, positioned in mm."""

    def __init__(self, image_size: int, fill_hu: float):
        self.size = image_size
        self.spacing = phantom_pixel_spacing_mm(image_size)
        self.y_mm, self.x_mm = _pixel_grid_mm(image_size)
        self.hu = np.full((image_size, image_size), fill_hu, dtype=np.float64)

    def window(self, cy: float, cx: float, radius_mm: float) -> tuple[slice, slice] | None:
        """Pixel window covering a circle around (cy, cx) mm, or None when it lies outside the image."""
        centre = (self.size - 1) / 2.0
        radius_px = radius_mm / self.spacing + 2.0
        row, col = cy / self.spacing + centre, cx / self.spacing + centre
        r0, r1 = max(int(math.floor(row - radius_px)), 0), min(int(math.ceil(row + radius_px)) + 1, self.size)
        c0, c1 = max(int(math.floor(col - radius_px)), 0), min(int(math.ceil(col + radius_px)) + 1, self.size)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def coverage_from_distance(self, signed_distance_mm: np.ndarray, true_area_mm2: float) -> np.ndarray:
        """Fraction of each pixel inside a shape from its signed distance (1 px wide ramp), area-preserving.

        Shapes thinner than a pixel would otherwise get whole-pixel brightness; rescaling the coverage to the
        shape's true area gives them the dimmer partial-volume look of small vessels on CT.
        """
        coverage = np.clip(0.5 - signed_distance_mm / self.spacing, 0.0, 1.0)
        total = coverage.sum() * self.spacing**2
        if total > true_area_mm2 > 0:
            coverage *= true_area_mm2 / total
        return coverage

    def ellipse_coverage(
        self, cy: float, cx: float, semi_x: float, semi_y: float, angle: float = 0.0
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Window and soft coverage of an ellipse (semi-axes in mm, ``angle`` in radians from the x axis)."""
        win = self.window(cy, cx, max(semi_x, semi_y))
        if win is None:
            return None
        dy, dx = self.y_mm[win] - cy, self.x_mm[win] - cx
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        rho = np.sqrt((u / semi_x) ** 2 + (v / semi_y) ** 2)
        gradient = np.sqrt((u / semi_x**2) ** 2 + (v / semi_y**2) ** 2) / np.maximum(rho, 1e-9)
        # first-order signed distance to the boundary; exact for circles
        distance = np.where(rho > 1e-9, (rho - 1.0) / np.maximum(gradient, 1e-9), -min(semi_x, semi_y))
        return win, self.coverage_from_distance(distance, math.pi * semi_x * semi_y)

    def capsule_coverage(
        self, y0: float, x0: float, y1: float, x1: float, radius: float
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Window and soft coverage of a tube of ``radius`` mm around the segment (y0, x0)-(y1, x1)."""
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        half = math.hypot(y1 - y0, x1 - x0) / 2
        win = self.window(cy, cx, half + radius)
        if win is None:
            return None
        py, px = self.y_mm[win] - y0, self.x_mm[win] - x0
        vy, vx = y1 - y0, x1 - x0
        length2 = vy * vy + vx * vx
        t = np.clip((py * vy + px * vx) / length2, 0.0, 1.0) if length2 > 0 else np.zeros_like(py)
        distance = np.hypot(py - t * vy, px - t * vx) - radius
        return win, self.coverage_from_distance(distance, 2 * radius * 2 * half + math.pi * radius**2)

    def blend(
        self,
        shape: tuple[tuple[slice, slice], np.ndarray] | None,
        value: float | np.ndarray,
        within: np.ndarray | None = None,
        brighten_only: bool = False,
    ) -> None:
        """Mix ``value`` into the image by the shape's coverage (optionally only inside ``within`` coverage).

        ``brighten_only`` keeps brighter structures showing through (vessels through a ground-glass nodule).
        """
        if shape is None:
            return
        win, coverage = shape
        if within is not None:
            coverage = coverage * within[win]
        if isinstance(value, np.ndarray) and value.shape == self.hu.shape:
            value = value[win]
        target = np.maximum(self.hu[win], value) if brighten_only else value
        self.hu[win] += coverage * (target - self.hu[win])


def _full_ellipse(canvas: _Canvas, cy: float, cx: float, semi_x: float, semi_y: float, radial=None) -> np.ndarray:
    """Soft coverage of an ellipse as a full-image array; ``radial(theta)`` (<= 1.1) scales its radius."""
    coverage = np.zeros_like(canvas.hu)
    win = canvas.window(cy, cx, max(semi_x, semi_y) * (1.1 if radial is not None else 1.0))
    if win is None:
        return coverage
    dy, dx = canvas.y_mm[win] - cy, canvas.x_mm[win] - cx
    rho = np.sqrt((dx / semi_x) ** 2 + (dy / semi_y) ** 2)
    if radial is not None:
        rho = rho / radial(np.arctan2(dy, dx))
    # distance along the ray, good enough for a 1 px anti-aliasing ramp on body-sized shapes
    radius_along_ray = np.hypot(dx, dy) / np.maximum(rho, 1e-9)
    distance = (rho - 1.0) * radius_along_ray
    coverage[win] = np.clip(0.5 - distance / canvas.spacing, 0.0, 1.0)
    return coverage


def _harmonics(rng: np.random.Generator, amplitude: float, orders=(2, 3, 4, 5)):
    """Random smooth radial profile ``theta -> 1 + sum a_k cos(k theta + phi_k)`` (lobulated outlines)."""
    amplitudes = [rng.uniform(0.0, amplitude) / (k - 1) for k in orders]
    phases = [rng.uniform(0.0, 2 * math.pi) for _ in orders]

    def radial(theta):
        total = 1.0
        for k, a, p in zip(orders, amplitudes, phases):
            total = total + a * np.cos(k * theta + p)
        return total

    return radial


def _splat_max(
    target: np.ndarray,
    spacing: float,
    centre_y: np.ndarray,
    centre_x: np.ndarray,
    reach_mm: np.ndarray,
    true_area_mm2: np.ndarray,
    signed_distance,
) -> None:
    """Max-composite the soft coverage of many small shapes into ``target`` in one vectorised pass.

    Each shape gets a square patch around its centre; ``signed_distance(index, y_mm, x_mm)`` returns the signed
    distance (mm, negative inside) for the shapes ``index`` on patches ``y_mm`` (n, k, 1) / ``x_mm`` (n, 1, k).
    Shapes are grouped by patch size so a few large ones do not make every patch large. Coverage is rescaled to
    each shape's true area (partial volume of sub-pixel vessels).
    """
    if len(centre_y) == 0:
        return
    size = target.shape[0]
    middle = (size - 1) / 2.0
    reach_px = np.asarray(reach_mm) / spacing + 1.5
    for low, high in ((0, 4), (4, 10), (10, 24), (24, np.inf)):
        group = np.flatnonzero((reach_px > low) & (reach_px <= high))
        if group.size == 0:
            continue
        half = int(math.ceil(reach_px[group].max()))
        offsets = np.arange(-half, half + 1)
        rows = np.rint(centre_y[group] / spacing + middle).astype(np.int64)[:, None] + offsets  # (n, k)
        cols = np.rint(centre_x[group] / spacing + middle).astype(np.int64)[:, None] + offsets
        y_mm = ((rows - middle) * spacing)[:, :, None]
        x_mm = ((cols - middle) * spacing)[:, None, :]
        distance = signed_distance(group, y_mm, x_mm)
        coverage = np.clip(0.5 - distance / spacing, 0.0, 1.0)
        total = coverage.sum(axis=(1, 2)) * spacing**2
        area = true_area_mm2[group]
        coverage *= np.where(total > area, area / np.maximum(total, 1e-12), 1.0)[:, None, None]
        inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
        flat = (rows[:, :, None] * size + cols[:, None, :])[inside]
        np.maximum.at(target.reshape(-1), flat, coverage[inside])


def _splat_ellipses(target, spacing, cy, cx, semi_long, semi_short, angle) -> None:
    """Max-composite soft ellipses (arrays of centres, semi-axes in mm and angles) into ``target``."""
    cos, sin = np.cos(angle), np.sin(angle)

    def signed_distance(index, y_mm, x_mm):
        a, b = semi_long[index, None, None], semi_short[index, None, None]
        dy, dx = y_mm - cy[index, None, None], x_mm - cx[index, None, None]
        u = dx * cos[index, None, None] + dy * sin[index, None, None]
        v = -dx * sin[index, None, None] + dy * cos[index, None, None]
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        gradient = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(rho, 1e-9)
        return np.where(rho > 1e-9, (rho - 1.0) / np.maximum(gradient, 1e-9), -np.minimum(a, b))

    _splat_max(target, spacing, cy, cx, np.maximum(semi_long, semi_short), math.pi * semi_long * semi_short,
               signed_distance)


def _splat_capsules(target, spacing, y0, x0, y1, x1, radius) -> None:
    """Max-composite soft tubes (segments (y0, x0)-(y1, x1) with ``radius``, all arrays in mm) into ``target``."""
    vy, vx = y1 - y0, x1 - x0
    length = np.hypot(vy, vx)

    def signed_distance(index, y_mm, x_mm):
        py, px = y_mm - y0[index, None, None], x_mm - x0[index, None, None]
        ay, ax = vy[index, None, None], vx[index, None, None]
        length2 = np.maximum(ay * ay + ax * ax, 1e-12)
        t = np.clip((py * ay + px * ax) / length2, 0.0, 1.0)
        return np.hypot(py - t * ay, px - t * ax) - radius[index, None, None]

    _splat_max(target, spacing, (y0 + y1) / 2, (x0 + x1) / 2, length / 2 + radius,
               2 * radius * length + math.pi * radius**2, signed_distance)


# ----------------------------------------------------------------------------------------------------------------
# One simulated patient: anatomy, vessels and nodule drawn once; slices are small variations


class _Patient:
    """Anatomy and one nodule of a simulated patient, rendered into 1-5 neighbouring slices."""

    def __init__(self, patient_seed: int, image_size: int, label: str):
        rng = np.random.default_rng([patient_seed, 0])
        self.rng = rng
        self.rng_texture = np.random.default_rng([patient_seed, 1])
        self.size = image_size
        self.label = label
        self.spacing = phantom_pixel_spacing_mm(image_size)
        self.padding_hu = float(rng.choice([-2048.0, -1024.0]))
        self.level = rng.uniform(0.0, 1.0)  # 0 = lung apex, 1 = lung base
        self.body_cy, self.body_cx = rng.normal(12.0, 6.0), rng.normal(0.0, 4.0)
        self.body_ax, self.body_ay = rng.uniform(140.0, 168.0), rng.uniform(98.0, 122.0)
        self.fat = rng.uniform(8.0, 22.0)
        self.fat_hu, self.muscle_hu = rng.uniform(-115.0, -85.0), rng.uniform(35.0, 55.0)
        wall = self.fat + rng.uniform(12.0, 18.0)
        growth = 0.78 + 0.22 * min(1.0, self.level * 1.6)
        self.cav_ax = (self.body_ax - wall) * growth
        self.cav_ay = (self.body_ay - wall) * (0.9 + 0.1 * growth)
        self.cav_cy, self.cav_cx = self.body_cy - 4.0, self.body_cx
        self.cavity_outline = _harmonics(rng, 0.03)
        self.med_halfwidth = rng.uniform(14.0, 22.0)
        heart_size = float(np.clip((self.level - 0.35) / 0.55, 0.0, 1.0))
        self.heart = None
        if heart_size > 0.05:
            self.heart = (
                self.cav_cy - 0.28 * self.cav_ay,
                self.cav_cx + 0.22 * self.cav_ax,
                (0.25 + 0.22 * heart_size) * self.cav_ax,
                (0.3 + 0.3 * heart_size) * self.cav_ay,
            )
        self.liver = self.level > 0.82
        # round mediastinal structures (y, x, outer radius, inner radius, rim HU, inner HU): descending aorta in
        # its fat, then the trachea (upper levels) or the main bronchi (middle levels) with their walls
        self.aorta = (self.cav_cy + 0.68 * self.cav_ay, self.cav_cx + 20.0, 13.0, 11.0, self.fat_hu, 45.0)
        airway_y = self.cav_cy + 0.35 * self.cav_ay
        if self.level < 0.45:
            self.central_airways = [(airway_y, self.cav_cx, 11.5, 9.5, 30.0, -1000.0)]
        elif self.level < 0.65:
            self.central_airways = [(airway_y + 4.0, self.cav_cx - 17.0, 8.0, 6.0, 30.0, -1000.0),
                                    (airway_y + 4.0, self.cav_cx + 19.0, 7.5, 5.5, 30.0, -1000.0)]
        else:
            self.central_airways = []
        self.lung_base_hu = rng.uniform(-880.0, -830.0)
        self.airway_wall_hu = rng.uniform(-150.0, 0.0)
        self.rib_angles = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(8, 13))))
        self.vessels = self._make_vessels()
        self.tree = self._make_trees()
        self._make_nodule()

    # --- geometry helpers ---------------------------------------------------------------------------------------

    def lung_coverage(self, canvas: _Canvas) -> tuple[np.ndarray, np.ndarray]:
        """Soft lung-field coverage (both lungs) and the mediastinal coverage cut out of the cavity."""
        cavity = _full_ellipse(canvas, self.cav_cy, self.cav_cx, self.cav_ax, self.cav_ay, radial=self.cavity_outline)
        mediastinum = _full_ellipse(canvas, self.cav_cy - 0.05 * self.cav_ay, self.cav_cx, self.med_halfwidth,
                                    self.cav_ay * 1.2)
        # the spine and paravertebral tissue bulge into the back of the cavity
        mediastinum = np.maximum(
            mediastinum, _full_ellipse(canvas, self.cav_cy + 0.92 * self.cav_ay, self.cav_cx, 34.0, 26.0)
        )
        if self.heart is not None:
            hy, hx, hax, hay = self.heart
            mediastinum = np.maximum(mediastinum, _full_ellipse(canvas, hy, hx, hax + 3.0, hay + 3.0))
        for y, x, outer, _, _, _ in [self.aorta, *self.central_airways]:
            mediastinum = np.maximum(mediastinum, _full_ellipse(canvas, y, x, outer + 1.0, outer + 1.0))
        if self.liver:
            mediastinum = np.maximum(
                mediastinum,
                _full_ellipse(canvas, self.cav_cy + 0.35 * self.cav_ay, self.cav_cx - 0.45 * self.cav_ax,
                              0.55 * self.cav_ax * (self.level - 0.6) * 2.2, 0.7 * self.cav_ay),
            )
        return cavity * (1.0 - mediastinum), mediastinum

    def _hilum(self, side: int) -> tuple[float, float]:
        return self.cav_cy + 0.05 * self.cav_ay, self.cav_cx + side * (self.med_halfwidth + 8.0)

    def _inside_cavity(self, y: float, x: float, margin: float = 0.0) -> bool:
        rho = math.hypot((x - self.cav_cx) / (self.cav_ax - margin), (y - self.cav_cy) / (self.cav_ay - margin))
        return rho < 1.0 and abs(x - self.cav_cx) > self.med_halfwidth + margin

    def _random_lung_point(self, margin: float) -> tuple[float, float] | None:
        for _attempt in range(30):
            y = self.rng.uniform(self.cav_cy - self.cav_ay, self.cav_cy + self.cav_ay)
            x = self.rng.uniform(self.cav_cx - self.cav_ax, self.cav_cx + self.cav_ax)
            if self._inside_cavity(y, x, margin):
                return y, x
        return None

    def _make_vessels(self) -> dict[str, np.ndarray]:
        """Vessels crossing the slice: centre, drift per slice, ellipse, optional airway beside and in-plane tail.

        Calibre falls off with distance from the hilum. A share of them are round, 3-7 mm across and often paired
        with an airway: the distractors that look like small nodules.
        """
        rng = self.rng
        rows = []
        lung_area = math.pi * self.cav_ax * self.cav_ay * 0.7
        for _ in range(int(lung_area / rng.uniform(140.0, 200.0))):
            point = self._random_lung_point(0.0)
            if point is None:
                continue
            y, x = point
            side = 1 if x > self.cav_cx else -1
            hy, hx = self._hilum(side)
            radius = float(np.clip(2.6 * math.exp(-math.hypot(y - hy, x - hx) / 55.0) * rng.uniform(0.5, 1.3),
                                   0.3, 4.0))
            elongation = rng.uniform(1.0, 2.4) if rng.random() < 0.35 else rng.uniform(1.0, 1.15)
            radial_angle = math.atan2(y - hy, x - hx)
            has_airway = radius > 0.9 and rng.random() < 0.35
            has_tail = rng.random() < 0.12
            rows.append((y, x, rng.normal(0.0, 0.9), rng.normal(0.0, 0.9), radius * elongation, radius,
                         radial_angle + rng.normal(0.0, 0.25), has_airway, rng.uniform(0, 2 * math.pi),
                         radius * rng.uniform(0.7, 1.1), has_tail, radial_angle + rng.normal(0.0, 0.3),
                         rng.uniform(4.0, 15.0)))
        for _ in range(int(rng.integers(2, 7))):
            point = self._random_lung_point(8.0)
            if point is None:
                continue
            radius = rng.uniform(1.5, 3.5)
            rows.append((*point, rng.normal(0, 0.6), rng.normal(0, 0.6), radius * rng.uniform(1.0, 1.2), radius,
                         rng.uniform(0, math.pi), rng.random() < 0.6, rng.uniform(0, 2 * math.pi),
                         radius * rng.uniform(0.6, 1.0), rng.random() < 0.4, rng.uniform(0, 2 * math.pi),
                         rng.uniform(5.0, 14.0)))
        names = ("y", "x", "dy", "dx", "semi_long", "semi_short", "angle", "has_airway", "airway_angle", "lumen",
                 "has_tail", "tail_angle", "tail_length")
        table = np.array(rows, dtype=np.float64).reshape(-1, len(names))
        vessels = {name: table[:, i] for i, name in enumerate(names)}
        vessels["has_airway"] = vessels["has_airway"] > 0.5
        vessels["has_tail"] = vessels["has_tail"] > 0.5
        return vessels

    def _make_trees(self) -> np.ndarray:
        """In-plane vessel branches from each hilum, rows of (y0, x0, y1, x1, radius, visibility phase)."""
        rng = self.rng
        segments = []
        for side in (-1, 1):
            hy, hx = self._hilum(side)
            base = 0.0 if side > 0 else math.pi
            stack = [(hy, hx, base + rng.uniform(-1.2, 1.2), rng.uniform(2.5, 4.0), 0) for _ in range(3)]
            while stack:
                y, x, angle, radius, depth = stack.pop()
                length = radius * rng.uniform(4.0, 8.0) + 4.0
                y1, x1 = y + length * math.sin(angle), x + length * math.cos(angle)
                if not self._inside_cavity(y1, x1, margin=-2.0) and depth > 0:
                    continue
                segments.append((y, x, y1, x1, radius, rng.uniform(0.0, 1.0)))
                if radius * 0.65 >= 0.5 and depth < 4:
                    for turn in (-1, 1):
                        stack.append((y1, x1, angle + turn * rng.uniform(0.25, 0.6), radius * rng.uniform(0.6, 0.8),
                                      depth + 1))
        return np.array(segments, dtype=np.float64).reshape(-1, 6)

    def _make_nodule(self) -> None:
        rng = self.rng
        low, high = NODULE_DIAMETER_RANGES_MM[self.label]
        self.kind = str(rng.choice(_NODULE_KINDS, p=_KIND_PROBABILITIES[self.label]))
        self.pleural = bool(rng.random() < _PLEURAL_PROBABILITY[self.label])
        self.diameter = rng.uniform(low, high)
        self.outline = _harmonics(rng, _LOBULATION[self.label])
        self.elongation = rng.uniform(1.0, 1.35)
        self.nodule_angle = rng.uniform(0.0, math.pi)
        self.solid_hu = rng.uniform(10.0, 50.0)
        self.ggo_hu = rng.uniform(-680.0, -540.0)
        self.core_fraction = rng.uniform(0.35, 0.6)
        self.spicules = []
        if self.label in ("LR4A", "LR4B") and rng.random() < 0.4:
            for _ in range(int(rng.integers(3, 9))):
                self.spicules.append((rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.6)))
        self.placement_u = rng.random()  # picks the centre among candidate pixels, fixed for the patient
        self.nodule_centre: tuple[float, float] | None = None
        self._anatomy: tuple[np.ndarray, np.ndarray] | None = None

    # --- rendering ----------------------------------------------------------------------------------------------

    def render(self, slice_rng: np.random.Generator, offset: float) -> tuple[np.ndarray, np.ndarray, dict]:
        """Render one slice ``offset`` slices away from the patient's central slice.

        Returns:
            (hu float64 with padding, tumour mask bool, nodule facts).
        """
        if self._anatomy is None:
            self._anatomy = self._draw_anatomy()
        background, lungs = self._anatomy
        canvas = _Canvas(self.size, 0.0)
        canvas.hu[...] = background
        self._draw_vessels(canvas, lungs, offset)
        mask, facts = self._draw_nodule(canvas, lungs, offset)
        hu = self._acquire(canvas.hu, slice_rng)
        return hu, mask, facts

    def _draw_anatomy(self) -> tuple[np.ndarray, np.ndarray]:
        """What neighbouring slices share: body, bones, mediastinum, lung fields with their texture, table."""
        canvas = _Canvas(self.size, -1000.0)
        canvas.hu += _full_ellipse(canvas, self.body_cy, self.body_cx, self.body_ax, self.body_ay) * (
            self.fat_hu + 1000.0
        )
        muscle = _full_ellipse(canvas, self.body_cy, self.body_cx, self.body_ax - self.fat, self.body_ay - self.fat)
        canvas.hu += muscle * (self.muscle_hu - canvas.hu)
        self._draw_bones(canvas)
        lungs, _ = self.lung_coverage(canvas)
        depth = np.clip((canvas.y_mm - self.cav_cy) / self.cav_ay, -1.0, 1.0)
        lung_hu = self.lung_base_hu + 35.0 * depth + self._texture(self.rng, 14.0, 12)
        canvas.hu += lungs * (lung_hu - canvas.hu)
        self._draw_mediastinum(canvas)
        self._draw_table(canvas)
        return canvas.hu, lungs

    def _texture(self, rng: np.random.Generator, amplitude: float, grid: int) -> np.ndarray:
        """Smooth random field (features about 1/grid of the image), standard deviation about ``amplitude``."""
        coarse = rng.standard_normal((grid, grid))
        return cv2.resize(coarse, (self.size, self.size), interpolation=cv2.INTER_CUBIC) * amplitude

    def _draw_bones(self, canvas: _Canvas) -> None:
        ring_x, ring_y = self.cav_ax * 1.07 + 4.0, self.cav_ay * 1.07 + 4.0
        for angle in self.rib_angles:
            # no ribs over the spine and sternum
            if abs(math.sin(angle)) > 0.93:
                continue
            y, x = self.cav_cy + ring_y * math.sin(angle), self.cav_cx + ring_x * math.cos(angle)
            canvas.blend(canvas.ellipse_coverage(y, x, 6.5, 4.0, angle + math.pi / 2), 750.0)
            canvas.blend(canvas.ellipse_coverage(y, x, 4.5, 2.2, angle + math.pi / 2), 250.0)
        spine_y = self.cav_cy + self.cav_ay + 8.0
        canvas.blend(canvas.ellipse_coverage(spine_y, self.cav_cx, 19.0, 17.0), 800.0)
        canvas.blend(canvas.ellipse_coverage(spine_y, self.cav_cx, 16.5, 14.5), 260.0)
        canvas.blend(canvas.ellipse_coverage(spine_y + 25.0, self.cav_cx, 8.0, 7.0), 20.0)  # spinal canal
        canvas.blend(canvas.capsule_coverage(spine_y + 34.0, self.cav_cx, spine_y + 48.0, self.cav_cx, 4.0), 600.0)
        if self.level > 0.25:
            sternum_y = self.cav_cy - self.cav_ay - 6.0
            canvas.blend(canvas.ellipse_coverage(sternum_y, self.cav_cx, 14.0, 5.5), 450.0)

    def _draw_mediastinum(self, canvas: _Canvas) -> None:
        if self.heart is not None:
            hy, hx, hax, hay = self.heart
            canvas.blend(canvas.ellipse_coverage(hy, hx, hax + 2.5, hay + 2.5), self.fat_hu)  # epicardial fat
            canvas.blend(canvas.ellipse_coverage(hy, hx, hax, hay), 42.0)
        for y, x, outer, inner, rim_hu, inner_hu in [self.aorta, *self.central_airways]:
            canvas.blend(canvas.ellipse_coverage(y, x, outer, outer), rim_hu)
            canvas.blend(canvas.ellipse_coverage(y, x, inner, inner), inner_hu)

    def _draw_vessels(self, canvas: _Canvas, lungs: np.ndarray, offset: float) -> None:
        spacing = canvas.spacing
        vessels = np.zeros_like(canvas.hu)
        tree = self.tree
        # each branch leaves the slice plane somewhere; which ones show changes slowly from slice to slice
        shown = tree[(tree[:, 5] + 0.12 * offset) % 1.0 < 0.35]
        _splat_capsules(vessels, spacing, shown[:, 0], shown[:, 1], shown[:, 2], shown[:, 3], shown[:, 4])
        v = self.vessels
        y, x = v["y"] + offset * v["dy"], v["x"] + offset * v["dx"]
        _splat_ellipses(vessels, spacing, y, x, v["semi_long"], v["semi_short"], v["angle"])
        tail = v["has_tail"]
        length, angle = v["tail_length"][tail], v["tail_angle"][tail]
        _splat_capsules(vessels, spacing, y[tail], x[tail], y[tail] + length * np.sin(angle),
                        x[tail] + length * np.cos(angle), v["semi_short"][tail] * 0.8)
        canvas.hu += vessels * lungs * (40.0 - canvas.hu)
        # airways beside vessels: a wall ring, then the air-filled lumen
        airway = v["has_airway"]
        lumen = v["lumen"][airway]
        wall = 0.35 + 0.15 * lumen
        gap = v["semi_short"][airway] + lumen + wall + 0.3
        ay = y[airway] + gap * np.sin(v["airway_angle"][airway])
        ax = x[airway] + gap * np.cos(v["airway_angle"][airway])
        for radius, value in ((lumen + wall, self.airway_wall_hu), (lumen, -990.0)):
            ring = np.zeros_like(canvas.hu)
            _splat_ellipses(ring, spacing, ay, ax, radius, radius, np.zeros_like(radius))
            canvas.hu += ring * lungs * (value - canvas.hu)

    def _place_nodule(self, lung_field: np.ndarray, radius: float) -> tuple[float, float]:
        distance = ndimage.distance_transform_edt(lung_field, sampling=self.spacing)
        if self.pleural:
            candidates = np.flatnonzero((distance >= 0.3 * radius) & (distance <= 0.8 * radius))
        else:
            candidates = np.flatnonzero(distance >= 1.35 * radius + 1.5)
        if candidates.size == 0:
            candidates = np.array([int(np.argmax(distance))])
        index = candidates[min(int(self.placement_u * candidates.size), candidates.size - 1)]
        row, col = divmod(int(index), self.size)
        centre = (self.size - 1) / 2.0
        return (row - centre) * self.spacing, (col - centre) * self.spacing

    def _draw_nodule(self, canvas: _Canvas, lungs: np.ndarray, offset: float) -> tuple[np.ndarray, dict]:
        low, high = NODULE_DIAMETER_RANGES_MM[self.label]
        # the slice cuts the nodule off-centre: smaller cross-sections away from the central slice, kept in class
        diameter = self.diameter * math.sqrt(max(0.55, 1.0 - (0.35 * offset) ** 2 / 4.0))
        n_pixels = _pixel_count_in_range(diameter, low, high, self.spacing)
        radius = diameter / 2.0
        lung_field = lungs > 0.5
        if self.nodule_centre is None:
            self.nodule_centre = self._place_nodule(lung_field, radius)
        cy, cx = self.nodule_centre
        reach = radius * self.elongation * 1.6 + 3.0 * self.spacing
        win = canvas.window(cy, cx, reach * (2.5 if self.pleural else 1.0))
        dy, dx = canvas.y_mm[win] - cy, canvas.x_mm[win] - cx
        cos, sin = math.cos(self.nodule_angle), math.sin(self.nodule_angle)
        u, v = (dx * cos + dy * sin) / self.elongation, (-dx * sin + dy * cos) * self.elongation
        theta = np.arctan2(v, u)
        profile = self.outline(theta)
        rho = np.hypot(u, v) / (radius * profile)
        inside_lung = lung_field[win]
        score = np.where(inside_lung, rho, np.inf)
        n_pixels = min(n_pixels, int(np.count_nonzero(inside_lung)))
        order = np.argpartition(score.ravel(), n_pixels - 1)[:n_pixels]
        local_mask = np.zeros(score.size, dtype=bool)
        local_mask[order] = True
        local_mask = local_mask.reshape(score.shape)
        threshold = float(score.ravel()[order].max())
        # intensity edge placed where the mask edge is, with a 1 px partial-volume ramp
        distance = (rho - threshold) * radius * profile
        coverage = np.clip(0.5 - distance / self.spacing, 0.0, 1.0) * inside_lung
        coverage[local_mask] = np.maximum(coverage[local_mask], 0.5)
        noise = self.rng_texture.standard_normal(coverage.shape)
        solid = self.solid_hu + 12.0 * _unit_std(ndimage.gaussian_filter(noise, 1.0))
        ggo = self.ggo_hu + 45.0 * _unit_std(ndimage.gaussian_filter(noise, 1.5))
        if self.kind == "solid":
            value = solid
        elif self.kind == "ground_glass":
            value = ggo
        else:
            core = np.clip(0.5 - (rho - threshold * self.core_fraction) * radius * profile / self.spacing, 0, 1)
            value = ggo + core * (solid - ggo)
        region = canvas.hu[win]
        region += coverage * (np.maximum(region, value) - region)
        for angle, length_fraction, width in self.spicules:
            start = threshold * radius * 0.9
            length = start + length_fraction * self.diameter
            canvas.blend(
                canvas.capsule_coverage(cy + start * math.sin(angle), cx + start * math.cos(angle),
                                        cy + length * math.sin(angle), cx + length * math.cos(angle), width),
                self.solid_hu,
                within=lungs,
            )
        mask = np.zeros((self.size, self.size), dtype=bool)
        mask[win] = local_mask
        centre = (self.size - 1) / 2.0
        facts = {
            "area_px": int(n_pixels),
            "equivalent_diameter_mm": 2.0 * math.sqrt(n_pixels / math.pi) * self.spacing,
            "centre_y": cy / self.spacing + centre,
            "centre_x": cx / self.spacing + centre,
        }
        return mask, facts

    def _draw_table(self, canvas: _Canvas) -> None:
        top = self.body_cy + self.body_ay + 12.0
        band = (np.abs(canvas.y_mm - top) < 2.0) & (np.abs(canvas.x_mm) < 170.0)
        canvas.hu[band] = 120.0
        lower = (np.abs(canvas.y_mm - top - 14.0) < 1.5) & (np.abs(canvas.x_mm) < 165.0)
        canvas.hu[lower] = 60.0

    def _acquire(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Scanner effects: blur (about 0.45 mm), correlated noise (about 20 HU), integer HU, FOV padding."""
        hu = ndimage.gaussian_filter(hu, sigma=max(0.45 / self.spacing, 0.3))
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape), 0.6)
        hu += rng.uniform(16.0, 24.0) * _unit_std(noise)
        hu = np.clip(np.rint(hu), -1024.0, 3071.0)
        hu[_outside_field_of_view(self.size)] = self.padding_hu
        return hu


def _unit_std(values: np.ndarray) -> np.ndarray:
    return values / max(float(values.std()), 1e-6)


def _pixel_count_in_range(diameter_mm: float, low: float, high: float, spacing: float) -> int:
    """Mask pixel count for ``diameter_mm``, adjusted so the equivalent diameter stays in [low, high)."""

    def equivalent(n):
        return 2.0 * math.sqrt(n / math.pi) * spacing

    n = max(1, round(math.pi * (diameter_mm / 2.0) ** 2 / spacing**2))
    while equivalent(n) < low:
        n += 1
    while n > 1 and equivalent(n) >= high:
        n -= 1
    return n


def automatic_lung_mask(hu: np.ndarray, threshold_hu: float = -400.0) -> np.ndarray:
    """Threshold lung mask, as unchecked automatic masks are made: dark, not connected to outside air, holes filled.

    Juxtapleural nodules end up outside it (they are notches, not holes), and central airways inside it, as with
    the automatic masks behind the real ``hu_array`` column.

    Args:
        hu: HU slice including the padding.
        threshold_hu: pixels below are air-like.

    Returns:
        bool mask of the lungs.
    """
    # opening removes noise specks; closing (about 3 mm at 0.7 mm/px) takes in the vessels entering at the hilum,
    # as lung masks usually do. OpenCV's morphology is ~50x faster than scipy's here.
    dark = cv2.morphologyEx((hu < threshold_hu).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels = cv2.connectedComponents(dark, connectivity=8)
    if count <= 1:
        return np.zeros(hu.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=count)
    keep = sizes >= max(20, hu.size // 2000)
    keep[border] = False
    keep[0] = False
    radius = max(1, round(hu.shape[0] / 128))
    closed = cv2.morphologyEx(keep[labels].astype(np.uint8), cv2.MORPH_CLOSE, _disc(radius).astype(np.uint8))
    # fill holes (vessels, nodules): flood the outside from a 1 px frame; what the flood misses is lung
    framed = cv2.copyMakeBorder(closed, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood_mask = np.zeros((framed.shape[0] + 2, framed.shape[1] + 2), np.uint8)
    cv2.floodFill(framed, flood_mask, (0, 0), 2)
    return framed[1:-1, 1:-1] != 2


def _disc(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def _class_counts(n_rows: int, class_proportions: dict[str, float] | None) -> dict[str, int]:
    proportions = dict(DEFAULT_CLASS_PROPORTIONS if class_proportions is None else class_proportions)
    unknown = [c for c in proportions if c not in LUNGRADS_LABELS]
    if unknown:
        raise ValueError(f"class_proportions: unknown classes {unknown}; expected keys among {list(LUNGRADS_LABELS)}")
    weights = np.array([max(float(proportions.get(c, 0.0)), 0.0) for c in LUNGRADS_LABELS])
    if weights.sum() <= 0:
        raise ValueError(f"class_proportions: expected positive weights, found {proportions}")
    exact = weights / weights.sum() * n_rows
    counts = np.floor(exact).astype(int)
    # largest remainder, so the counts add up to n_rows
    for index in np.argsort(-(exact - counts), kind="stable")[: n_rows - counts.sum()]:
        counts[index] += 1
    return dict(zip(LUNGRADS_LABELS, (int(c) for c in counts)))


def _generate(
    n_rows: int, image_size: int, seed: int, class_proportions: dict[str, float] | None, split: str
) -> tuple[pd.DataFrame, list[PhantomNodule]]:
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {sorted(_SPLIT_STREAM)} (it sets the mask dtype), found {split!r}")
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, found {n_rows}")
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be >= {_MIN_IMAGE_SIZE}: at {phantom_pixel_spacing_mm(image_size):.1f} mm/px an LR2 "
            f"nodule (< 6 mm) cannot be drawn; found {image_size}"
        )
    counts = _class_counts(n_rows, class_proportions)
    mask_dtype = _MASK_DTYPE[split]
    cells: list[list] = []
    nodules: list[PhantomNodule] = []
    patient_index = 0
    for class_index, label in enumerate(LUNGRADS_LABELS):
        class_rng = np.random.default_rng([seed, _SPLIT_STREAM[split], class_index])
        remaining = counts[label]
        while remaining > 0:
            n_slices = min(int(class_rng.integers(1, 6)), remaining)
            patient_seed = int(class_rng.integers(2**63))
            patient = _Patient(patient_seed, image_size, label)
            for k in range(n_slices):
                offset = k - (n_slices - 1) / 2.0
                hu, mask, facts = patient.render(np.random.default_rng([patient_seed, 2, k]), offset)
                lungs = automatic_lung_mask(hu)
                cells.append([label, mask.astype(mask_dtype), hu * lungs, hu])
                nodules.append(
                    PhantomNodule(
                        split=split, row=len(cells) - 1, label1=label, kind=patient.kind, pleural=patient.pleural,
                        spiculated=bool(patient.spicules), patient=patient_index, slice_in_patient=k,
                        padding_hu=patient.padding_hu, **facts,
                    )
                )
            remaining -= n_slices
            patient_index += 1
    return _as_lungrads_frame(cells), nodules


def _as_lungrads_frame(cells: list[list]) -> pd.DataFrame:
    """Object DataFrame with object column labels, pickling like the real files (no pandas string dtype)."""
    table = np.empty((len(cells), len(LUNGRADS_COLUMNS)), dtype=object)
    for row, values in enumerate(cells):
        for column, value in enumerate(values):
            table[row, column] = value
    return pd.DataFrame(table, columns=pd.Index(list(LUNGRADS_COLUMNS), dtype=object), dtype=object)


def make_phantom_frame(
    n_rows: int,
    image_size: int = 256,
    seed: int = 0,
    class_proportions: dict[str, float] | None = None,
    split: str = "train",
) -> pd.DataFrame:
    """Generate phantom slices as a DataFrame in the Lung-RADS pickle schema.

    Args:
        n_rows: number of slices.
        image_size: side of each slice in pixels (>= 96); spacing is :func:`phantom_pixel_spacing_mm`.
        seed: random seed; the same ``(seed, split)`` gives identical arrays.
        class_proportions: relative weights per class (default: the real test set's 35/37/97/95).
        split: ``train`` (mask int64) or ``test`` (mask int8), as in the real files; also selects the stream.

    Returns:
        DataFrame with object columns ``label1, mask, hu_array, hu_array_old``, rows grouped by class.

    Raises:
        ValueError: for an unknown split or class, ``n_rows < 1`` or a too small ``image_size``.
    """
    frame, _ = _generate(n_rows, image_size, seed, class_proportions, split)
    return frame


def _atomic_pickle(obj, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            pickle.dump(obj, file, protocol=4)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _atomic_text(text: str, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_phantom_pickles(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    image_size: int = 256,
    seed: int = 0,
    class_proportions: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Write phantom ``lung_cancer_train.pkl`` and ``lung_cancer_test.pkl`` (pickle protocol 4, atomic writes).

    Also writes ``phantom.json`` (the parameters and pixel spacing) and ``phantom_nodules.csv`` (per row: nodule
    kind, pleural contact, simulated patient, area and equivalent diameter), which the reader ignores.

    Args:
        out_dir: folder to write into (created).
        n_train: rows of the train pickle.
        n_test: rows of the test pickle.
        image_size: side of each slice in pixels.
        seed: random seed (train and test draw from different streams of it).
        class_proportions: relative class weights for both splits (default 35/37/97/95).

    Returns:
        ``{"train": path, "test": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    records: list[dict] = []
    for split, n_rows in (("train", n_train), ("test", n_test)):
        frame, nodules = _generate(n_rows, image_size, seed, class_proportions, split)
        path = out_dir / LUNGRADS_FILE_NAMES[split]
        _atomic_pickle(frame, path)
        paths[split] = path
        records.extend(asdict(n) for n in nodules)
        del frame
    table_path = out_dir / "phantom_nodules.csv"
    _atomic_text(pd.DataFrame(records).to_csv(index=False), table_path)
    parameters = {
        "n_train": n_train,
        "n_test": n_test,
        "image_size": image_size,
        "seed": seed,
        "class_proportions": class_proportions or DEFAULT_CLASS_PROPORTIONS,
        "pixel_spacing_mm": phantom_pixel_spacing_mm(image_size),
        "field_of_view_mm": PHANTOM_FIELD_OF_VIEW_MM,
        "nodule_diameter_ranges_mm": NODULE_DIAMETER_RANGES_MM,
    }
    _atomic_text(json.dumps(parameters, indent=2), out_dir / "phantom.json")
    return paths


__all__ = [
    "DEFAULT_CLASS_PROPORTIONS",
    "NODULE_DIAMETER_RANGES_MM",
    "PHANTOM_FIELD_OF_VIEW_MM",
    "PHANTOM_PIXEL_SPACING_MM",
    "PhantomNodule",
    "automatic_lung_mask",
    "make_phantom_frame",
    "phantom_pixel_spacing_mm",
    "write_phantom_pickles",
]
