"""Model packages and the versioned model store."""

from torchship.store.package import (
    ModelPackage,
    PackageConfig,
    load_package,
    read_config,
    write_package,
)
from torchship.store.store import ModelStore, resolve_model, validate_name, validate_version

__all__ = [
    "ModelPackage",
    "ModelStore",
    "PackageConfig",
    "load_package",
    "read_config",
    "resolve_model",
    "validate_name",
    "validate_version",
    "write_package",
]
