"""CT volumes from MHD/RAW, NRRD and NIfTI files: reading, world <-> voxel geometry, resampling, min-max scaling.

Everything goes through SimpleITK, which reads all three formats and keeps the geometry (origin, spacing,
direction) that the world coordinates of LUNA16 annotations refer to.

Conventions (the ones ITK uses, so that SimpleITK can check every result):

- ``Volume.array`` is indexed ``[z, y, x]`` (slice, row, column), as ``sitk.GetArrayFromImage`` returns it.
- ``spacing`` and ``origin`` are in ``(x, y, z)`` order, in mm. ``origin`` is the world position of the centre
  of voxel ``[0, 0, 0]``.
- ``direction`` is the 3x3 matrix whose *columns* are the world directions of the x, y and z index axes, so that
  ``world = origin + direction @ (spacing * index_xyz)``. Paper 003's Eq. 6,
  ``voxel = (world - origin) / spacing``, is the special case ``direction = identity``; :func:`world_to_index`
  solves the general equation.
- Continuous indices have voxel centres at integers (voxel ``i`` covers ``[i - 0.5, i + 0.5)``).

Resampling (paper 003, Eqs. 1-4): ``resampling_factor = old_spacing / new_spacing`` per axis and
``new_size = round(old_size * resampling_factor)``. We use SimpleITK's ``ResampleImageFilter`` rather than
``scipy.ndimage.zoom`` because it honours origin and direction, gives exactly the requested spacing (zoom's
spacing would be ``old_extent / new_size``) and lets labels use nearest-neighbour while images use linear
interpolation. The new grid keeps the origin (centre of the first voxel) and the direction; its physical extent
``new_size * new_spacing`` differs from the old one by less than one new voxel because of the rounding.
"""

from __future__ import annotations

import locale
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

#: File endings :func:`read_volume` accepts.
VOLUME_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr", ".nii", ".nii.gz")

# Bytes per element of the MetaImage element types, to check a .raw file's size before SimpleITK reads it.
_MET_ELEMENT_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 8,
    "MET_ULONG": 8,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}

#: HU given to voxels a resampled grid takes from outside the source volume (air).
AIR_HU = -1024.0


