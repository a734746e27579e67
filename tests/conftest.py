"""Fixtures every test directory may use: the S3 server of ``s3_support`` (``s3_server``, ``s3_url``).

Test modules import helpers from the ``*_support`` modules, never from a conftest."""

from s3_support import s3_server, s3_url  # noqa: F401  (pytest finds fixtures by name)
