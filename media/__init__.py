"""media: what the cluster knows about image files, in one place for every role.

    sniff.py   the format of a file from its magic bytes (what is accepted at all)
    probe.py   the acceptance check an upload must pass: header, pixel and frame limits,
               a strict decode, Pillow's stricter parsers for PNG and GIF; dimensions,
               orientation and the EXIF fields kept (never GPS)

ypfs runs the probe on every upload; magickd runs its strict part on every original it
renders, so what ypfs accepts and what magickd can render stay the same set
(tests/test_accepted_renders.py holds both to that over the shared corpora).
"""
