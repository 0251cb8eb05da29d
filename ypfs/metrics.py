"""ypfs's Prometheus metrics (multiprocess-aware: every gunicorn worker writes its own file)."""

from prometheus_client import Counter, Histogram

UPLOADS = Counter("ypfs_uploads_total", "Upload requests by HTTP status", ["status"])
UPLOAD_BYTES = Counter("ypfs_upload_bytes_total", "Bytes of originals stored")
UPLOAD_SECONDS = Histogram("ypfs_upload_seconds", "Time to receive, validate and store an upload",
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
RENDER_REQUESTS = Counter("ypfs_render_requests_total", "Fire-and-forget render requests by outcome", ["outcome"])
DELETES = Counter("ypfs_photo_deletes_total", "Photos deleted by their owners")
