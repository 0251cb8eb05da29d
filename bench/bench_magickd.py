"""magickd benchmark: every configured size from one original, per core, against the usual alternatives.

Photos: the corpus has no real 15/24 MP photo, so the iPhone 6 photo of the corpus
(3264x2448) is cropped to 3:2 and resized with libvips (lanczos3) to about 4, 15
and 24 MP (the 4 and 15 MP ones are real pixels scaled, the 24 MP one is upscaled,
so it is smoother than a camera file and encodes a little faster). Each is
saved twice, as a baseline and as a progressive JPEG (q90), and the two are
reported apart: progressive sources decode several times slower.

Contenders, each making all configured sizes (default formats: progressive JPEG
q85, the square cropped) from one original on one core:
- magickd: the render core (magickd.pipeline), in process, libvips with 1 thread;
- floor: libvips shrink-on-load decode to the largest size's scale, into memory,
  and nothing else (the least any shrink-on-load renderer has to do);
- vipsthumbnail: the libvips CLI, one invocation per size (no sharpening);
- pillow: best practice: draft (DCT scaling) + reducing_gap + UnsharpMask, sizes
  cascaded from the drafted image, progressive optimized JPEG;
- imagemagick: `convert -define jpeg:size -thumbnail -unsharp`, one invocation per size;
- thumbor: its HTTP server (PIL engine, one process) if it installs from PyPI.
Tools missing on the box are installed when we are root (Debian imagemagick and
libvips-tools; thumbor into a throwaway venv under /tmp), else skipped with a note.

Also measured: magickd with every core busy (a process per core), and the peak
RSS of a worker process rendering the 24 MP photo (MALLOC_ARENA_MAX=2).
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from bench.results import record, table

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / "shared" / "corpus" / "formats" / "iphone_hdr_NO.jpg"  # the shared corpus, beside the repo
CLASSES = {"4MP": (2560, 1600), "15MP": (4800, 3200), "24MP": (6000, 4000)}
THUMBOR_VENV = Path("/tmp/yupoo-bench-thumbor")
IM_CONVERT = "/usr/bin/convert"  # Debian's ImageMagick 6 (a PATH `convert` may be something else)
BUDGET = {"4MP": 5, "15MP": 3, "24MP": 3}  # timed runs per contender and photo (median reported)


# -- setup ----------------------------------------------------------------------------------
def _apt_install(packages: list[str]) -> str:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root: cannot install " + " ".join(packages)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env,
                       check=True, capture_output=True, timeout=600)
        return ""
    except (subprocess.SubprocessError, OSError) as exc:
        return f"apt-get install {' '.join(packages)} failed: {exc}"


def find_vipsthumbnail() -> tuple[str | None, str]:
    local = Path(sys.executable).with_name("vipsthumbnail")
    for candidate in (str(local) if local.exists() else None, shutil.which("vipsthumbnail")):
        if candidate:
            return candidate, ""
    note = _apt_install(["libvips-tools"])
    return shutil.which("vipsthumbnail"), note or "installed Debian libvips-tools (the pyvips wheel has no CLI)"


def find_imagemagick() -> tuple[str | None, str]:
    if not os.path.exists(IM_CONVERT):
        note = _apt_install(["imagemagick"])
        if note:
            return None, note
    return (IM_CONVERT, "") if os.path.exists(IM_CONVERT) else (None, "imagemagick missing")


def find_thumbor() -> tuple[str | None, str]:
    exe = THUMBOR_VENV / "bin" / "thumbor"
    if not exe.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(THUMBOR_VENV)], check=True, capture_output=True,
                           timeout=120)
            subprocess.run([str(THUMBOR_VENV / "bin" / "pip"), "install", "-q", "thumbor"], check=True,
                           capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"thumbor did not install from PyPI ({exc.__class__.__name__}); skipped"
    return (str(exe), "") if exe.exists() else (None, "thumbor not available; skipped")


def make_photos(folder: Path) -> dict[str, dict[str, Path]]:
    import pyvips

    src = pyvips.Image.new_from_file(str(SOURCE))
    photos: dict[str, dict[str, Path]] = {}
    for label, (w, h) in CLASSES.items():
        crop = src.crop(0, (src.height - src.width * h // w) // 2, src.width, src.width * h // w)
        big = crop.resize(w / crop.width, vscale=h / crop.height, kernel="lanczos3")
        photos[label] = {}
        for kind, interlace in (("baseline", False), ("progressive", True)):
            path = folder / f"{label}-{kind}.jpg"
            # 4:2:0 chroma like camera files (libvips would not subsample at Q90 unless told)
            big.jpegsave(str(path), Q=90, interlace=interlace, optimize_coding=True, subsample_mode="on")
            photos[label][kind] = path
    return photos


# -- contenders -----------------------------------------------------------------------------
def magickd_core(cfg) -> Callable[[Path], None]:
    from magickd import pipeline
    from magickd.options import Limits, RenderOptions, parse_targets

    options = RenderOptions(parse_targets(cfg, None, None), Limits.from_config(cfg.limits, cfg.magickd))
    return lambda path: pipeline.render(path.read_bytes(), options)


def decode_floor(cfg) -> Callable[[Path], None]:
    import pyvips

    largest = max(max(p.width, p.height) for p in cfg.sizes)

    def run(path: Path) -> None:
        header = pyvips.Image.new_from_file(str(path))
        shrink = 1
        while shrink < 8 and max(header.width, header.height) // (shrink * 2) >= largest:
            shrink *= 2
        pyvips.Image.new_from_buffer(path.read_bytes(), "", shrink=shrink, access="sequential").copy_memory()

    return run


def pillow_best(cfg) -> Callable[[Path], None]:
    from PIL import Image, ImageFilter, ImageOps

    profiles = sorted(cfg.sizes, key=lambda p: p.width * p.height, reverse=True)

    def run(path: Path) -> None:
        with Image.open(path) as im:
            largest = profiles[0]
            im.draft("RGB", (largest.width, largest.height))
            base = ImageOps.exif_transpose(im.convert("RGB"))
        current = base
        for p in profiles:
            if p.crop == "none":
                out = current.copy()
                out.thumbnail((p.width, p.height), Image.Resampling.LANCZOS, reducing_gap=2.0)
                current = out
            else:
                out = ImageOps.fit(current, (p.width, p.height), Image.Resampling.LANCZOS)
            out = out.filter(ImageFilter.UnsharpMask(radius=p.sharpen_sigma * 2, percent=int(p.sharpen_amount * 100),
                                                     threshold=0))
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=p.quality, progressive=True, optimize=True)

    return run


def vipsthumbnail_cli(cfg, exe: str, out_dir: Path) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        for p in cfg.sizes:
            args = [exe, str(path), "--size", f"{p.width}x{p.height}", "-o",
                    f"{out_dir}/{p.name}.jpg[Q={p.quality},interlace,optimize_coding,strip]"]
            if p.crop != "none":
                args += ["--smartcrop", "attention"]
            subprocess.run(args, check=True, capture_output=True)

    return run


def imagemagick_cli(cfg, exe: str, out_dir: Path) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        for p in cfg.sizes:
            geometry = f"{p.width}x{p.height}" + ("^" if p.crop != "none" else "")
            # jpeg:size = the box: libjpeg decodes at the smallest DCT scale still >= the box (a 2x hint
            # would decode 24 MP at full size and exceed Debian's ImageMagick memory policy)
            args = [exe, "-define", f"jpeg:size={p.width}x{p.height}", str(path), "-auto-orient",
                    "-thumbnail", geometry]
            if p.crop != "none":
                args += ["-gravity", "center", "-extent", f"{p.width}x{p.height}"]
            args += ["-unsharp", f"0x{p.sharpen_sigma}+{p.sharpen_amount}+0", "-quality", str(p.quality),
                     "-interlace", "Plane", "-strip", f"{out_dir}/{p.name}.jpg"]
            subprocess.run(args, check=True, capture_output=True)

    return run


class ThumborServer:
    def __init__(self, exe: str, root: Path):
        from cluster import procs

        self.procs = procs
        self.port = procs.free_port()
        conf = root / "thumbor.conf"
        conf.write_text(
            f"LOADER = 'thumbor.loaders.file_loader'\nFILE_LOADER_ROOT_PATH = '{root}'\n"
            "ALLOW_UNSAFE_URL = True\nSTORAGE = 'thumbor.storages.no_storage'\nRESULT_STORAGE = None\n"
            "QUALITY = 85\nPROGRESSIVE_JPEG = True\nMAX_WIDTH = 0\nMAX_HEIGHT = 0\n"
            "RESPECT_ORIENTATION = True\n")
        self.proc = procs.start([exe, f"--port={self.port}", "--ip=127.0.0.1", f"--conf={conf}", "-l", "error"],
                                log=root / "thumbor.log")
        procs.wait_port("127.0.0.1", self.port, timeout=60, proc=self.proc)

    def runner(self, cfg) -> Callable[[Path], None]:
        def run(path: Path) -> None:
            for p in cfg.sizes:
                fit = "" if p.crop != "none" else "fit-in/"
                url = (f"http://127.0.0.1:{self.port}/unsafe/{fit}{p.width}x{p.height}/"
                       f"filters:sharpen({p.sharpen_amount},{p.sharpen_sigma},false):quality({p.quality})/{path.name}")
                with urllib.request.urlopen(url, timeout=120) as resp:
                    resp.read()

        return run

    def stop(self) -> None:
        self.procs.stop(self.proc)


def timed(fn: Callable[[Path], None], path: Path, runs: int) -> float:
    fn(path)  # warm-up (first-use tables, page cache)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- all cores and memory, in separate processes ----------------------------------------------
def _worker_init() -> None:
    from magickd import vips_setup

    vips_setup.limit_malloc_arenas()
    vips_setup.configure(1)


def _worker_loop(args: tuple[str, int]) -> int:
    from cluster.config import load

    path, count = args
    run = magickd_core(load(with_secrets=False))
    for _ in range(count):
        run(Path(path))
    return count


def all_cores(path: Path, per_proc: int) -> float:
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores, initializer=_worker_init) as pool:
        list(pool.map(_worker_loop, [(str(path), 1)] * cores))  # warm every worker
        t0 = time.perf_counter()
        done = sum(pool.map(_worker_loop, [(str(path), per_proc)] * cores))
        return done / (time.perf_counter() - t0)


RSS_SCRIPT = """
import sys
from pathlib import Path
from magickd import vips_setup
vips_setup.configure(1)
from cluster.config import load
from bench.bench_magickd import magickd_core
run = magickd_core(load(with_secrets=False))
for p in sys.argv[1:]:
    for _ in range(3):
        run(Path(p))
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the (large) parent's RSS at fork
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_rss_mb(paths: list[Path], arenas: str | None) -> float:
    """Peak resident memory of a fresh worker-like process rendering ``paths`` three times each."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MALLOC_ARENA_MAX", None)
    if arenas:
        env["MALLOC_ARENA_MAX"] = arenas
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, *map(str, paths)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=600)
    return int(out.stdout.split()[-1]) / 1024


# -- main -----------------------------------------------------------------------------------
def main() -> None:
    from cluster.config import load
    from magickd import vips_setup

    vips_setup.limit_malloc_arenas()
    vips_setup.configure(1)
    cfg = load(with_secrets=False)
    notes: list[str] = [f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
                        "(other work on the box inflates every figure)"]
    work = Path(tempfile.mkdtemp(prefix="bench-magickd-"))
    thumbor = None
    try:
        print("making test photos (iPhone 6 photo cropped to 3:2 and resized with libvips)...", flush=True)
        photos = make_photos(work)
        out_dir = work / "out"
        out_dir.mkdir()
        contenders: dict[str, Callable[[Path], None]] = {
            "magickd": magickd_core(cfg), "floor": decode_floor(cfg), "pillow": pillow_best(cfg)}
        exe, note = find_vipsthumbnail()
        if exe:
            contenders["vipsthumbnail"] = vipsthumbnail_cli(cfg, exe, out_dir)
        notes += [note] if note else []
        exe, note = find_imagemagick()
        if exe:
            contenders["imagemagick"] = imagemagick_cli(cfg, exe, out_dir)
        notes += [note] if note else []
        exe, note = find_thumbor()
        if exe:
            try:
                thumbor = ThumborServer(exe, work)
                contenders["thumbor"] = thumbor.runner(cfg)
            except Exception as e:  # a broken install must not stop the rest of the bench
                notes.append(f"thumbor would not start ({e.__class__.__name__}: {e}); skipped")
        notes += [note] if note else []

        rows, figures = [], {}
        for label, kinds in photos.items():
            for kind, path in kinds.items():
                ms = {}
                for name, fn in contenders.items():
                    try:
                        ms[name] = timed(fn, path, BUDGET[label]) * 1000
                    except Exception as exc:
                        notes.append(f"{name} failed on {label} {kind}: {exc.__class__.__name__}: {str(exc)[:120]}")
                        if thumbor and name == "thumbor":
                            contenders.pop("thumbor", None)
                for name, value in ms.items():
                    row = {"photo": label, "source": kind, "renderer": name, "ms_all_sizes": round(value, 1),
                           "img/s/core": round(1000 / value, 2)}
                    if name != "magickd" and "magickd" in ms:
                        row["magickd_x"] = round(value / ms["magickd"], 2)  # >1: magickd is faster
                    rows.append(row)
                    figures[f"{label}.{kind}.{name}.ms"] = round(value, 1)
                print(table([r for r in rows if r["photo"] == label and r["source"] == kind],
                            ["photo", "source", "renderer", "ms_all_sizes", "img/s/core", "magickd_x"]), flush=True)
                print(flush=True)

        print("magickd with every core busy (one process per core):", flush=True)
        multi = []
        for label, kinds in photos.items():
            for kind, path in kinds.items():
                rate = all_cores(path, {"4MP": 6, "15MP": 3, "24MP": 2}[label])
                single = 1000 / figures[f"{label}.{kind}.magickd.ms"]
                multi.append({"photo": label, "source": kind, "cores": os.cpu_count(), "img/s": round(rate, 2),
                              "img/s/core": round(rate / (os.cpu_count() or 1), 2),
                              "scaling": round(rate / single, 2)})
                figures[f"{label}.{kind}.magickd_all_cores.img_per_s"] = round(rate, 2)
        print(table(multi, ["photo", "source", "cores", "img/s", "img/s/core", "scaling"]), flush=True)

        print("\npeak RSS of one worker process rendering a 24 MP photo (all sizes, 3 times):", flush=True)
        rss_rows = []
        for kind, path in photos["24MP"].items():
            capped, default = peak_rss_mb([path], "2"), peak_rss_mb([path], None)
            rss_rows.append({"source": kind, "MALLOC_ARENA_MAX=2 MB": round(capped), "glibc default MB": round(default)})
            figures[f"rss_mb_24MP_{kind}_arena2"] = round(capped, 1)
            figures[f"rss_mb_24MP_{kind}_default_arenas"] = round(default, 1)
        print(table(rss_rows, ["source", "MALLOC_ARENA_MAX=2 MB", "glibc default MB"]), flush=True)

        goals = []
        for label in CLASSES:
            f = {k.split(".", 2)[2][:-3]: v for k, v in figures.items()
                 if k.startswith(f"{label}.baseline.") and k.endswith(".ms")}
            m = f["magickd"]
            goals.append({"photo": label, "vs_floor": round(m / f["floor"], 2),
                          "vs_pillow": round(f["pillow"] / m, 2),
                          "vs_thumbor": round(f["thumbor"] / m, 2) if "thumbor" in f else "n/a"})
        print("\ngoals on baseline sources (magickd per core): floor ratio <= 2, pillow >= 1.5x, thumbor >= 3x", flush=True)
        print(table(goals, ["photo", "vs_floor", "vs_pillow", "vs_thumbor"]), flush=True)
        notes.append(f"load average at end: {os.getloadavg()[0]:.2f}")
        figures["goals"] = goals
        figures["notes"] = notes
        figures["rows"] = rows
        figures["all_cores"] = multi
        for n in notes:
            print(f"note: {n}", flush=True)
        record("magickd", figures)
    finally:
        if thumbor:
            thumbor.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