@dataclass
class Volume:
    """A 3-D CT (or label) volume with its world geometry.

    Args:
        array: voxel values indexed ``[z, y, x]``; HU as int16 or float32 for images, integers for labels.
        spacing: voxel size in mm, ``(x, y, z)``.
        origin: world position (mm) of the centre of voxel ``[0, 0, 0]``, ``(x, y, z)``.
        direction: 3x3 matrix, columns = world directions of the x, y, z index axes.
        source_path: file the volume came from (for provenance and error messages), or None.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source_path: str | None = None

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            name = self.source_path or "volume"
            raise ValueError(f"{name}: expected a 3-D array (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError(f"{self.source_path or 'volume'}: spacing and origin need three values (x, y, z)")
        if min(self.spacing) <= 0:
            raise ValueError(f"{self.source_path or 'volume'}: spacing must be positive, got {self.spacing}")

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z (ITK order; the array shape reversed)."""
        return tuple(int(n) for n in self.array.shape[::-1])

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size ``size * spacing`` along x, y, z in mm."""
        return tuple(n * s for n, s in zip(self.size_xyz, self.spacing))

    def to_sitk(self):
        """This volume as a ``SimpleITK.Image`` with the same geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image, source_path: str | None = None) -> "Volume":
        """Wrap a 3-D ``SimpleITK.Image`` (array, spacing, origin, direction)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"{source_path or 'image'}: expected a 3-D image, got {image.GetDimension()}-D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"{source_path or 'image'}: expected one value per voxel, got "
                f"{image.GetNumberOfComponentsPerPixel()} components (a colour or vector image)"
            )
        array = sitk.GetArrayFromImage(image)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        return cls(
            array=array,
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            source_path=source_path,
        )


def volume_suffix(path: Path) -> str:
    """The volume ending of ``path`` (one of :data:`VOLUME_SUFFIXES`, lower case), or ``""``."""
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def _read_metaimage_header(path: Path) -> dict[str, str]:
    header = {}
    with open(path, "rb") as handle:
        for raw_line in handle:
            line = raw_line.decode("latin-1").strip()
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break  # with LOCAL the binary data follows this line
    return header


def _check_metaimage_data_file(path: Path) -> None:
    """Fail early, naming the files, when an .mhd's data file is missing or shorter than its header says."""
    header = _read_metaimage_header(path)
    data_name = header.get("ElementDataFile")
    if data_name is None:
        raise ValueError(f"{path}: MetaImage header has no ElementDataFile line")
    if data_name == "LOCAL" or data_name.startswith("LIST") or "%" in data_name:
        return  # data inside the header file, or a file list: leave those to SimpleITK
    data_path = path.parent / data_name
    if not data_path.is_file():
        raise FileNotFoundError(f"{data_path}: data file named by {path} (ElementDataFile) is missing")
    if header.get("CompressedData", "False").lower() == "true":
        return  # compressed size is not predictable
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        element_bytes = _MET_ELEMENT_BYTES[header["ElementType"]]
    except (KeyError, ValueError):
        return  # unusual header: SimpleITK will say what is wrong
    channels = int(header.get("ElementNumberOfChannels", "1"))
    header_bytes = max(int(header.get("HeaderSize", "0")), 0)
    expected = int(np.prod(dims)) * element_bytes * channels + header_bytes
    actual = data_path.stat().st_size
    if actual < expected:
        raise ValueError(
            f"{data_path}: truncated data file: header {path.name} (DimSize {dims}, {header['ElementType']}) needs "
            f"{expected} bytes, the file has {actual}"
        )


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3-D volume from MHD/RAW (or MHA), NRRD or NIfTI.

    Args:
        path: the ``.mhd``/``.mha``, ``.nrrd``/``.nhdr`` or ``.nii``/``.nii.gz`` file.

    Returns:
        A :class:`Volume`; integer voxel types are kept (int16 HU stays int16), float64 becomes float32.

    Raises:
        FileNotFoundError: if the file, or the data file an ``.mhd`` names, is missing.
        ValueError: for an unsupported ending, a truncated ``.raw``, a non-3-D or multi-component image, or any
            file SimpleITK cannot read (its message is kept).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: volume file not found")
    suffix = volume_suffix(path)
    if not suffix:
        raise ValueError(f"{path}: unsupported volume file; expected one of {VOLUME_SUFFIXES}")
    if suffix == ".mhd":
        _check_metaimage_data_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"{path}: SimpleITK could not read this file: {str(error).strip()}") from error
    return Volume.from_sitk(image, source_path=str(path))


def check_same_geometry(first: Volume, second: Volume, tolerance_mm: float = 1e-3) -> None:
    """Raise if two volumes do not share voxel grid and world geometry.

    Args:
        first: e.g. the image volume.
        second: e.g. its label volume.
        tolerance_mm: largest accepted difference of origin (mm) and of spacing (mm); direction cosines are
            compared with tolerance 1e-4.

    Raises:
        ValueError: naming both files and the first property that differs, with both values.
    """
    names = f"{first.source_path or 'first volume'} and {second.source_path or 'second volume'}"
    if first.array.shape != second.array.shape:
        raise ValueError(f"{names}: different sizes (z, y, x) {first.array.shape} vs {second.array.shape}")
    if not np.allclose(first.spacing, second.spacing, rtol=0, atol=tolerance_mm):
        raise ValueError(f"{names}: different spacing (x, y, z mm) {first.spacing} vs {second.spacing}")
    if not np.allclose(first.origin, second.origin, rtol=0, atol=tolerance_mm):
        raise ValueError(f"{names}: different origin (x, y, z mm) {first.origin} vs {second.origin}")
    if not np.allclose(first.direction, second.direction, rtol=0, atol=1e-4):
        raise ValueError(
            f"{names}: different direction matrices {first.direction.ravel().tolist()} vs "
            f"{second.direction.ravel().tolist()}"
        )


