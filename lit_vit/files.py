"""Small file helpers shared by the run folder, the sweep and its callbacks."""

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through `<path>.<pid>.tmp` and a rename (atomic within a file system): a reader, in
    this or another process or host, never sees half a file, and two writers never share a temporary file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
