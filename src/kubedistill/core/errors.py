"""Errors a user can fix. The CLI prints them as one line (cause, then fix), never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (data, config, path, credentials).

    `cause` says what is wrong, `fix` what to do about it; both are short sentences.
    """

    def __init__(self, cause: str, fix: str = "") -> None:
        self.cause = cause.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.cause}. {self.fix}." if self.fix else f"{self.cause}."


class ConfigError(UserError):
    """A wrong option name or value."""


class DataError(UserError):
    """A dataset that cannot be used."""
