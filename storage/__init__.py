"""Object storage: one blob-store interface, an embedded local backend and S3, plus the key scheme."""

from __future__ import annotations

from cluster.config import Config

from .base import (
    AlreadyExists, BlobStore, NotFound, ObjectInfo, StorageAuthError, StorageError, StorageUnavailable,
)

__all__ = [
    "AlreadyExists", "BlobStore", "NotFound", "ObjectInfo", "StorageAuthError", "StorageError",
    "StorageUnavailable", "open_store",
]


def open_store(cfg: Config) -> BlobStore:
    """The store the config names. Imports the S3 client only when it is used."""
    if cfg.storage.backend == "local":
        from .local import LocalStore

        return LocalStore(cfg.local_root)
    from .s3 import S3Store

    return S3Store(cfg.storage.s3)
