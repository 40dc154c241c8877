"""OCI image references (`registry/path:tag@sha256:...`), parsed the way Docker does."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# The grammar of github.com/distribution/reference, written as one regex per part.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

REFERENCE_PATTERN = rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$"
REPOSITORY_PATTERN = rf"^{_NAME}$"
DIGEST_PATTERN = rf"^{_DIGEST}$"
_REFERENCE = re.compile(REFERENCE_PATTERN)
_DIGEST_RE = re.compile(DIGEST_PATTERN)

DEFAULT_REGISTRY = "docker.io"


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference; `registry` is filled in (docker.io) when the text had none."""

    registry: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """`registry/path`, the name a registry knows (docker.io/library/debian)."""
        return f"{self.registry}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """The repository as users write it (debian, not docker.io/library/debian)."""
        if self.registry == DEFAULT_REGISTRY:
            return self.path.removeprefix("library/")
        return self.repository

    def with_digest(self, digest: str) -> str:
        return f"{self.familiar_repository}@{digest}"

    def __str__(self) -> str:
        text = self.familiar_repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_digest(text: str) -> bool:
    return _DIGEST_RE.match(text) is not None


def parse_reference(text: str) -> ImageReference:
    """Parse `text`; raise ValueError with a user-facing reason when it is not a reference."""
    match = _REFERENCE.match(text)
    if match is None or len(text) > 4096:
        raise ValueError(f"{text!r} is not an image reference (e.g. debian:bookworm)")
    name, tag, digest = match.groups()
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, path=path, tag=tag, digest=digest)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, with or without `:port`, IPv6 in brackets) is
    this machine's loopback: localhost, 127.0.0.0/8 or ::1. Registries there are spoken
    to over plain HTTP, and apt sources there are reached without a proxy."""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether `url`'s host is this machine's loopback."""
    return is_loopback(urlsplit(url).hostname or "")
