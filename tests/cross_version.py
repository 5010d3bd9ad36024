"""Finding a sibling virtualenv with the other transformers major version, for cross-version checkpoint tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import transformers


def other_transformers_python() -> str | None:
    """A Python of a sibling virtualenv with the other transformers major version (4 <-> 5), if there is one:
    $DSVL_OTHER_PYTHON, the venvs next to this one (.ci-cache/venv-*), or /opt/venv*."""
    major = transformers.__version__.split(".")[0]
    here = Path(sys.prefix).resolve()
    candidates = [Path(os.environ["DSVL_OTHER_PYTHON"]).parent.parent] if os.environ.get("DSVL_OTHER_PYTHON") else []
    candidates += sorted(here.parent.glob("venv*")) + sorted(Path("/opt").glob("venv*"))
    for prefix in candidates:
        python = prefix / "bin" / "python"
        if prefix.resolve() == here or not python.exists():
            continue
        for info in prefix.glob("lib/python*/site-packages/transformers-*.dist-info"):
            version = info.name[len("transformers-") : -len(".dist-info")]
            if version.split(".")[0] != major and (prefix / "bin" / "python").exists():
                return str(python)
    return None


OTHER_PYTHON = other_transformers_python()