def read_volume_with_label(
    image_path: str | os.PathLike, label_path: str | os.PathLike, tolerance_mm: float = 1e-3
) -> tuple[Volume, Volume]:
    """Read an image volume and its label volume and check that they share one voxel grid.

    Args:
        image_path: CT volume file (any format :func:`read_volume` reads).
        label_path: label volume file; integer labels, 0 = background.
        tolerance_mm: see :func:`check_same_geometry`.

    Returns:
        ``(image, label)``; the label array is cast to an unsigned integer type (uint8 when it fits).

    Raises:
        FileNotFoundError: if either file is missing.
        ValueError: if the geometries differ, or the label has negative or non-integer values.
    """
    image = read_volume(image_path)
    label = read_volume(label_path)
    check_same_geometry(image, label, tolerance_mm=tolerance_mm)
    values = label.array
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        raise ValueError(f"{label_path}: label volume has non-integer values; expected integer labels")
    if values.min(initial=0) < 0:
        raise ValueError(f"{label_path}: label volume has negative values; expected 0 = background, >0 = labels")
    label.array = values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint32)
    return image, label


def _index_to_world_matrix(volume: Volume) -> np.ndarray:
    return volume.direction @ np.diag(volume.spacing)


def world_to_index(volume: Volume, points_xyz) -> np.ndarray:
    """Continuous voxel indices of world points (paper 003 Eq. 6, generalised to any direction matrix).

    Solves ``world = origin + direction @ (spacing * index)`` for ``index``; identical to SimpleITK's
    ``TransformPhysicalPointToContinuousIndex``.

    Args:
        volume: the volume whose grid is used.
        points_xyz: one point ``(x, y, z)`` in mm or an array of shape ``(n, 3)``.

    Returns:
        Float array of the same shape: ``(i, j, k)`` = (x, y, z) index, voxel centres at integers.
    """
    points = np.asarray(points_xyz, dtype=np.float64)
    offsets = points - np.asarray(volume.origin)
    matrix = _index_to_world_matrix(volume)
    return np.linalg.solve(matrix, offsets.T).T if points.ndim > 1 else np.linalg.solve(matrix, offsets)


def index_to_world(volume: Volume, index_xyz) -> np.ndarray:
    """World points (mm) of continuous voxel indices ``(i, j, k)``; the inverse of :func:`world_to_index`."""
    index = np.asarray(index_xyz, dtype=np.float64)
    matrix = _index_to_world_matrix(volume)
    return (matrix @ index.T).T + np.asarray(volume.origin)


