"""User-facing errors: the CLI prints these as one line, without a traceback."""


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
