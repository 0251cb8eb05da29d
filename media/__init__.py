"""media: what the cluster knows about image files, in one place for every role.

    formats.py     the format table: magic bytes, loaders, Pillow ids, MIME, extension
    decode.py      the decode policy: which library opens what, strictness, pixel and frame budgets
    sniff.py       the format of a file from its magic bytes (what is accepted at all)
    probe.py       the acceptance check an upload must pass: header, budgets, a strict decode,
                   Pillow's stricter parsers for PNG and GIF; dimensions, orientation and the
                   EXIF fields kept (never GPS)
    errors.py      ImageRejected, with the HTTP status and code ypfs answers with
    jpeg.py        the JPEG marker walk (scan bombs, missing end of image)
    containers.py  PNG, WebP and HEIF container walkers
    geoscrub.py    GPS taken out of an original, in place, before ypws serves it
    gainmap.py     Ultra HDR gain maps carried into the renditions that keep them

ypfs runs the probe on every upload; magickd runs its strict part on every original it
renders, under the same budgets, so what ypfs accepts and what magickd can render stay the
same set (tests/test_accepted_renders.py holds both to that over the shared corpora).
cluster/ imports nothing of media; media may import cluster.config and cluster.pool.
"""