def uneven_slice_gaps(offsets_mm, tolerance: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Check that slices sit evenly along their normal (a missing or duplicated slice breaks a regular grid).

    Args:
        offsets_mm: each slice's position along the slice normal (mm), in reading order.
        tolerance: largest relative deviation of a gap from the typical one still called even.

    Returns:
        ``(gaps, typical, uneven)``: the gaps between consecutive slices (mm, signed), the typical gap (median of
        their sizes) and the indices of the gaps whose size differs from it by more than
        ``tolerance * typical + 1e-3`` mm.
    """
    gaps = np.diff(np.asarray(offsets_mm, dtype=np.float64))
    typical = float(np.median(np.abs(gaps)))
    uneven = np.flatnonzero(np.abs(np.abs(gaps) - typical) > tolerance * typical + 1e-3)
    return gaps, typical, uneven


def nearest_voxel_zyx(index_xyz) -> tuple[int, int, int]:
    """The array position ``(z, y, x)`` of the voxel containing a continuous index ``(i, j, k)``.

    Rounds half up (``floor(v + 0.5)``) so that ties never depend on banker's rounding.
    """
    i, j, k = (int(np.floor(float(v) + 0.5)) for v in index_xyz)
    return k, j, i


def resampled_size(size_xyz, spacing_xyz, new_spacing_xyz) -> tuple[int, int, int]:
    """New voxel counts of paper 003's Eqs. 1-4: ``round(size * old_spacing / new_spacing)``, at least 1.

    Args:
        size_xyz: voxel counts along x, y, z.
        spacing_xyz: current spacing (mm).
        new_spacing_xyz: wanted spacing (mm).

    Returns:
        The new voxel counts (x, y, z), rounding half up.
    """
    factors = np.asarray(spacing_xyz, dtype=np.float64) / np.asarray(new_spacing_xyz, dtype=np.float64)
    sizes = np.floor(np.asarray(size_xyz, dtype=np.float64) * factors + 0.5).astype(int)
    return tuple(int(max(n, 1)) for n in sizes)


def _full_spacing(volume: Volume, new_spacing) -> tuple[float, float, float]:
    if np.isscalar(new_spacing):
        return (float(new_spacing),) * 3
    values = tuple(new_spacing)
    if len(values) != 3:
        raise ValueError(f"new_spacing must be a number or three values (x, y, z), got {new_spacing!r}")
    # None keeps that axis's spacing (e.g. resample in-plane only, as paper 003's Eqs. 1-4 do).
    return tuple(float(old if new is None else new) for old, new in zip(volume.spacing, values))


def resample_volume(
    volume: Volume,
    new_spacing,
    interpolation: str = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample a volume to a new voxel spacing, keeping origin, direction and (up to rounding) extent.

    Args:
        volume: the volume to resample.
        new_spacing: one number (isotropic) or ``(x, y, z)`` in mm; a ``None`` entry keeps that axis.
        interpolation: ``"linear"`` for images (output float32 HU) or ``"nearest"`` for labels (output keeps
            the label dtype).
        default_value: value of new voxels that fall outside the old volume; ``AIR_HU`` (-1024) for linear,
            0 for nearest when None.

    Returns:
        A new :class:`Volume` with size from :func:`resampled_size` and the requested spacing.

    Raises:
        ValueError: for an unknown interpolation or a non-positive spacing.
    """
    import SimpleITK as sitk

    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolation not in interpolators:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(interpolators)}")
    spacing = _full_spacing(volume, new_spacing)
    if min(spacing) <= 0:
        raise ValueError(f"new spacing must be positive, got {spacing}")
    if default_value is None:
        default_value = AIR_HU if interpolation == "linear" else 0.0
    source = volume.to_sitk()
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(spacing)
    resampler.SetSize(resampled_size(volume.size_xyz, volume.spacing, spacing))
    resampler.SetOutputOrigin(volume.origin)
    resampler.SetOutputDirection(tuple(volume.direction.ravel()))
    resampler.SetInterpolator(interpolators[interpolation])
    resampler.SetDefaultPixelValue(float(default_value))
    if interpolation == "linear":
        resampler.SetOutputPixelType(sitk.sitkFloat32)  # interpolated HU are not integers; do not truncate
    result = Volume.from_sitk(resampler.Execute(source), source_path=volume.source_path)
    if interpolation == "nearest":
        result.array = result.array.astype(volume.array.dtype, copy=False)
    return result


