"""Telling the cache tier a photo's renditions changed: PURGE through the public URL (hashproxy).

    PURGE {public_url}/photos/{user}/{id}_{secret}/{size}   every format of one size
    PURGE {public_url}/photos/{user}/{id}_{secret}/         every size of the photo

with ``Authorization: Bearer {admin_token}``. A proxy that is down is reported,
never fatal: magickd has written renditions under new versioned keys already, and ypfs
reports it in its answer (a deleted photo is gone from storage, and ypws never serves
a miss without its record).
"""

from __future__ import annotations

import urllib3

from cluster.config import Config
from storage.keys import PhotoRef, valid_size


class Purger:
    def __init__(self, public_url: str, token: str, timeout: float = 5.0, pool: urllib3.PoolManager | None = None):
        self.public_url = public_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = urllib3.Timeout(connect=min(2.0, timeout), read=timeout)
        self.pool = pool or urllib3.PoolManager(maxsize=8, retries=False)

    @classmethod
    def from_config(cls, cfg: Config) -> "Purger":
        return cls(cfg.public_url, cfg.cluster.admin_token)

    def url(self, ref: PhotoRef, size: str | None = None) -> str:
        return f"{self.public_url}{ref.url_path}/{valid_size(size) if size else ''}"

    def purge(self, ref: PhotoRef, size: str | None = None) -> str | None:
        """None when purged (or nothing was cached); otherwise why it failed."""
        try:
            resp = self.pool.request("PURGE", self.url(ref, size), headers=self.headers, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            return f"cache purge failed: {exc.__class__.__name__}"
        if resp.status < 300 or resp.status == 404:
            return None
        return f"cache purge answered {resp.status}"
