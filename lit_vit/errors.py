"""One exception type for bad user input, so the CLI can print it cleanly before any training starts."""

from collections.abc import Callable


class ConfigError(ValueError):
    """A user-facing configuration error: the message names the bad value, the allowed values and the fix."""


class BadImageError(ConfigError):
    """An image file that cannot be decoded (`path` names it). Constructed from one message string, so that a
    DataLoader worker can re-raise it in the main process with the same type."""

    path: str = ""
    reason: str = ""

    @classmethod
    def for_file(cls, path: str, reason: str = "", fix: str = "remove or replace the file") -> "BadImageError":
        err = cls(f"cannot read image {path}{f' ({reason})' if reason else ''}: {fix}")
        err.path, err.reason = str(path), reason
        return err


def user_message(err: BaseException) -> str:
    """The one-line message of a user-facing error, also when a DataLoader worker re-raised it with the worker's
    traceback in the text ("Caught ConfigError in DataLoader worker process 0. Original Traceback ...")."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def find_in_chain(err: BaseException | None, match: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception of `err`'s chain (`err`, then its `__cause__`, else its `__context__`, ten deep at most)
    that `match` accepts, else None."""
    seen = 0
    while err is not None and seen < 10:
        if match(err):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def config_error_in(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `err`, else None: jsonargparse wraps one raised in a class constructor (e.g. a
    backbone's) into a ValueError while instantiating a config, and Lightning re-raises some in its own errors."""
    found = find_in_chain(err, lambda e: isinstance(e, ConfigError))
    return found if isinstance(found, ConfigError) else None
