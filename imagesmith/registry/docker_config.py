"""Where the Docker CLI keeps its config (credentials, contexts), in a module of its own:
the engine reads it on every command that picks Docker, without the registry client."""

from __future__ import annotations

import os
from pathlib import Path


def docker_config_path() -> Path:
    """The Docker CLI's config file: `$DOCKER_CONFIG/config.json`, else ~/.docker's."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
