"""DICOM films in: read one grayscale radiograph as the 8-bit image the model is given, with pydicom.

Hospitals, PACS exports and most public collections deliver DICOM; the data set holds 8-bit PNGs. A film is
rendered the way the data set's PNGs were made and the way a viewer shows it, the same everywhere (``predict``,
the app, ``predict --rendered``):

1. the stored values through the modality LUT (rescale slope and intercept, or the file's modality LUT);
2. the file's first VOI LUT or window (centre and width), its output range scaled to 0..255; a file with neither
   is shown over its full range (its darkest value black, its brightest white);
3. MONOCHROME1 (low values white) inverted, so that bone is bright in every film.

Refused with a message that names the reason, from the header before any pixel is decoded (``header_problem``):
a file without pixel data, a multi-frame image, a colour image, and a compressed transfer syntax that no
installed plugin decodes (the message names the package to install). Uncompressed, JPEG (pylibjpeg-libjpeg) and
JPEG 2000 (pylibjpeg-openjpeg) films decode with the requirements.

**Patient data stays in the file.** A header carries names, IDs, dates. Only the technical fields of
``TECHNICAL_FIELDS`` are read into a ``Film``; nothing else from the header is returned, printed or written, and
no message quotes a header value other than those.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .image_files import UnreadableImage

PREAMBLE = 128  # bytes before the "DICM" prefix of a DICOM Part 10 file
DICOM_PREFIX = b"DICM"
DICOM_SUFFIXES = (".dcm", ".dicom")  # read even without the Part 10 prefix (a bare data set)
# The header fields a Film keeps: what rendering and the user's warnings need, nothing that identifies a patient.
TECHNICAL_FIELDS = ("Modality", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns", "BitsStored",
                    "SamplesPerPixel", "NumberOfFrames")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}  # DICOM's ViewPosition terms of a side view
FRONTAL_VIEWS = {"PA", "AP"}
# Which package decodes which compressed transfer syntax (pydicom's own plugins need no package).
PLUGIN_PACKAGES = {
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG": "pylibjpeg pylibjpeg-libjpeg",
    "RLE": "pylibjpeg pylibjpeg-rle",
}


class DicomError(UnreadableImage):
    """A DICOM file this project cannot read as one grayscale film; the message says why and what to do."""


def is_dicom(head: bytes, name: str | Path = "") -> bool:
    """Whether a file is DICOM by its content (the "DICM" prefix after the 128-byte preamble), or, for a file
    without that prefix, by its name (``.dcm``, ``.dicom``)."""
    return head[PREAMBLE:PREAMBLE + len(DICOM_PREFIX)] == DICOM_PREFIX or Path(name).suffix.lower() in DICOM_SUFFIXES


@dataclass(frozen=True)
class Film:
    """One rendered film: 8-bit grayscale pixels (height x width) and the technical facts the user is told."""

    pixels: np.ndarray
    modality: str | None
    view: str | None  # ViewPosition: PA, AP, LL, ... or None when the file does not say
    rendering: str  # which VOI was applied: "window C/W", "VOI LUT", or "full range"

    @property
    def lateral(self) -> bool:
        return (self.view or "").upper() in LATERAL_VIEWS

    def view_warning(self) -> str | None:
        """Why the answer on this film means little (a side view), or None."""
        if not self.lateral:
            return None
        return (f"a lateral view (ViewPosition {self.view}): the model was trained on frontal (PA/AP) films only, "
                "so its answer on this one means little")


def _read(path: Path, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, force=Path(path).suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # the exception's type only: a parser's message could quote a header value
        raise DicomError(f"cannot be read as DICOM ({type(exc).__name__}); is the file whole?") from None


def header_problem(path: str | Path, *, max_pixels: int | None = None) -> str | None:
    """Why the file cannot be read as one grayscale film, from its header alone (nothing decoded), or None."""
    try:
        dataset = _read(Path(path), pixels=False)
    except DicomError as exc:
        return str(exc)
    return _problem(dataset, Path(path), max_pixels)


def _problem(dataset, path: Path, max_pixels: int | None) -> str | None:
    if "PixelData" not in dataset and not _has_pixel_data_after_header(path):
        return "DICOM without pixel data (a report, a structure set or a plan, not an image)"
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return f"a multi-frame DICOM ({frames} frames); export the one film as a single-frame file"
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return (f"a colour DICOM ({photometric or 'no PhotometricInterpretation'}, {samples} samples per pixel); "
                "the model reads grayscale radiographs (MONOCHROME1 or MONOCHROME2)")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if not rows or not columns:
        return "DICOM without its image size (Rows, Columns)"
    if max_pixels is not None and rows * columns > max_pixels:
        return f"{columns} x {rows} pixels, more than the limit of {max_pixels / 1e6:.0f} million; resize it first"
    return _missing_decoder(dataset)


def _has_pixel_data_after_header(path: Path) -> bool:
    """stop_before_pixels leaves PixelData out of the header: look for the element in the rest of the file."""
    data = path.read_bytes()
    return any(tag in data for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"))  # (7FE0,0010), little or big endian


def _missing_decoder(dataset) -> str | None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import ImplicitVRLittleEndian

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None) or ImplicitVRLittleEndian
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"a DICOM compressed with {syntax.name}, which pydicom cannot decode; convert it to an uncompressed file"
    if decoder.is_available:
        return None
    package = next((p for key, p in PLUGIN_PACKAGES.items() if key in syntax.name), "pylibjpeg pylibjpeg-openjpeg "
                                                                                   "pylibjpeg-libjpeg")
    return (f"a DICOM compressed with {syntax.name}, and no installed plugin decodes it: `pip install {package}` "
            "(requirements.txt installs them)")


def read_film(path: str | Path) -> Film:
    """The file rendered as the model's 8-bit grayscale image (the module's three steps); ``DicomError`` otherwise."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    dataset = _read(path, pixels=True)
    problem = _problem(dataset, path, None)
    if problem:
        raise DicomError(problem)
    try:
        stored = dataset.pixel_array
    except Exception as exc:  # a damaged or cut-short pixel stream: the decoder's type only, for the same reason
        raise DicomError(f"its pixel data cannot be decoded ({type(exc).__name__}); is the file whole?") from None
    values = apply_modality_lut(stored, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        rendering = ("VOI LUT" if "VOILUTSequence" in dataset else
                     f"window {_first(dataset.WindowCenter):g}/{_first(dataset.WindowWidth):g}")
        # the VOI's own output range: what it gives for values far below and far above any stored value
        low, high = apply_voi_lut(np.array([-1e12, 1e12]), dataset).astype(np.float64)
        values = apply_voi_lut(values, dataset).astype(np.float64)
    else:
        rendering, low, high = "full range", values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    gray = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    if str(dataset.PhotometricInterpretation).strip() == "MONOCHROME1":
        gray = 255 - gray
    return Film(gray, _text(dataset, "Modality"), _text(dataset, "ViewPosition"), rendering)


def _first(value) -> float:
    """A window value, which the standard allows to be several (the first is the default)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)


def _text(dataset, field: str) -> str | None:
    assert field in TECHNICAL_FIELDS
    value = str(dataset.get(field, "") or "").strip()
    return value or None
