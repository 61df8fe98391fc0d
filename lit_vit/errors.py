"""One exception type for bad user input, so the CLI can print it cleanly before any training starts."""


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
