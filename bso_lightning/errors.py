"""The base of errors about a user's files and data (``bso-lightning`` prints them as one line).

It lives here, not in ``datamodules``, so that the dependency between the two packages goes one way:
``datamodules`` uses ``bso_lightning`` (its ``DataFileError`` derives from :class:`UserDataError`), and
``bso_lightning`` imports nothing from ``datamodules`` (the CLI names its default DataModule by class path).
"""

from __future__ import annotations


class UserDataError(RuntimeError):
    """A data file or folder that cannot be used; the message names it (``datamodules.DataFileError``)."""
