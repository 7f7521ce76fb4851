"""DICOM films in (``data/dicom.py``, ``predict``'s reader): real films from PyPI packages, rendered as a viewer and
the data set's PNGs render them, the same whatever the encoding; every refusal named; no patient data out."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from covid_mobilenet.data import dicom  # noqa: E402
from covid_mobilenet.product import predict  # noqa: E402

REAL_FILMS = Path(__file__).parent / "real_films"
KERMANY = sorted((REAL_FILMS / "kermany").glob("*.jpeg"))
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped inside pydicom's own wheel
PLANTED_NAME, PLANTED_ID = "Plantedname^Secretperson", "PLANTED-ID-4711"


def rg1(encoding: str) -> Path:
    """The adult PA chest CR "RG1" of pydicom-data (requirements-dev.txt): UNCR uncompressed, J2KR JPEG 2000."""
    data_store = pytest.importorskip("data_store", reason="pip install pydicom-data==1.0.0 (requirements-dev.txt)")
    return Path(data_store.__file__).parent / "data" / f"RG1_{encoding}.dcm"


def test_the_real_films_are_here_with_their_licence():
    assert len(KERMANY) == 16 and "CC BY 4.0" in (REAL_FILMS / "README.md").read_text()
    assert rg1("UNCR").is_file() and rg1("J2KR").is_file()


def test_rg1_uncompressed_and_jpeg2000_render_the_same_film():
    plain, compressed = dicom.read_film(rg1("UNCR")), dicom.read_film(rg1("J2KR"))
    assert plain.pixels.shape == (1955, 1841) and plain.pixels.dtype == np.uint8
    assert np.array_equal(plain.pixels, compressed.pixels), "lossless JPEG 2000 must give the very same film"
    assert plain.view == "PA" and plain.modality == "CR" and not plain.lateral and plain.view_warning() is None
    assert plain.rendering == "window 15000/30000"


def test_the_rendering_is_pydicoms_modality_and_voi_luts_scaled_to_8_bits_with_monochrome1_inverted():
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset = pydicom.dcmread(rg1("UNCR"))
    assert dataset.PhotometricInterpretation == "MONOCHROME1" and dataset.BitsStored == 15
    windowed = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset)
    # the window's output range is the stored values' (0 .. 2**15 - 1); MONOCHROME1: low values white
    expected = 255 - np.round(windowed / (2 ** 15 - 1) * 255)
    assert np.abs(dicom.read_film(rg1("UNCR")).pixels.astype(int) - expected).max() <= 1
    # the film is a chest film, bright bones on a dark background after inversion: the lungs darker than the edges
    pixels = dicom.read_film(rg1("UNCR")).pixels
    assert pixels[600:1200, 300:700].mean() < pixels[1700:, :].mean()


def film_file(tmp_path: Path, name: str, pixels: np.ndarray, **fields) -> Path:
    """A single-frame uncompressed DICOM film written with pydicom, its header fields as given."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.Modality, dataset.PatientName, dataset.PatientID = "CR", PLANTED_NAME, PLANTED_ID
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    for field_name, value in fields.items():
        setattr(dataset, field_name, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    path = tmp_path / name
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_a_film_without_a_window_is_shown_over_its_full_range_after_the_rescale(tmp_path):
    stored = np.tile(np.arange(100, 1100, 10, dtype=np.uint16), (20, 1))  # 20 x 100, values 100 .. 1090
    path = film_file(tmp_path, "ramp.dcm", stored, RescaleSlope=2, RescaleIntercept=-50, ViewPosition="LL")
    film = dicom.read_film(path)
    assert film.rendering == "full range"
    assert film.pixels.min() == 0 and film.pixels.max() == 255
    expected = np.round((stored * 2.0 - 50 - (100 * 2 - 50)) / ((1090 - 100) * 2) * 255)
    assert np.abs(film.pixels.astype(int) - expected).max() <= 1
    assert film.lateral and "lateral view (ViewPosition LL)" in film.view_warning()


def test_every_unreadable_dicom_is_refused_from_its_header_with_the_reason(tmp_path, monkeypatch):
    ct = PYDICOM_FILES / "CT_small.dcm"
    assert dicom.header_problem(ct) is None, "a CT slice is a grayscale film: read, and left to the guard"
    assert "without pixel data" in dicom.header_problem(PYDICOM_FILES / "rtplan.dcm")
    assert "colour DICOM (RGB, 3 samples" in dicom.header_problem(PYDICOM_FILES / "SC_rgb_small_odd.dcm")
    assert "colour DICOM (PALETTE COLOR" in dicom.header_problem(PYDICOM_FILES / "examples_palette.dcm")
    frames = np.zeros((2, 8, 8), np.uint16)
    multi = film_file(tmp_path, "multi.dcm", frames.reshape(16, 8), NumberOfFrames=2)
    assert "multi-frame DICOM (2 frames)" in dicom.header_problem(multi)
    assert "6000 x 8000 pixels" in dicom.header_problem(film_file(tmp_path, "huge.dcm", np.zeros((8, 8)), Rows=8000,
                                                                  Columns=6000), max_pixels=40_000_000)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(rg1("UNCR").read_bytes()[:5000])
    with pytest.raises(dicom.DicomError, match="cannot be decoded|cannot be read as DICOM"):
        dicom.read_film(cut)

    class NoPlugin:  # what pydicom's decoder says when no plugin for the syntax is installed
        is_available = False

    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: NoPlugin())
    problem = dicom.header_problem(rg1("J2KR"))
    assert "JPEG 2000" in problem and "pip install pylibjpeg pylibjpeg-openjpeg" in problem
    with pytest.raises(dicom.DicomError, match="pylibjpeg-openjpeg"):
        dicom.read_film(rg1("J2KR"))


