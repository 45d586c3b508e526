"""The domain errors: each carries a message a user can act on."""

from __future__ import annotations


class MoecommError(Exception):
    """Base class of every error this package raises on purpose."""


class ParseError(MoecommError):
    """Benchmark output that cannot be read at all (not one usable object in it)."""


class LoadError(MoecommError):
    """A load into PostgreSQL that failed; nothing of the input it names was written."""


class DatabaseError(MoecommError):
    """The database cannot be reached, started or migrated."""


class SchemaMismatch(DatabaseError):
    """The database's applied migrations are not this moecomm's (another version, or a changed
    file): nothing may be read or written until that is fixed."""


class LaunchError(MoecommError):
    """A benchmark launch that could not start, crashed or timed out."""


class ConfigError(MoecommError):
    """A configuration value that is missing or invalid; the message names the field."""
