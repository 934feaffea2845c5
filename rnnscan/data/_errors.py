"""The error raised for data files rnnscan cannot use as they are."""

from __future__ import annotations

__all__ = ["DataFormatError"]


class DataFormatError(ValueError):
    """A data file is malformed (truncated, unparsable) or holds values that cannot be
    used as they are (missing or infinite values). The message names the file, says
    what is wrong and how to fix it."""
