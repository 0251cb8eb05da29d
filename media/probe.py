"""Validate an upload before it is stored: declared size first, then a strict, bounded decode.

Order matters, and every step is bounded:

1. the format is already known from magic bytes (media.sniff), so each format is
   opened only by its own loader (never libvips' or Pillow's content sniffing);
2. the header is read and the declared pixels checked against the limit before
   any pixel is decoded (decompression bombs stop here);
3. a strict decode reads every byte of image data, killed past a time limit; what it
   decodes is box-shrunk into the placeholder's preview (media.placeholders), so the
   upload decodes the image once, not once more for its placeholder;
4. EXIF is read for taken-at and camera only; GPS is never read out.

libvips decodes with ``fail_on=warning`` (it otherwise fills truncated data
silently), bounded by a deadline. JPEG, the bulk of uploads, is
decoded once, DCT-scaled to 1/8 when large (every entropy-coded byte is still
read and checked, for about half the cost of a full decode), after a walk of
its markers (media.jpeg) that refuses scan bombs and a missing end of image,
the one damage in the corpus libjpeg lets through. That walk costs under a
millisecond where a second, Pillow decode cost as much as the first.

PNG and GIF are cross-checked by Pillow's stricter chunk and LZW parsers.
Which library opens which format, the strictness and the pixel and frame budgets
are media.decode's (the render pool applies the same), the loaders media.formats'.
"""

from __future__ import annotations

import io
import mmap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyvips

from cluster.config import LimitsSection
from cluster.pool import background

from .decode import MAX_PAGES, STRICT, check_budget, check_shrink, killed_after, register_heif, stop_at
from .errors import ImageRejected
from .formats import FORMATS
from .jpeg import JpegStructureError, count_scans
from .placeholders import preview

__all__ = ["ImageRejected", "MAX_PAGES", "ProbeResult", "probe", "strict_check", "check_gif_structure", "read_exif"]


@dataclass(frozen=True)
class ProbeResult:
    format: str
    width: int   # as displayed: EXIF orientation applied
    height: int
    pages: int
    taken_at: str | None = None
    camera: str | None = None
    exposure: str | None = None  # "1/125 s · f/2.8 · ISO 100 · 35 mm": what the photo page shows
    #: a small in-memory image the check's decode made on its way (media.placeholders.preview),
    #: so the placeholder needs no second decode; None for Pillow's formats and animations
    preview: pyvips.Image | None = field(default=None, compare=False, repr=False)


Source = str | Path | bytes


def probe(src: Source, fmt: str, limits: LimitsSection) -> ProbeResult:
    """Check and describe an image (a file path, or the bytes of a small upload) already
    sniffed as ``fmt``; ImageRejected if unfit."""
    path = src if isinstance(src, bytes) else str(src)
    known = FORMATS.get(fmt)
    if known is None or not known.original:
        raise ImageRejected(415, "unsupported_format", f"format {fmt!r} is not accepted")
    small = None
    if known.library == "vips":
        width, height, pages, orientation, small = _probe_vips(path, fmt, limits)
    else:
        width, height, pages, orientation = _probe_pillow(path, fmt, limits)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    taken_at, camera, exposure = read_exif(path, fmt)
    return ProbeResult(fmt, width, height, pages, taken_at, camera, exposure, small)


def strict_check(data: bytes, fmt: str, limits: LimitsSection) -> None:
    """The parts of the acceptance check that libvips' own decode does not repeat: Pillow's
    stricter PNG and GIF parsers and the GIF block walk. The render pool runs this on every
    original so that it refuses exactly what an upload would have (ImageRejected)."""
    if fmt in _PILLOW_CROSS_CHECK:
        _pillow_cross_check(data, fmt, limits.decode_timeout)
    if fmt == "gif":
        check_gif_structure(data, limits)


def _open(src: str | bytes):
    """A file-like for Pillow from a path or bytes."""
    return io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")


