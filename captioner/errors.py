"""Exceptions that carry a message meant for the user.

Every error a user can cause (a bad image, a missing checkpoint, an unknown encoder name)
is a :class:`CaptionerError`; the command line prints its message on one line and exits
non-zero instead of showing a traceback, and the service turns it into a JSON 4xx.
"""

from __future__ import annotations


class CaptionerError(Exception):
    """A problem the user can fix; the message says what to do."""


class ImageLoadError(CaptionerError):
    """An image could not be read: missing, truncated, not an image, too large, ...

    ``name`` is the file name (or the label the caller gave the bytes) and ``reason`` a
    short human explanation. ``code`` is a stable machine-readable classification used by
    the service to pick a status code: ``"unreadable"``, ``"unsupported"``, ``"too_large"``,
    ``"empty"``.
    """

    def __init__(self, name: str, reason: str, code: str = "unreadable") -> None:
        self.name = name
        self.reason = reason
        self.code = code
        super().__init__(f"{name}: {reason}")


class CheckpointError(CaptionerError):
    """A checkpoint folder is missing, incomplete, inconsistent or unsafe."""
