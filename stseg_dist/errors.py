"""Errors users see: each names the file, column or value at fault."""


class StsegError(Exception):
    """Base class for errors the CLI reports without a traceback."""


class InputError(StsegError, ValueError):
    """An input file, column or value is missing or invalid."""


class ConfigError(StsegError, ValueError):
    """A configuration key or value is invalid."""


class OutputError(StsegError, OSError):
    """The output location cannot be written safely."""


class RunIncompleteError(StsegError, RuntimeError):
    """Some tiles failed every retry; the rest of the chip was completed."""
