"""One exception type for bad user input, so the CLI can print it cleanly before any training starts."""


class ConfigError(ValueError):
    """A user-facing configuration error: the message names the bad value, the allowed values and the fix."""
