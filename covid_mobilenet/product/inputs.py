"""What ``predict`` and the web app read: image files found by their content (PNG, JPEG, DICOM), each decoded as
the training pipeline decodes it (a DICOM film rendered first, ``data/dicom.py``) and resized to the model's side;
and, on request, each written as the 8-bit PNG the model is given."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.dicom import DicomError, Film, is_dicom, read_film
from ..data.image_files import image_kind


def input_kind(path: Path) -> str | None:
    """"PNG", "JPEG" or "DICOM" by the file's content (a DICOM without its preamble by its name), or None."""
    with open(path, "rb") as file:
        head = file.read(132)
    return image_kind(head) or ("DICOM" if is_dicom(head, path) else None)


NOT_AN_IMAGE = "neither a PNG, a JPEG nor a DICOM file by its content"


def image_files(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files named, and the image files inside the named folders (recursively, sorted, recognised by their
    content: PNG, JPEG, DICOM); and [(input, why)] for every input or folder file that is none of these."""
    found, problems = [], []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            kinds = [(p, input_kind(p)) for p in inside]
            if not inside:
                problems.append((item, "folder holds no file"))
            found += [p for p, kind in kinds if kind]
            problems += [(str(p), NOT_AN_IMAGE) for p, kind in kinds if not kind]
        elif path.is_file():
            found.append(path)
        else:
            problems.append((item, "does not exist"))
    return found, problems


def read_input(path: Path):
    """(the image the model is given before resizing: uint8 height x width x 3; the DICOM film it came from, or
    None for a PNG or JPEG). ``DicomError``, ``ValueError`` or a TensorFlow error when it cannot be read."""
    import numpy as np
    import tensorflow as tf

    from ..data.pipeline import decode_file

    if input_kind(path) == "DICOM":
        film = read_film(path)
        return np.repeat(film.pixels[..., None], 3, axis=-1), film  # as decode_image repeats a gray PNG
    return decode_file(tf.constant(str(path))).numpy(), None


@dataclass
class Decoded:
    """The readable inputs at the model's side, in order, with what the user is told about each."""

    pixels: object  # uint8 N x side x side x 3
    paths: list[Path]
    failed: list[tuple[str, str]]  # (path, why) of the others
    films: list[Film | None]  # each readable input's DICOM facts, None for a PNG or JPEG
    rendered: list[Path] = field(default_factory=list)  # predict --rendered: the PNG written for each


def decode(paths: list[Path], image_size: int, rendered: Path | None = None) -> Decoded:
    """Every file decoded as in training (DICOM rendered first), resized to the model's side; with ``rendered``,
    each written there as the 8-bit PNG the model is given (gray when its channels agree), before resizing."""
    import numpy as np
    import tensorflow as tf

    from ..data.pipeline import fitted

    pixels, readable, failed, films, written = [], [], [], [], []
    names = iter(output_names(paths, ".png"))
    for path in paths:
        name = next(names)
        try:
            image, film = read_input(path)
        except DicomError as exc:
            failed.append((str(path), str(exc)))
            continue
        except (tf.errors.OpError, ValueError, OSError) as exc:
            failed.append((str(path), f"cannot be decoded as an image ({str(exc).strip().splitlines()[0][:200]})"))
            continue
        pixels.append(fitted(tf.constant(image), image_size).numpy())
        readable.append(path)
        films.append(film)
        if rendered is not None:
            written.append(write_png(image, Path(rendered) / name))
    batch = np.stack(pixels) if pixels else np.zeros((0, image_size, image_size, 3), np.uint8)
    return Decoded(batch, readable, failed, films, written)


def write_png(image, path: Path) -> Path:
    """An 8-bit image as PNG: grayscale when its three channels agree, RGB otherwise; no metadata."""
    import numpy as np
    from PIL import Image

    from ..common.files import atomic_path

    image = np.asarray(image)
    gray = bool((image == image[..., :1]).all())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        Image.fromarray(image[..., 0] if gray else image, "L" if gray else "RGB").save(temporary, format="PNG")
    return path


def output_names(paths: list[Path], suffix: str) -> list[str]:
    """One file name per input: ``<stem><suffix>``, or ``<stem>.<n><suffix>`` when an earlier input took that name
    (folders searched recursively often hold several ``1.png``)."""
    taken, names = set(), []
    for path in paths:
        name, number = f"{path.stem}{suffix}", 1
        while name in taken:
            number += 1
            name = f"{path.stem}.{number}{suffix}"
        taken.add(name)
        names.append(name)
    return names