def test_a_folder_is_read_by_content_and_every_other_file_is_named(tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    shutil.copy(rg1("J2KR"), folder / "film.dcm")
    shutil.copy(KERMANY[0], folder / "child_film_without_suffix")  # a JPEG by its content
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(rg1("UNCR"), folder / "renamed.png")  # a DICOM whatever its name says
    found, problems = predict.image_files([str(folder)])
    assert [p.name for p in found] == ["child_film_without_suffix", "film.dcm", "renamed.png"]
    assert problems == [(str(folder / "notes.txt"), predict.NOT_AN_IMAGE)]
    assert [predict.input_kind(p) for p in found] == ["JPEG", "DICOM", "DICOM"]


def test_the_rendered_png_is_what_the_model_is_given_and_reads_back_to_the_same_pixels(tmp_path):
    inputs = [rg1("UNCR"), rg1("J2KR"), KERMANY[0]]
    decoded = predict.decode(inputs, 64, rendered=tmp_path / "rendered")
    assert [p.name for p in decoded.rendered] == ["RG1_UNCR.png", "RG1_J2KR.png", f"{KERMANY[0].stem}.png"]
    assert decoded.films[0].view == "PA" and decoded.films[2] is None
    from PIL import Image

    png = Image.open(decoded.rendered[0])
    assert png.mode == "L" and png.size == (1841, 1955) and not png.info.get("text")
    assert np.array_equal(np.asarray(png), dicom.read_film(rg1("UNCR")).pixels)
    assert decoded.rendered[0].read_bytes() == decoded.rendered[1].read_bytes()
    again = predict.decode(decoded.rendered, 64)  # the rendered PNGs through the training decoder
    assert np.array_equal(again.pixels, decoded.pixels), "a DICOM and its rendered PNG give the model the same pixels"


def test_no_patient_data_in_what_the_reader_returns_or_says(tmp_path):
    path = film_file(tmp_path, "planted.dcm", np.arange(64 * 64).reshape(64, 64) % 4096, ViewPosition="PA")
    film = dicom.read_film(path)
    assert PLANTED_NAME.split("^")[0] not in repr(film) and PLANTED_ID not in repr(film)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(path.read_bytes()[:-100])  # pixel data cut short: the message quotes nothing of the header
    with pytest.raises(dicom.DicomError) as refused:
        dicom.read_film(broken)
    assert "Plantedname" not in str(refused.value) and PLANTED_ID not in str(refused.value)
