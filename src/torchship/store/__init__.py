"""Model packages and the versioned model store: a directory, or object storage (``s3://bucket/prefix``)."""

from torchship.store.cache import RemoteStoreView, VersionCache
from torchship.store.package import (
    ModelPackage,
    PackageConfig,
    load_package,
    read_config,
    write_package,
)
from torchship.store.remote import ObjectStore, open_store
from torchship.store.store import ModelStore, resolve_model, validate_name, validate_version
from torchship.store.view import PIN_FILE, LocalStoreView, StoreView

__all__ = [
    "PIN_FILE",
    "LocalStoreView",
    "ModelPackage",
    "ModelStore",
    "ObjectStore",
    "PackageConfig",
    "RemoteStoreView",
    "StoreView",
    "VersionCache",
    "load_package",
    "open_store",
    "read_config",
    "resolve_model",
    "validate_name",
    "validate_version",
    "write_package",
]
