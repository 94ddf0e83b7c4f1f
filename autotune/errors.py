"""One root exception, with subclasses that also derive from the matching builtin.

The CLI maps every `AutotuneError` to exit code 2 and prints its message on one line, so each
message must say what is wrong and how to fix it.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error that is the user's to fix (bad flags, bad files, unknown names)."""


class ConfigError(AutotuneError, ValueError):
    """A value or combination of values that cannot be used."""


class UnknownNameError(AutotuneError, KeyError):
    """A name (model, GPU type, rule) that is not in a catalog."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class SpecFileError(AutotuneError, ValueError):
    """A file given by the user (HF config.json, space YAML) is missing or malformed."""
