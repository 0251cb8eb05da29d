"""Fire-and-forget render requests after an upload.

The upload is acknowledged without waiting for thumbnails; a background thread
per worker asks magickd for the eager sizes (``SizeProfile.eager``), retrying with
back-off; the others are rendered by ypws on their first request. The
queue is bounded: if magickd is down for long, requests beyond it are dropped
(and counted), which is safe because ypws renders any missing size on demand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Sequence

from magickd.client import RenderClient, RenderError
from storage.keys import PhotoRef

log = logging.getLogger("ypfs.notify")


class RenderNotifier:
    def __init__(self, client: RenderClient, retries: int, sizes: Sequence[str], backoff: float = 0.5,
                 maxsize: int = 1000, on_outcome: Callable[[str], None] = lambda outcome: None,
                 sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.sizes = tuple(sizes)  # what to render after an upload: the eager sizes
        self.retries = max(1, retries)
        self.backoff = backoff
        self.on_outcome = on_outcome
        self.sleep = sleep
        self.queue: queue.Queue[PhotoRef] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, ref: PhotoRef) -> None:
        if not self.sizes:  # every size on demand: nothing to ask for
            return
        self._ensure_thread()  # started lazily: after gunicorn's fork, in the worker
        try:
            self.queue.put_nowait(ref)
        except queue.Full:
            self.on_outcome("dropped")
            log.warning("render queue full; %s will be rendered on demand", ref.photo_id)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="render-notifier", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self.render(self.queue.get())

    def render(self, ref: PhotoRef) -> str:
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                self.client.render(ref, sizes=self.sizes)
                self.on_outcome("ok")
                return "ok"
            except RenderError as exc:  # a definite answer (e.g. 422): retrying cannot help
                log.warning("magickd refused %s: %s", ref.photo_id, exc)
                self.on_outcome("refused")
                return "refused"
            except Exception as exc:  # unavailable, timeouts: try again later
                log.warning("render of %s failed (attempt %d/%d): %s", ref.photo_id, attempt, self.retries, exc)
                if attempt < self.retries:
                    self.sleep(delay)
                    delay *= 2
        self.on_outcome("failed")
        return "failed"
