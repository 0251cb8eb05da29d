"""The render core (magickd.pipeline), in process: every output decoded with Pillow."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import pyvips
from PIL import Image, ImageCms, ImageStat

from cluster.config import load
from cluster.profiles import box_for, by_name
from magickd import pipeline, vips_setup
from magickd.errors import RenderFailure, RenderTimeout, TooLarge, UnsupportedFormat
from magickd.options import Limits, RenderOptions, parse_targets
from magickd.steps.scale_on_load import jpeg_shrink
from magickd.steps.sharpen import kernel, vector_exact

from .helpers import CORPUS
from .jpeg_craft import many_scan_jpeg
from .magickd_support import decode, has_metadata, mean_abs_diff, pillow_reference

vips_setup.configure()
CFG = load(with_secrets=False)
LIMITS = Limits.from_config(CFG.limits, CFG.magickd)
FORMATS = CORPUS / "formats"
IPHONE = FORMATS / "iphone_hdr_NO.jpg"  # 3264x2448, GPS in EXIF


def render(path, sizes=None, formats=None, limits=LIMITS, cfg=CFG):
    data = path.read_bytes() if hasattr(path, "read_bytes") else path
    outs = pipeline.render(data, RenderOptions(parse_targets(by_name(cfg.sizes), sizes, formats), limits))
    return {(o.target.name, o.target.fmt): o for o in outs}


@pytest.fixture(scope="module")
def iphone_all():
    return render(IPHONE)


def test_every_profile_has_its_exact_dimensions(iphone_all):
    expected = {"square": (75, 75), "thumb": (100, 75), "small": (240, 180), "medium": (500, 375),
                "large": (1024, 768), "xlarge": (2048, 1536)}
    assert {name for name, _ in iphone_all} == set(expected)
    for (name, fmt), out in iphone_all.items():
        im = decode(out.data)
        assert fmt == "jpeg" and im.format == "JPEG" and im.mode == "RGB"
        assert im.size == expected[name] == (out.width, out.height), name


@pytest.mark.parametrize("path", ["canon_hdr_NO.jpg", "xmp_test.jpg", "progressive_3.jpg", "gps.jpg"])
def test_dimensions_follow_the_geometry_for_other_aspects(path):
    src = FORMATS / path
    with Image.open(src) as im:
        from PIL import ImageOps
        w, h = ImageOps.exif_transpose(im).size
    for (name, _), out in render(src).items():
        box = box_for(CFG.size(name), w, h)
        assert decode(out.data).size == (box.out_w, box.out_h), name
        # long edge is the profile's box unless the photo is smaller (never upscaled)
        profile = CFG.size(name)
        if profile.crop == "none":
            assert max(out.width, out.height) == min(max(w, h), profile.width)


def test_small_originals_are_never_upscaled():
    outs = render(FORMATS / "hopper.jpg")  # 128x128
    assert decode(outs[("xlarge", "jpeg")].data).size == (128, 128)
    assert decode(outs[("small", "jpeg")].data).size == (128, 128)
    assert decode(outs[("thumb", "jpeg")].data).size == (100, 100)


def test_outputs_are_jpegs_as_their_profile_says_without_any_metadata(iphone_all):
    for key, out in iphone_all.items():
        im = decode(out.data)
        assert bool(im.info.get("progressive") or im.info.get("progression")) == CFG.size(key[0]).progressive, key
        assert has_metadata(out.data, im) == [], key


@pytest.mark.parametrize("name", ["gps.jpg", "DSCN0010.jpg", "exif_gps.jpg", "canon_hdr_NO.jpg", "xmp_test.jpg"])
def test_no_exif_gps_xmp_or_icc_in_any_format(name):
    outs = render(FORMATS / name, sizes=["small"], formats=["jpeg", "webp", "avif"])
    for key, out in outs.items():
        im = decode(out.data)
        assert has_metadata(out.data, im) == [], key


@pytest.mark.parametrize("kind", ["Landscape", "Portrait"])
def test_all_eight_orientations_come_out_upright(kind):
    """Each EXIF orientation renders (nearly) the same pixels as the orientation-1 file.

    The files differ only in the printed orientation digit, so a correct render is
    close to the reference while any wrong rotation or mirror is far from it.
    """
    ref = decode(render(CORPUS / "orientation" / f"{kind}_1.jpg", sizes=["medium"])[("medium", "jpeg")].data)
    assert ref.size == ((500, 333) if kind == "Landscape" else (333, 500))
    for n in range(0, 9):
        out = decode(render(CORPUS / "orientation" / f"{kind}_{n}.jpg", sizes=["medium"])[("medium", "jpeg")].data)
        assert out.size == ref.size, n
        right = mean_abs_diff(out, ref)
        wrong = min(mean_abs_diff(out, ref.transpose(t)) for t in (Image.Transpose.ROTATE_180,
                                                                    Image.Transpose.FLIP_LEFT_RIGHT,
                                                                    Image.Transpose.FLIP_TOP_BOTTOM))
        assert right < 6 and wrong > 2 * right, (n, right, wrong)


def test_rotated_camera_photo_comes_out_portrait():
    out = render(FORMATS / "canon_hdr_NO.jpg", sizes=["large"])[("large", "jpeg")]  # 2048x1536, Orientation 6
    assert decode(out.data).size == (768, 1024)


def _srgb_reference(path, size):
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        rgb = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        return rgb.resize(size, Image.Resampling.LANCZOS)


UNSHARPENED = CFG.replace(sizes=(dataclasses.replace(CFG.size("medium"), sharpen_amount=0.0),))


def test_cmyk_with_icc_profile_is_converted_to_srgb():
    """The CMYK (SWOP profile) original matches a LittleCMS conversion to sRGB (sharpening off)."""
    name = "cmyk-icc.jpg"
    out = decode(render(FORMATS / name, sizes=["medium"], cfg=UNSHARPENED)[("medium", "jpeg")].data)
    assert out.mode == "RGB" and "icc_profile" not in out.info
    reference = _srgb_reference(FORMATS / name, out.size)
    assert mean_abs_diff(out, reference) < 3
    with Image.open(FORMATS / name) as im:  # a naive CMYK->RGB inversion is far off
        naive = im.convert("RGB").resize(out.size)
    assert mean_abs_diff(out, naive) > mean_abs_diff(out, reference) + 3


def test_adobe_rgb_is_converted_to_srgb(tmp_path):
    """A real photo re-encoded in Adobe RGB (the profile of the Canon photo in the corpus) renders
    like the sRGB photo it came from; reading its numbers as sRGB would look washed out."""
    with Image.open(FORMATS / "xmp_test.jpg") as im:
        adobe_icc = im.info["icc_profile"]
    srgb = pillow_reference(IPHONE, (800, 600))
    adobe = ImageCms.profileToProfile(srgb, ImageCms.createProfile("sRGB"),
                                      ImageCms.ImageCmsProfile(io.BytesIO(adobe_icc)), outputMode="RGB")
    outs = {}
    for label, image, icc in (("srgb", srgb, None), ("adobe", adobe, adobe_icc), ("untagged", adobe, None)):
        path = tmp_path / f"{label}.jpg"
        image.save(path, quality=95, **({"icc_profile": icc} if icc else {}))
        outs[label] = decode(render(path, sizes=["medium"], cfg=UNSHARPENED)[("medium", "jpeg")].data)
        assert outs[label].size == (500, 375) and "icc_profile" not in outs[label].info
    converted = mean_abs_diff(outs["adobe"], outs["srgb"])
    naive = mean_abs_diff(outs["untagged"], outs["srgb"])
    assert converted < 3 and naive > converted + 1.5, (converted, naive)


@pytest.mark.parametrize("size, box, shrink", [
    ((6000, 4000), (2048, 1365), 2), ((6000, 4000), (1024, 683), 4), ((6000, 4000), (500, 333), 8),
    ((2560, 1600), (2048, 1280), 1), ((3264, 2448), (500, 375), 4), ((1536, 2048), (768, 1024), 2),
    ((100, 100), (75, 75), 1), ((80_000, 60_000), (500, 375), 8)])
def test_jpeg_shrink_on_load_is_the_largest_scale_that_still_covers_the_box(size, box, shrink):
    assert jpeg_shrink(*size, *box) == shrink


def test_a_dct_scaled_decode_renders_what_a_full_decode_would():
    """The 3264x2448 photo shrinks 4x while it loads for the 500 px size; unsharpened, that render
    matches Pillow's full decode + Lanczos as closely as libvips' own full-decode thumbnail does."""
    out = decode(render(IPHONE, sizes=["medium"], cfg=UNSHARPENED)[("medium", "jpeg")].data)
    reference = pillow_reference(IPHONE, out.size)
    full = pyvips.Image.thumbnail(str(IPHONE), 500, height=500)  # libvips keeps a 2x margin: shrink 2
    full = decode(full.jpegsave_buffer(Q=85, keep=0))
    assert out.size == full.size == (500, 375)
    assert mean_abs_diff(out, full) < 3
    assert mean_abs_diff(out, reference) < mean_abs_diff(full, reference) + 0.5


def test_cmyk_without_profile_and_sixteen_bit_and_grey_become_8bit_rgb():
    for name in ("pil_sample_cmyk.jpg", "basn6a16.png", "hopper_gray.jpg", "copyleft.png"):
        for (_, fmt), out in render(FORMATS / name, sizes=["small"], formats=["jpeg", "webp"]).items():
            im = decode(out.data)
            assert im.mode in (("RGB",) if fmt == "jpeg" else ("RGB", "RGBA")), (name, im.mode)


def test_alpha_is_flattened_to_white_for_jpeg_and_kept_for_webp_and_png():
    src = FORMATS / "transparent.png"
    outs = render(src, sizes=["small"], formats=["jpeg", "webp", "avif"])
    jpeg, webp, avif = (decode(outs[("small", f)].data) for f in ("jpeg", "webp", "avif"))
    assert jpeg.mode == "RGB" and webp.mode == "RGBA" and avif.mode == "RGBA"
    with Image.open(src) as im:
        alpha = im.convert("RGBA").getchannel("A").resize(jpeg.size, Image.Resampling.BOX)
    clear = [(x, y) for x in range(jpeg.width) for y in range(jpeg.height) if alpha.getpixel((x, y)) == 0]
    assert len(clear) > 100
    for x, y in clear[:: max(1, len(clear) // 200)]:
        assert min(jpeg.getpixel((x, y))) >= 235, (x, y, jpeg.getpixel((x, y)))
        assert webp.getpixel((x, y))[3] <= 8
    assert decode(render(src, sizes=["small"], formats=None)[("small", "jpeg")].data).mode == "RGB"


@pytest.mark.parametrize("name", ["rotating-squares.gif", "anim.webp", "apng_delay.png", "multipage.tiff"])
def test_animations_and_pages_render_their_first_frame_as_a_still(name):
    src = FORMATS / name
    outs = render(src, sizes=["small"], formats=["jpeg", "webp"])
    for (_, fmt), out in outs.items():
        im = decode(out.data)
        assert getattr(im, "n_frames", 1) == 1 and not getattr(im, "is_animated", False), fmt
    out = decode(outs[("small", "jpeg")].data)
    with Image.open(src) as im:
        im.seek(0)
        first = Image.new("RGB", im.size, "white")
        rgba = im.convert("RGBA")
        first.paste(rgba, mask=rgba.getchannel("A"))
        first = first.resize(out.size, Image.Resampling.LANCZOS)
    assert mean_abs_diff(out, first) < 12


@pytest.mark.parametrize("name", ["image.heic", "hopper.bmp", "hopper.avif", "lossless_simple.webp",
                                  "tiff_strip_ycbcr_jpeg_2x2_sampling.tif", "testimgari.jpg", "sugarshack.mpo"])
def test_every_accepted_format_renders(name):
    out = render(FORMATS / name, sizes=["thumb"])[("thumb", "jpeg")]
    im = decode(out.data)
    assert im.mode == "RGB" and max(im.size) <= 100
    reference = pillow_reference(FORMATS / name, im.size) if name != "image.heic" else None
    if reference is not None:
        assert mean_abs_diff(im, reference) < 20


def test_webp_and_avif_variants_of_any_profile(iphone_all):
    outs = render(IPHONE, sizes=["square", "medium"], formats=["webp", "avif"])
    for (name, fmt), out in outs.items():
        im = decode(out.data)
        assert im.format == {"webp": "WEBP", "avif": "AVIF"}[fmt]
        assert im.size == (out.width, out.height) == (iphone_all[(name, "jpeg")].width, iphone_all[(name, "jpeg")].height)


def test_square_is_a_smart_crop_of_the_photo():
    out = decode(render(IPHONE, sizes=["square"])[("square", "jpeg")].data)
    assert out.size == (75, 75)
    # the crop comes from the 100x75 cover resize: it matches one 75px window of it
    cover = pillow_reference(IPHONE, (100, 75))
    best = min(mean_abs_diff(out, cover.crop((x, 0, x + 75, 75))) for x in range(0, 26))
    assert best < 12


def test_sharpening_changes_pixels_and_amount_zero_disables_it():
    soft = dataclasses.replace(CFG.size("medium"), sharpen_amount=0.0)
    strong = dataclasses.replace(CFG.size("medium"), sharpen_amount=3.0, sharpen_sigma=1.0)
    outs = {}
    for label, profile in (("soft", soft), ("strong", strong)):
        cfg = CFG.replace(sizes=(profile,))
        outs[label] = decode(render(IPHONE, sizes=["medium"], cfg=cfg)[("medium", "jpeg")].data)
    reference = pillow_reference(IPHONE, outs["soft"].size)
    assert mean_abs_diff(outs["soft"], reference) < mean_abs_diff(outs["strong"], reference)
    assert mean_abs_diff(outs["soft"], outs["strong"]) > 1


SHARPEN_GRID = sorted({(p.sharpen_sigma, p.sharpen_amount) for p in CFG.sizes if p.sharpen_amount > 0}
                      | {(0.5, 1.0), (0.7, 0.6), (1.0, 3.0), (1.5, 4.0), (0.3, 0.2)})


@pytest.mark.parametrize("sigma,amount", SHARPEN_GRID)
def test_libvips_applies_the_sharpen_kernel_exactly(sigma, amount):
    """What libvips computes, not what the kernel says: its vector path requantises masks,
    which once brightened flat areas by 6% (and sent other masks down a 10x slower path)."""
    import random

    import pyvips

    taps, scale = kernel(sigma, amount)
    assert sum(map(sum, taps)) == scale and vector_exact([list(r) for r in taps], scale)
    mask = pyvips.Image.new_from_array([list(r) for r in taps], scale=scale)
    flat = (pyvips.Image.black(32, 32, bands=3) + [30, 128, 250]).cast("uchar")
    assert flat.conv(mask, precision="integer").getpoint(16, 16) == [30, 128, 250]
    rng = random.Random(7)
    size, r = 24, len(taps) // 2
    pixels = [[rng.randrange(256) for _ in range(size)] for _ in range(size)]
    image = pyvips.Image.new_from_array(pixels).cast("uchar")
    out = image.conv(mask, precision="integer")
    for y in range(r, size - r):
        for x in range(r, size - r):
            acc = sum(taps[j][i] * pixels[y + j - r][x + i - r] for j in range(len(taps)) for i in range(len(taps)))
            expected = min(255, max(0, math.floor(acc / scale + 0.5)))
            assert abs(out.getpoint(x, y)[0] - expected) <= 1, (x, y)


def test_flat_areas_keep_their_brightness_in_every_size():
    """A uniform photo renders uniform and as bright in every profile (sharpening included)."""
    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), (60, 140, 210)).save(buf, "JPEG", quality=95)
    source = decode(buf.getvalue()).getpixel((600, 450))
    for (name, _), out in render(buf.getvalue()).items():
        im = decode(out.data)
        means = [round(m) for m in ImageStat.Stat(im).mean]
        assert all(abs(m - s) <= 2 for m, s in zip(means, source)), (name, means, source)


@pytest.mark.parametrize("name,error", [
    ("16384x16384.png", TooLarge), ("65536-uint32-limit.png", TooLarge), ("giant-image.jpg", TooLarge),
    ("circle.svg", UnsupportedFormat), ("eps_named_as.jpg", UnsupportedFormat),
    ("text_file_renamed.jpg", UnsupportedFormat), ("psd-oob-write-overflow.psd", UnsupportedFormat),
])
def test_bombs_and_foreign_formats_are_refused_from_the_header(name, error):
    with pytest.raises(error) as info:
        render(CORPUS / "hostile" / name)
    assert info.value.status == 422


@pytest.mark.parametrize("name", ["truncated_jpeg.jpg", "truncated_10000b.jpg", "truncated_10000b.png",
                                  "truncated_image.png", "BlueSquare_truncated.jpg", "empty.jpg"])
def test_truncated_originals_are_errors_not_grey_thumbnails(name):
    with pytest.raises(RenderFailure) as info:
        render(CORPUS / "hostile" / name)
    assert info.value.status == 422 and info.value.code in ("undecodable", "unsupported_format")


def test_every_hostile_file_is_a_clean_4xx_or_a_clean_rendition():
    outcomes = {}
    for path in sorted((CORPUS / "hostile").iterdir()):
        try:
            outs = render(path, sizes=["thumb", "small"])
        except RenderFailure as exc:
            assert 400 <= exc.status < 500
            outcomes[path.name] = exc.code
            continue
        for out in outs.values():
            im = decode(out.data)
            assert has_metadata(out.data, im) == [] and max(im.size) <= 240
        outcomes[path.name] = "ok"
    assert sum(1 for v in outcomes.values() if v != "ok") >= 70


def test_every_original_ypfs_accepts_renders():
    """The upload check and the renderer agree: an acknowledged photo always gets its sizes."""
    from media.probe import ImageRejected, probe
    from media.sniff import sniff

    accepted = 0
    for path in sorted(p for p in CORPUS.glob("*/*") if p.suffix not in (".tsv", ".md")):
        data = path.read_bytes()
        fmt = sniff(data[:64])
        if fmt is None:
            continue
        try:
            probe(data, fmt, CFG.limits)
        except ImageRejected:
            continue
        accepted += 1
        outs = render(data, sizes=["thumb"])
        assert decode(outs[("thumb", "jpeg")].data).size[0] > 0, path.name
    assert accepted >= 60


def test_a_jpeg_scan_bomb_is_refused_from_its_markers():
    with pytest.raises(RenderFailure) as info:
        render(many_scan_jpeg(8000, 8000))
    assert (info.value.status, info.value.code) == (422, "too_many_scans")


def test_pixel_limit_comes_from_the_config():
    with pytest.raises(TooLarge):
        render(IPHONE, limits=dataclasses.replace(LIMITS, max_pixels=3264 * 2448 - 1))


def test_render_timeout_is_an_error_and_the_next_render_works():
    with pytest.raises(RenderTimeout) as info:
        render(IPHONE, formats=None, limits=dataclasses.replace(LIMITS, timeout=0.02))
    assert info.value.status == 422 and info.value.code == "render_timeout"
    assert decode(render(IPHONE, sizes=["thumb"])[("thumb", "jpeg")].data).size == (100, 75)


def test_unknown_size_or_unoffered_format_is_a_bad_request():
    with pytest.raises(RenderFailure) as info:
        parse_targets(by_name(CFG.sizes), ["huge"], None)
    assert info.value.status == 400
    with pytest.raises(RenderFailure) as info:
        parse_targets(by_name(CFG.sizes), ["small"], ["gif"])
    assert info.value.status == 400


def test_free_heap_pages_go_back_to_the_os_only_above_what_a_worker_keeps():
    """Holes in the heap (what a render's freed buffers leave) are returned by release_memory
    once RSS is over ``keep``; under it they are kept for the next render to reuse."""
    blocks = [bytes(50_000) for _ in range(2000)]  # ~100 MB from malloc's heap (under the mmap threshold)
    del blocks[::2]  # ~50 MB of holes that free() alone cannot hand back (live blocks above them)
    before = vips_setup.resident_bytes()
    assert before > 50 * 2**20
    assert vips_setup.release_memory(keep=before + 2**30) is False
    assert vips_setup.release_memory(keep=0) is True
    assert vips_setup.resident_bytes() < before - 30 * 2**20
    del blocks
