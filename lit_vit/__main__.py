import atexit
import os
import sys

from lit_vit.commands import top_level_help

_status: list[int] = []  # the command's exit status, once main() has returned or exited


def _exit_without_teardown() -> None:
    """The last exit handler (registered first; handlers run last-in, first-out): once the other handlers (logging,
    loggers) have run and Python has joined every thread, end the process with the command's status and skip the
    interpreter's module teardown, which takes ~1.2 s once torch and Lightning are imported and writes nothing.
    After an uncaught exception (no status) the interpreter ends as usual."""
    if not _status:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`... | head`) or a closed stream: nothing left to write
            pass
    os._exit(_status[0])


if __name__ == "__main__":
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        # answered without importing Lightning (seconds); a bare `python -m lit_vit` shows the same help
        print(top_level_help())
        sys.exit(0)
    atexit.register(_exit_without_teardown)
    from lit_vit.cli import main

    try:
        main()
    except SystemExit as stop:  # Python prints a message given as the code, then runs the exit handlers
        from lit_vit.processes import exit_status

        _status.append(exit_status(stop.code))
        raise
    _status.append(0)
