"""Errors of the Deep Compression stages."""

from __future__ import annotations

from tinyprune.errors import UnsupportedModel


class ArchiveError(UnsupportedModel):
    """A ``.tpz`` archive is corrupt, truncated, of an unknown version or otherwise unreadable.

    It is an :class:`~tinyprune.errors.UnsupportedModel` (hence an ``InputError``, exit code 2):
    the archive is a model file that cannot be loaded. The message is one line.
    """
