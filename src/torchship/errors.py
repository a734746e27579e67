"""The errors torchship raises, each with the HTTP status and TorchServe error type it maps to.

Every error a user can cause carries a message that says what was wrong and what to do. The CLI prints
``error: <message>`` without a traceback; the server turns the same error into TorchServe's JSON body
``{"code": ..., "type": ..., "message": ...}`` in one place.

    TorchshipError                      500  InternalServerException
    ├── UserInputError                  400  BadRequestException
    │   ├── DataError                        a data file is missing, malformed or unusable
    │   ├── ConfigError                      a setting is out of range or inconsistent
    │   └── PackageError                     a model package is missing, incomplete or unreadable
    ├── NotFoundError                   404  ModelNotFoundException
    │   └── VersionNotFoundError             the model exists, that version does not
    └── ConflictError                   409  ConflictStatusException
        └── VersionExistsError               a published version is never overwritten

The serving layer extends this tree in ``torchship.serving.errors``.
"""

from __future__ import annotations


class TorchshipError(Exception):
    """Base of every error torchship raises on purpose."""

    status: int = 500
    type: str = "InternalServerException"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        """The TorchServe error body: ``{"code": 404, "type": "ModelNotFoundException", "message": ...}``."""
        return {"code": self.status, "type": self.type, "message": self.message}


class UserInputError(TorchshipError):
    """The user asked for something that cannot be done as asked."""

    status = 400
    type = "BadRequestException"


class DataError(UserInputError):
    """A data file is missing, malformed or unusable; the message names the file, line or column."""


class ConfigError(UserInputError):
    """A setting is out of range or inconsistent; the message names the field."""


class PackageError(UserInputError):
    """A model package is missing, incomplete or cannot be read."""


class NotFoundError(TorchshipError):
    """A model that is not there."""

    status = 404
    type = "ModelNotFoundException"


class VersionNotFoundError(NotFoundError):
    """The model exists but not in the version asked for."""

    type = "ModelVersionNotFoundException"


class ConflictError(TorchshipError):
    """The request conflicts with the current state."""

    status = 409
    type = "ConflictStatusException"


class VersionExistsError(ConflictError):
    """A published model version is immutable and is never overwritten."""
