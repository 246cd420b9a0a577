"""Store errors. Each one subclasses the builtin that the CLI maps to the right exit code
(``FileNotFoundError``/``KeyError`` → 2 for bad input), so callers need not know the store."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by ``rllc.store``."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No rllc store at the given path or URI (opened read-only, nothing to read)."""


class ReadOnlyStoreError(StoreError, PermissionError):
    """A write was attempted through a read-only store handle."""


class UnknownGroupError(StoreError, KeyError):
    """No sweep (or tuning run) of that id in the store.

    ``str()`` is the plain message (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LayoutMismatchError(StoreError, ValueError):
    """A group exists with a different grid, sampler or compute config than the one
    requested."""


class LayoutVersionError(LayoutMismatchError):
    """A group was written with another store layout version than this rllc writes: an
    older one can be read but not written; a newer one cannot be read."""


class QueryError(StoreError, ValueError):
    """A query asked for something the stored data does not have (bad filter, burn-in)."""
