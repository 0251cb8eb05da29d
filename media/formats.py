"""The one format table: every image format the cluster takes in or writes out, and what each
part of the system needs to know about it.

Everything else is derived from ``FORMATS``: the upload allow-list and the magic bytes
(media.sniff), the loader an original is opened with (media.probe, media.decode, magickd),
the Pillow plugin that reads its EXIF or decodes it, and the MIME type and file extension
of its storage keys and URLs (storage.keys, ypws, magickd). A format is added here, once.

``cluster.config.OUTPUT_FORMATS`` (the formats a size profile may name) lists the
``output`` formats again, because cluster/ imports no role code; tests/test_media_formats.py
holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

Signature = tuple[tuple[int, bytes], ...]  # every (offset, bytes) part must match


@dataclass(frozen=True)
class Format:
    name: str                    # what the rest of the system calls it (records, keys, config)
    mime: str
    ext: str                     # extension of its storage keys and URLs
    library: str                 # who decodes an original: "vips" or "pillow" (media.decode)
    vips_loaders: tuple[str, ...] = ()   # libvips loaders that read it; the first opens originals
    pillow: tuple[str, ...] = ()         # Pillow format ids that read it (EXIF, checks, decode)
    magic: tuple[Signature, ...] = ()    # any one signature identifies it (media.sniff)
    brands: frozenset[bytes] = frozenset()  # ISO-BMFF ``ftyp`` brands (HEIF family)
    original: bool = True        # accepted as an upload
    output: bool = False         # a rendition may be encoded in it
    stacked_frames: bool = False  # libvips loads every frame stacked in one tall image (page-height)
    pillow_fallback: bool = False  # Pillow decodes what libvips here cannot (AVIF sequences)


_DIB_HEADERS = (12, 40, 64, 108, 124)  # BMP info-header sizes: random "BM" text is not a BMP

FORMATS: dict[str, Format] = {f.name: f for f in (
    # an Ultra HDR JPEG (a gain map in an MPF secondary image) is sniffed by libvips as uhdrload;
    # an original is still opened with jpegload, its gain map by media.gainmap
    Format("jpeg", "image/jpeg", "jpg", "vips", ("jpegload", "uhdrload"), ("JPEG", "MPO"),
           magic=(((0, b"\xff\xd8\xff"),),), output=True),
    Format("png", "image/png", "png", "vips", ("pngload",), ("PNG",),
           magic=(((0, b"\x89PNG\r\n\x1a\n"),),), output=True),
    Format("gif", "image/gif", "gif", "vips", ("gifload",), ("GIF",),
           magic=(((0, b"GIF87a"),), ((0, b"GIF89a"),)), stacked_frames=True),
    Format("webp", "image/webp", "webp", "vips", ("webpload",), ("WEBP",),
           magic=(((0, b"RIFF"), (8, b"WEBP")),), output=True, stacked_frames=True),
    Format("tiff", "image/tiff", "tif", "vips", ("tiffload",), ("TIFF",),
           magic=(((0, b"II*\x00"),), ((0, b"MM\x00*"),))),
    Format("avif", "image/avif", "avif", "vips", ("heifload",), ("AVIF",),
           brands=frozenset({b"avif", b"avis"}), output=True, pillow_fallback=True),
    # HEIC: the pyvips binary wheel has no HEVC decoder; pillow-heif has
    Format("heif", "image/heic", "heic", "pillow", (), ("HEIF",),
           brands=frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})),
    # BMP: the pyvips binary wheel has no BMP loader
    Format("bmp", "image/bmp", "bmp", "pillow", (), ("BMP",),
           magic=tuple(((0, b"BM"), (14, n.to_bytes(4, "little"))) for n in _DIB_HEADERS)),
)}

#: formats accepted as uploads, in table order
SUPPORTED: tuple[str, ...] = tuple(f.name for f in FORMATS.values() if f.original)
#: formats a rendition may be encoded in
OUTPUT: tuple[str, ...] = tuple(f.name for f in FORMATS.values() if f.output)
EXTENSIONS: dict[str, str] = {f.name: f.ext for f in FORMATS.values()}
FORMAT_BY_EXT: dict[str, str] = {f.ext: f.name for f in FORMATS.values()} | {"jpeg": "jpeg"}
CONTENT_TYPES: dict[str, str] = {f.name: f.mime for f in FORMATS.values()}
#: libvips loader name (as ``vips-loader`` reports it, ``_buffer`` included) -> format
BY_VIPS_LOADER: dict[str, str] = {
    f"{loader}_buffer": f.name for f in FORMATS.values() for loader in f.vips_loaders}


def pillow_ids(fmt: str) -> list[str]:
    """The Pillow format ids that may open a file of ``fmt`` (an allow-list for Image.open)."""
    return list(FORMATS[fmt].pillow)
