"""The decode policy, for the upload check and the render pool alike: which library opens
which format, how strictly, and within which pixel and frame budgets.

- **Library**: the format table says (media.formats ``library``). libvips reads JPEG,
  PNG, GIF, WebP, TIFF and AVIF; the pyvips binary wheel has no BMP loader and no HEVC
  decoder, so BMP and HEIC are decoded by Pillow (HEIC through pillow-heif), and so are
  AVIF image sequences, which libheif in the wheel refuses (``pillow_fallback``; the
  render pool renders their first frame, as for every animated original). Each open
  names its one format: neither libvips' nor Pillow's content sniffing ever picks a
  loader.
- **Strictness**: libvips decodes with ``fail_on=warning`` (``STRICT``; it otherwise
  fills truncated data with grey), and Pillow turns decompression-bomb warnings into
  errors.
- **Budgets**: the declared width x height x frames must stay within
  ``limits.max_pixels``, and the frames within ``MAX_PAGES``, checked from the header
  before any pixel is decoded (``check_budget``). The render pool decodes the first
  frame only, so a photo within the budget always fits a render.
"""

from __future__ import annotations

import io
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import pyvips

from .errors import ImageRejected
from .formats import FORMATS

STRICT = "warning"  # libvips fail_on: any warning (truncated, corrupt data) is an error
MAX_PAGES = 1000

#: Pillow format id -> our format, for what the render pool decodes with Pillow
PILLOW_DECODED: dict[str, str] = {
    f.pillow[0]: f.name for f in FORMATS.values() if f.library == "pillow" or f.pillow_fallback}
#: Pillow mode -> (mode to convert to, bands, libvips interpretation)
_MODES = {"RGB": ("RGB", 3, "srgb"), "RGBA": ("RGBA", 4, "srgb"), "L": ("L", 1, "b-w"), "LA": ("LA", 2, "b-w")}
_heif_registered = False


def stop_at(image: pyvips.Image, at: float, clock: Callable[[], float] = time.monotonic) -> pyvips.Image:
    """Make libvips itself abandon evaluating ``image`` once ``clock()`` passes ``at``.

    libvips evaluates lazily, so one call (``avg``, ``copy_memory``, a save) may run the
    whole decode; a check between calls cannot stop it, the eval signal can.
    """

    def on_eval(img: pyvips.Image, _progress) -> None:
        if clock() >= at:
            img.set_kill(True)

    image.set_progress(True)
    image.signal_connect("eval", on_eval)
    return image


#: above this many pixels the upload check decodes a JPEG DCT-scaled to 1/8: libjpeg still
#: reads and checks every entropy-coded byte, for about half the cost of a full decode
SCALED_CHECK_PIXELS = 4_000_000


@contextmanager
def killed_after(source: pyvips.Image, seconds: float) -> Iterator[None]:
    """Kill ``source`` (a loader's image) ``seconds`` from now, for the evaluation inside the
    block; every image computed from it then fails at once ("killed").

    ``stop_at`` listens to the evaluated image's eval signal, which libvips emits per work
    unit of that image: a small result (a box shrink to a preview) is one unit, so it would
    never fire. A timer on the source needs no signal; the decode runs with the GIL released.
    """
    timer = threading.Timer(max(0.0, seconds), source.set_kill, (True,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def check_shrink(fmt: str, width: int, height: int) -> int:
    """The shrink-on-load factor of the upload check's decode (1: every pixel at full size)."""
    return 8 if fmt == "jpeg" and width * height > SCALED_CHECK_PIXELS else 1


def check_budget(width: int, height: int, pages: int, max_pixels: int) -> None:
    """ImageRejected (422) unless the declared size fits the pixel and frame budgets."""
    pages = max(1, pages)
    if width <= 0 or height <= 0:
        raise ImageRejected(422, "undecodable", "the image declares no pixels")
    if pages > MAX_PAGES:
        raise ImageRejected(422, "too_many_pages", f"the image declares {pages} frames/pages; the limit is {MAX_PAGES}")
    if width * height * pages > max_pixels:
        frames = f" x {pages} frames" if pages > 1 else ""
        raise ImageRejected(
            422, "too_many_pixels",
            f"the image declares {width}x{height}{frames} = {width * height * pages / 1e6:.1f} MP; "
            f"the limit is {max_pixels / 1e6:g} MP",
        )


def register_heif() -> None:
    """Let Pillow open HEIC (pillow-heif), once per process."""
    global _heif_registered
    if not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True


def decode_with_pillow(data: bytes, fmt: str) -> pyvips.Image:
    """The first frame of an original of ``fmt``, upright, 8-bit, as a pyvips image carrying the
    original's ICC profile; ImageRejected (422 undecodable) if Pillow cannot decode it."""
    from PIL import Image, ImageOps

    register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS[fmt].pillow)) as im:
                im.load()
                icc = im.info.get("icc_profile")
                upright = ImageOps.exif_transpose(im)
                mode = upright.mode if upright.mode in _MODES else ("RGBA" if "A" in upright.getbands() else "RGB")
                pixels = upright.convert(_MODES[mode][0]) if upright.mode != mode else upright
                width, height = pixels.size
                raw = pixels.tobytes()
    except Exception as exc:  # Pillow raises many types for bad input (see ../shared/corpus/README.md)
        raise ImageRejected(422, "undecodable", f"cannot decode the original: {exc.__class__.__name__}: {exc}") from None
    _, bands, interpretation = _MODES[mode]
    image = pyvips.Image.new_from_memory(raw, width, height, bands, "uchar").copy(interpretation=interpretation)
    if icc:
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return image
