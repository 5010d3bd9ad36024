"""Write a checkpoint directory all at once: into a hidden staging directory next to it, moved into place only when
every file is complete. A failed or interrupted conversion leaves no half-written output behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def check_output_directory(output_dir: str | os.PathLike, overwrite: bool, input_dir: str | os.PathLike | None = None):
    """Refuse, before any work, an output that would clobber data: the input itself, or a non-empty directory
    without `overwrite`."""
    output_dir = Path(output_dir).resolve()
    if input_dir is not None and output_dir == Path(input_dir).resolve():
        raise ValueError(f"--output_dir is the input directory ({output_dir}). Fix: write to a new directory.")
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a directory. Fix: choose another --output_dir.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty. Fix: choose a new --output_dir, or pass --overwrite to replace it "
            "(the old contents are removed only after the new checkpoint is complete)."
        )
    return output_dir


@contextlib.contextmanager
def atomic_output_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a staging directory; on success it replaces `output_dir`, on any exception it is deleted."""
    output_dir = check_output_directory(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new directory
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output_dir.is_dir() and any(output_dir.iterdir()):
        # Swap with two renames so the old checkpoint is only deleted once the new one is in place.
        retired = output_dir.parent / f".{output_dir.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, retired)
        os.rename(staging, output_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        if output_dir.is_dir():
            output_dir.rmdir()
        os.rename(staging, output_dir)


__all__ = ["atomic_output_directory", "check_output_directory"]