def minmax_to_255(array, hu_window: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max scale to [0, 255] (paper 003, Eq. 5: ``y = 255 (x - min) / (max - min)``).

    Args:
        array: HU values of a slice or a volume; min and max are taken over the whole array.
        hu_window: optional ``(low, high)`` HU; values are clipped to it first (min and max are then those of
            the clipped array, as Eq. 5 takes them from the image it is given).

    Returns:
        float32 array in [0, 255]; all zeros when the (clipped) array is constant.
    """
    values = np.asarray(array, dtype=np.float32)
    if hu_window is not None:
        low, high = hu_window
        if not low < high:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window}")
        values = np.clip(values, low, high)
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values)
    return ((values - low) * (255.0 / (high - low))).astype(np.float32)


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = False) -> Path:
    """Write a volume (any format SimpleITK writes, chosen by the file ending), atomically.

    For ``.mhd`` the data goes to a ``.raw`` file beside it, named by the header. The files are written under
    temporary names in the same folder and then renamed, so a reader never sees half a file.

    Args:
        volume: the volume.
        path: target file (``.mhd``, ``.nrrd``, ``.nii.gz``, ...).
        compress: ask SimpleITK to compress the data.

    Returns:
        The path written.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise ValueError(f"{path}: unsupported volume file; expected one of {VOLUME_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(suffix)]
    temp_stem = f".{stem}.tmp{os.getpid()}"
    temp_path = path.parent / f"{temp_stem}{suffix}"
    sitk.WriteImage(volume.to_sitk(), str(temp_path), useCompression=compress)
    if suffix == ".mhd":
        # The header names its data file; rename the data and point the header at the final name.
        data_suffix = ".zraw" if compress else ".raw"
        temp_data = path.parent / f"{temp_stem}{data_suffix}"
        final_data = path.parent / f"{stem}{data_suffix}"
        header = temp_path.read_text(encoding="latin-1")
        header = header.replace(f"ElementDataFile = {temp_data.name}", f"ElementDataFile = {final_data.name}")
        temp_path.write_text(header, encoding="latin-1")
        os.replace(temp_data, final_data)
    os.replace(temp_path, path)
    return path


def with_array(volume: Volume, array: np.ndarray) -> Volume:
    """A copy of ``volume``'s geometry holding another array of the same shape (e.g. a mask)."""
    if np.shape(array) != volume.array.shape:
        raise ValueError(f"array shape {np.shape(array)} differs from the volume's {volume.array.shape}")
    return replace(volume, array=np.asarray(array), direction=volume.direction.copy())


def write_dicom_series(volume: Volume, folder: str | os.PathLike, series_uid: str | None = None,
                       description: str = "lungkit volume") -> Path:
    """Write a volume as a CT DICOM series, one file per slice (``slice0000.dcm`` ...), in one new folder.

    Each slice carries the volume's geometry (ImagePositionPatient from the volume's origin and direction,
    ImageOrientationPatient, PixelSpacing, SliceThickness) and HU as signed 16-bit values with rescale slope 1 and
    intercept 0, so reading the folder back (:func:`lungkit.predict.read_dicom_series`, SimpleITK, any viewer) gives
    the same voxels in the same places. Made for demonstrations and tests (a phantom as a scanner would store it);
    the files are DICOM "secondary capture" style CT, not a full scanner export.

    Args:
        volume: the volume (HU, rounded to integers).
        folder: the series folder; must not exist yet.
        series_uid: the SeriesInstanceUID; a new one when None.
        description: SeriesDescription.

    Returns:
        The folder.

    Raises:
        FileExistsError: when ``folder`` exists.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder}: exists; a DICOM series is written into a new folder")
    temporary = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    image = sitk.Cast(sitk.GetImageFromArray(np.rint(np.asarray(volume.array, np.float64)).astype(np.int16)),
                      sitk.sitkInt16)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.ravel()))
    uid_root = "1.2.826.0.1.3680043.2.1125"  # a root used for generated, non-clinical UIDs
    stamp = f"{int(time.time() * 1e3)}.{os.getpid()}"
    study_uid = f"{uid_root}.1.{stamp}"
    series_uid = series_uid or f"{uid_root}.2.{stamp}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    # GDCM's DICOM writer sets the process locale to "C" (measured with SimpleITK 2.5: LC_CTYPE C.UTF-8 -> C),
    # after which every open() / read_text() without an encoding reads ASCII and fails on UTF-8 files
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(writer, image, volume, temporary, series_uid, study_uid, description)
        os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def _write_dicom_slices(writer, image, volume: Volume, folder: Path, series_uid: str, study_uid: str,
                        description: str) -> None:
    direction = volume.direction
    orientation = "\\".join(f"{value:.10g}" for value in (*direction[:, 0], *direction[:, 1]))
    for index in range(image.GetDepth()):
        slice_image = image[:, :, index]
        position = index_to_world(volume, (0.0, 0.0, float(index)))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{series_uid}.{index + 1}",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0008|103e": description,
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{value:.10g}" for value in position),
            "0020|0037": orientation,
            "0018|0050": f"{volume.spacing[2]:.10g}",
            "0028|0030": f"{volume.spacing[1]:.10g}\\{volume.spacing[0]:.10g}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{index:04d}.dcm"))
        writer.Execute(slice_image)
