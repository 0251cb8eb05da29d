"""magickd: the render pool. Sharpened thumbnails from originals, on any machine with spare CPU.

- ``pipeline`` and ``steps/``: the render core (pyvips; no HTTP). One shrink-on-load
  decode per original for the largest size asked, smaller sizes cascaded from it.
- ``service``: a photo's sizes from storage and back, idempotent, with admission
  control (``admission``) and a memory of failing originals (``failures``).
- ``app`` / ``server``: the falcon app on a pre-forked gunicorn pool.
- ``rerender`` / ``verify``: the admin commands; ``client``: how callers reach the pool.

Animated and multi-page originals (GIF, WebP, APNG, multi-page TIFF): renditions
are made from the first frame/page only, as a still image. Thumbnails of
animations stay small and cheap to make, and every output format, JPEG included,
can hold them. The original is kept exactly as uploaded, so animated views can
always be served from it.
"""
