"""Object storage: one blob-store interface, an embedded local backend and S3, plus the key scheme."""

from __future__ import annotations

from pathlib import Path

from cluster.config import StorageSection

from .base import (
    AlreadyExists, BlobStore, Conflict, NotFound, ObjectInfo, StorageAuthError, StorageError, StorageUnavailable,
)

__all__ = [
    "AlreadyExists", "BlobStore", "Conflict", "NotFound", "ObjectInfo", "StorageAuthError", "StorageError",
    "StorageUnavailable", "open_store",
]


def open_store(storage: StorageSection, local_root: Path) -> BlobStore:
    """The store ``[storage]`` names; ``local_root`` is where the local backend keeps it
    (``Config.local_root``: storage.local.root, else {data_dir}/store). Imports the S3 client
    only when it is used."""
    if storage.backend == "local":
        from .local import LocalStore

        return LocalStore(local_root)
    from .s3 import S3Store

    return S3Store(storage.s3)
