"""Where datasets live on disk.

One rule, applied everywhere (library, CLI, tests): an explicit ``data_root`` argument (the CLI's
``--data-root``) wins, then the environment variable ``PRUNELAB_DATA``, then a folder in the user's
cache (``$XDG_CACHE_HOME/prunelab/data``, or ``~/.cache/prunelab/data``). A cache folder is the
default because datasets are large, shared between runs and can be fetched again; they belong
neither in the source tree nor in a run folder.

Fashion-MNIST has one more place, the offline default of this project: the Debian package
``dataset-fashion-mnist`` installs the four gzipped IDX files under :data:`DEBIAN_FASHION_MNIST`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PRUNELAB_DATA"

#: Folder of the Debian package ``dataset-fashion-mnist`` (flat, gzipped IDX files). Read at call
#: time, so tests may point it elsewhere with ``monkeypatch.setattr``.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def resolve_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_root`` if given, else ``$PRUNELAB_DATA``, else the user cache folder.

    The folder is not created here; only a download creates it.
    """
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache"
    return Path(cache).expanduser() / "prunelab" / "data"
