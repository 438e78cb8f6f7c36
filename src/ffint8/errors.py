"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class FFInt8Error(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint) or a diverging run."""


class DataError(FFInt8Error):
    """A data file or directory is missing, malformed or inconsistent; the message names it."""


class ConfigError(FFInt8Error):
    """A flag or configuration value is invalid; the message names it and the valid choices."""


class CheckpointError(FFInt8Error):
    """A checkpoint cannot be read or does not match the requested model."""


class DivergenceError(FFInt8Error):
    """A NaN or Inf appeared in a loss, goodness or weight."""

    @classmethod
    def at(cls, epoch: int, step: int, what: str) -> DivergenceError:
        """The error of every trainer: epoch and step 1-based, what: the non-finite quantity."""
        return cls(f"training diverged at epoch {epoch}, step {step}: {what}; try a smaller --lr")
