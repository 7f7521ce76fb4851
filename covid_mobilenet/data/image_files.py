"""What the training decoder accepts, checked without TensorFlow: a whole PNG or JPEG file.

The scan decodes every image with Pillow, but training decodes with TensorFlow (libpng, libjpeg), which is
stricter in some ways and more lenient in others. So that a file the scan accepts never fails in training
(nor the other way round), the scan first applies the decoder's own rules to the file's structure:

- PNG: every critical chunk (IHDR, PLTE, IDAT, IEND) whole and with its CRC right, no critical chunk the
  decoder does not know, and an IEND chunk; a damaged ancillary chunk (text, gamma, ...) is ignored, as libpng
  ignores it. Pillow then decodes the critical chunks alone.
- JPEG: an end-of-image marker after the last scan (libjpeg refuses a file cut before it; bytes after it are
  ignored).
- Any other content, whatever its extension, is refused (``data.pipeline.load_image`` refuses it too).

``decoded_picture`` gives the pixels the training decoder sees, for what reads images without TensorFlow (the
near-duplicate fingerprints): the critical chunks alone, and 16-bit samples cut to their high byte as libpng does
for an 8-bit read (``png_set_strip_16``), never saturated by Pillow's ``convert("L")``.
"""
from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8\xff"
KNOWN_CRITICAL_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


def image_kind(data: bytes) -> str | None:
    """"PNG" or "JPEG" by the file's first bytes (its content, not its name); None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_START):
        return "JPEG"
    return None


def decodable_bytes(data: bytes) -> tuple[bytes | None, str | None]:
    """(the bytes Pillow should decode, None), or (None, why the training decoder would refuse the file)."""
    kind = image_kind(data)
    if kind == "PNG":
        return _png_critical_chunks(data)
    if kind == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or b"\xff\xd9" not in data[last_scan:]:
            return None, "JPEG without its end-of-image marker (cut short?); the training decoder refuses it"
        return data, None
    return None, "neither a PNG nor a JPEG file by its content"


def _png_critical_chunks(data: bytes) -> tuple[bytes | None, str | None]:
    kept, position = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while position < len(data):
        if position + 12 > len(data):
            return None, "PNG cut short inside a chunk; the training decoder refuses it"
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if end > len(data):
            return None, f"PNG cut short in its {kind.decode('latin-1')} chunk; the training decoder refuses it"
        if not kind[0] & 0x20:  # an upper-case first letter: a critical chunk, which every decoder must understand
            if kind not in KNOWN_CRITICAL_CHUNKS:
                return None, f"PNG with an unknown critical chunk {kind.decode('latin-1')!r}; the training decoder refuses it"
            if zlib.crc32(data[position + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
                return None, f"PNG whose {kind.decode('latin-1')} chunk is damaged (CRC); the training decoder refuses it"
            kept.append(data[position:end])
        position = end
        if kind == b"IEND":
            return b"".join(kept), None
    return None, "PNG without its IEND chunk (cut short?); the training decoder refuses it"


SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # Pillow's one-channel modes of a 16-bit PNG


class UnreadableImage(ValueError):
    """A file the training decoder would refuse; the message says why."""


def decoded_picture(data: bytes) -> Image.Image:
    """The image the training decoder reads from a file's bytes, decoded, as an 8-bit Pillow image ("L", "LA",
    "RGB", "RGBA" or "P" as stored; 16-bit gray scaled as training scales it). ``UnreadableImage`` otherwise."""
    readable, problem = decodable_bytes(data)
    if problem:
        raise UnreadableImage(problem)
    picture = Image.open(io.BytesIO(readable))
    picture.load()
    if picture.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(picture).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
    return picture
