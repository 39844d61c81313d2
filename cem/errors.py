"""The project's small error taxonomy.

Every error a user can cause is one of these, and its message says what to change.
"""

from __future__ import annotations


class CemError(Exception):
    """Base class: a problem the user can fix; the CLI prints it without a traceback."""


class ConfigError(CemError):
    """A config value is wrong. The message names the key, the value and the fix."""

    def __init__(self, key: str, value: object, expected: str, fix: str | None = None):
        self.key, self.value = key, value
        msg = f"{key} {expected}; got {value!r}"
        if fix:
            msg += f" (try {fix})"
        super().__init__(msg)


class DataError(CemError):
    """A data file is bad. The message names the file, the line and the reason."""

    def __init__(self, path: object, line: int | None, reason: str):
        self.path, self.line, self.reason = path, line, reason
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")


class AssetError(CemError):
    """An offline asset could not be fetched, verified or extracted."""


class ModelError(CemError):
    """A model or tokenizer could not be loaded."""


class StorageError(CemError):
    """A file could not be written: the disk is full, or the path is not writable."""


class RunLocked(CemError):
    """Another process is writing to the same run folder."""