def _probe_vips(path: str | bytes, fmt: str, limits: LimitsSection) -> tuple[int, int, int, int, pyvips.Image | None]:
    name = FORMATS[fmt].vips_loaders[0] + ("_buffer" if isinstance(path, bytes) else "")
    loader = getattr(pyvips.Image, name)
    try:
        header = loader(path, access="sequential")  # reads the header only
        width, height = header.width, header.height
        pages = header.get("n-pages") if header.get_typeof("n-pages") else 1
        orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    except pyvips.Error as exc:
        raise ImageRejected(422, "undecodable", f"unreadable {fmt} header: {_first_line(exc)}") from None
    stacked = FORMATS[fmt].stacked_frames
    if stacked and header.get_typeof("page-height"):
        height = header.get("page-height")
    check_budget(width, height, pages, limits.max_pixels)

    opts: dict = {"access": "sequential", "fail_on": STRICT}
    if fmt == "jpeg":
        _check_jpeg_structure(path)
    if (shrink := check_shrink(fmt, width, height)) > 1:
        opts["shrink"] = shrink  # the whole entropy stream is still read and checked
    animated = stacked and pages > 1
    if animated:
        opts["n"] = -1  # every frame (the whole animation fits the pixel budget)
    # the two decoders release the GIL: the cross-check runs beside the libvips decode
    cross_check = (background().submit(_pillow_cross_check, path, fmt, limits.decode_timeout)
                   if fmt in _PILLOW_CROSS_CHECK else None)
    small = None
    try:
        image = loader(path, **opts)
        if animated:  # the placeholder shows the first frame: made apart (media.placeholders)
            _decode_with_deadline(image, limits.decode_timeout)
        else:  # every pixel goes through the decoder into the placeholder's preview
            small = _preview_with_deadline(image, limits.decode_timeout)
    except pyvips.Error as exc:
        msg = _first_line(exc)
        if "killed" in msg or "cancel" in msg:
            raise ImageRejected(422, "decode_timeout", f"decoding took longer than {limits.decode_timeout:g}s") from None
        raise ImageRejected(422, "undecodable", f"damaged or truncated {fmt} data: {msg}") from None
    finally:
        if cross_check is not None:
            cross_check.result()  # re-raises its ImageRejected; bounded by its own deadline
    if fmt == "gif":
        check_gif_structure(path, limits)
    return width, height, pages, orientation if isinstance(orientation, int) else 1, small


def _check_jpeg_structure(path: str | bytes) -> None:
    try:
        if isinstance(path, bytes):
            count_scans(path)
        else:
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                count_scans(data)
    except JpegStructureError as exc:
        raise ImageRejected(422, exc.code, str(exc)) from None
    except ValueError:  # mmap of an empty file
        raise ImageRejected(422, "undecodable", "the JPEG is empty") from None


#: Pillow's parsers are stricter than libpng on some damage: bad ancillary-chunk
#: CRCs, truncated pHYs/cHRM chunks, text-chunk bombs. PNG uses verify() (walks
#: every chunk and CRC without allocating pixels); GIF a decode of the first frame
#: (1 byte a pixel), which sees truncated LZW data.
_PILLOW_CROSS_CHECK = {"png", "gif"}


class DecodeTimeout(Exception):
    """Raised from inside a Pillow decode (by its input stream) once its deadline has passed."""


class _DeadlineReader:
    """A file whose reads fail past a deadline: Pillow decodes in slices between reads,
    so this bounds a decode that cannot otherwise be interrupted."""

    def __init__(self, fh, seconds: float):
        self._fh, self._deadline = fh, time.monotonic() + seconds

    def read(self, *args):
        if time.monotonic() > self._deadline:
            raise DecodeTimeout
        return self._fh.read(*args)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _pillow_cross_check(path: str | bytes, fmt: str, timeout: float) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # the declared pixels were checked against our own limit already
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path) as fh, Image.open(_DeadlineReader(fh, timeout), formats=list(FORMATS[fmt].pillow)) as im:
                if fmt == "png":
                    im.verify()
                else:
                    im.load()
    except DecodeTimeout:
        raise ImageRejected(422, "decode_timeout", f"decoding took longer than {timeout:g}s") from None
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, IndexError, warnings...
        raise ImageRejected(422, "undecodable", f"damaged {fmt} data: {type(exc).__name__}: {exc}"[:300]) from None


def check_gif_structure(path: str | bytes, limits: LimitsSection) -> None:
    """Walk a GIF's blocks: every frame complete and inside the logical screen.

    GIF decoders clip frames to the canvas and stop quietly at truncated data, so
    a frame declaring gigapixel extents, or a file cut inside a frame, gets past
    them; this walk refuses both without decoding any LZW data.
    """
    data = path if isinstance(path, bytes) else Path(path).read_bytes()

    def bad(why: str) -> ImageRejected:
        return ImageRejected(422, "undecodable", f"damaged gif: {why}")

    if len(data) < 13:
        raise bad("too short")
    screen_w, screen_h = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    frames = 0

    def skip_sub_blocks(pos: int) -> int:
        while True:
            if pos >= len(data):
                raise bad("data ends inside a block")
            size = data[pos]
            pos += 1 + size
            if size == 0:
                return pos

    while pos < len(data):
        marker = data[pos]
        if marker == 0x3B:  # trailer
            break
        if marker == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif marker == 0x2C:  # image descriptor
            if pos + 10 > len(data):
                raise bad("data ends inside a frame header")
            left, top, w, h = (int.from_bytes(data[pos + i:pos + i + 2], "little") for i in (1, 3, 5, 7))
            if w == 0 or h == 0 or left + w > screen_w or top + h > screen_h:
                raise ImageRejected(422, "too_many_pixels" if w * h > limits.max_pixels else "undecodable",
                                    f"gif frame {frames} ({w}x{h} at {left},{top}) lies outside the {screen_w}x{screen_h} canvas")
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = skip_sub_blocks(pos + 1)  # LZW minimum code size, then the data
            frames += 1
            if frames > MAX_PAGES:
                raise ImageRejected(422, "too_many_pages", f"more than {MAX_PAGES} frames")
        else:
            raise bad(f"unknown block 0x{marker:02x} at byte {pos}")
    if frames == 0:
        raise bad("no frames")


def _decode_with_deadline(image: pyvips.Image, seconds: float) -> None:
    stop_at(image, time.monotonic() + seconds)
    image.avg()  # forces every pixel through the decoder


def _preview_with_deadline(image: pyvips.Image, seconds: float) -> pyvips.Image:
    """The placeholder's preview of ``image``, in memory: making it pulls every pixel through
    the decoder (a box shrink reads them all), as ``_decode_with_deadline`` does."""
    with killed_after(image, seconds):
        return preview(image).copy_memory()


def _probe_pillow(path: str | bytes, fmt: str, limits: LimitsSection) -> tuple[int, int, int, int]:
    from PIL import Image

    if fmt == "heif":
        register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(path) as fh, Image.open(fh, formats=list(FORMATS[fmt].pillow)) as im:
                width, height = im.size
                pages = getattr(im, "n_frames", 1)
                check_budget(width, height, pages, limits.max_pixels)
                orientation = im.getexif().get(0x0112, 1)
                im.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(422, "too_many_pixels", f"the image declares more than {limits.max_pixels / 1e6:g} MP") from None
    except Exception as exc:  # Pillow raises OSError, ValueError, TypeError, struct.error, SyntaxError...
        raise ImageRejected(422, "undecodable", f"damaged or truncated {fmt} data: {type(exc).__name__}: {exc}"[:300]) from None
    return width, height, pages, orientation if isinstance(orientation, int) else 1


_EXIF_FORMATS = {"jpeg", "tiff", "webp", "png", "heif", "avif"}  # where we look for EXIF at all
_EXIF_IFD, _DATETIME_ORIGINAL, _DATETIME, _MAKE, _MODEL = 0x8769, 0x9003, 0x0132, 0x010F, 0x0110
_EXPOSURE_TIME, _F_NUMBER, _ISO, _FOCAL_LENGTH = 0x829A, 0x829D, 0x8827, 0x920A


def read_exif(path: str | bytes, fmt: str) -> tuple[str | None, str | None, str | None]:
    """(taken_at as ISO 8601, camera make + model, exposure), each None when absent or unreadable."""
    if fmt not in _EXIF_FORMATS:
        return None, None, None
    from PIL import Image

    if fmt == "heif":
        register_heif()
    try:
        with _open(path) as fh, Image.open(fh, formats=list(FORMATS[fmt].pillow)) as im:
            exif = im.getexif()
            ifd = exif.get_ifd(_EXIF_IFD)
            raw_date = ifd.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
            make, model = exif.get(_MAKE), exif.get(_MODEL)
            exposure = _exposure(ifd)
    except Exception:  # damaged metadata never fails an upload whose pixels are fine
        return None, None, None
    return _exif_date(raw_date), _camera(make, model), exposure


def _number(value) -> float | None:
    """An EXIF rational or integer as a float; None when absent, zero-divided or absurd."""
    try:
        if isinstance(value, tuple):
            value = value[0] / value[1]
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    return number if 0 < number < 1e6 else None


def _exposure(ifd) -> str | None:
    """Shutter, aperture, ISO and focal length, as a photographer writes them."""
    parts = []
    t = _number(ifd.get(_EXPOSURE_TIME))
    if t is not None:
        parts.append(f"1/{round(1 / t)} s" if t < 0.5 else f"{t:g} s")
    f = _number(ifd.get(_F_NUMBER))
    if f is not None:
        parts.append(f"f/{f:.1f}".replace(".0", ""))
    iso = ifd.get(_ISO)
    iso = _number(iso[0] if isinstance(iso, tuple) and iso and not isinstance(iso[0], tuple) else iso)
    if iso is not None:
        parts.append(f"ISO {int(iso)}")
    mm = _number(ifd.get(_FOCAL_LENGTH))
    if mm is not None:
        parts.append(f"{round(mm, 1):g} mm")
    return " · ".join(parts) or None


def _clean(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return "".join(ch for ch in str(value) if ch.isprintable()).strip().strip("\x00")[:80]


def _exif_date(raw) -> str | None:
    text = _clean(raw) if raw is not None else ""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.strptime(text[:19], "%Y:%m:%d %H:%M:%S"))
    except ValueError:
        return None


def _camera(make, model) -> str | None:
    make_s, model_s = (_clean(make) if make else ""), (_clean(model) if model else "")
    if model_s.lower().startswith(make_s.lower()):
        make_s = ""  # "Canon" + "Canon PowerShot" -> "Canon PowerShot"
    return " ".join(p for p in (make_s, model_s) if p) or None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:200]
