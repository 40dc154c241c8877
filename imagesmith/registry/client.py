"""A small client for the OCI distribution API: manifest digests, with the token flow.

Credentials come the way users already have them: `IMAGESMITH_REGISTRY_USER` /
`IMAGESMITH_REGISTRY_PASSWORD`, then the docker config (`$DOCKER_CONFIG/config.json` or
~/.docker/config.json: its `credHelpers` / `credsStore` helper, then `auths`), then
podman's auth.json. A helper that fails is reported when the registry asks for
credentials, not before: an anonymous pull does not need it.
Loopback registries are spoken to over plain HTTP, every other one over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from imagesmith.cache.integrity import CorruptEntry, check_bytes, check_file
from imagesmith.errors import RegistryError
from imagesmith.model.reference import DEFAULT_REGISTRY, ImageReference, is_loopback
from imagesmith.registry.docker_config import docker_config_path

T = TypeVar("T")
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry == DEFAULT_REGISTRY else registry


def base_url(registry: str) -> str:
    scheme = "http" if is_loopback(registry) else "https"
    return f"{scheme}://{api_host(registry)}"


def _docker_config_paths() -> list[Path]:
    """Where credentials are looked for: Docker's config (and ~/.docker's when
    DOCKER_CONFIG points elsewhere), then podman's auth files."""
    paths = list(dict.fromkeys([docker_config_path(), Path.home() / ".docker" / "config.json"]))
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    paths.append(Path(runtime) / "containers" / "auth.json")
    paths.append(Path.home() / ".config" / "containers" / "auth.json")
    return paths


def _config_keys(registry: str) -> list[str]:
    if registry == DEFAULT_REGISTRY:
        return ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}"]


class CredentialHelperError(RegistryError):
    """The credential helper the docker config names for a registry failed or answered
    something that is not credentials."""


class NoSuchManifest(RegistryError):
    """The registry answered 404 for a manifest: no such tag or digest there."""


class RegistryUnreachable(RegistryError):
    """No HTTP answer at all: refused, reset, timed out (worth another try)."""


def _helper_server(registry: str) -> str:
    """What `docker login` stored the registry's credentials under, in a helper."""
    return "https://index.docker.io/v1/" if registry == DEFAULT_REGISTRY else registry


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """The helper's credentials for `registry`; None when it has none (it says
    "credentials not found", as Docker's helpers do); else `CredentialHelperError`."""
    program = f"docker-credential-{helper}"
    fix = "fix it, or give IMAGESMITH_REGISTRY_USER / IMAGESMITH_REGISTRY_PASSWORD"
    try:
        result = subprocess.run(
            [program, "get"],
            input=_helper_server(registry),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise CredentialHelperError(
            f"the docker config names {program} for {registry}, and it is not on PATH; "
            f"install it, or give IMAGESMITH_REGISTRY_USER / IMAGESMITH_REGISTRY_PASSWORD"
        ) from None
    except subprocess.TimeoutExpired:
        raise CredentialHelperError(
            f"{program} (credential helper for {registry}) did not answer in {TIMEOUT} s; {fix}"
        ) from None
    except (OSError, ValueError) as exc:
        raise CredentialHelperError(
            f"{program} (credential helper for {registry}) cannot run: {exc}; {fix}"
        ) from None
    if result.returncode != 0:
        # Docker's helpers print their error on stdout, others on stderr.
        said = (result.stdout.strip() or result.stderr.strip() or "no message").splitlines()[0]
        if "credentials not found" in said.lower():
            return None
        raise CredentialHelperError(
            f"{program} (credential helper for {registry}) failed with exit code "
            f"{result.returncode}: {said[:200]}; {fix}"
        )
    try:
        data = json.loads(result.stdout)
        username, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        username = secret = None
    if not isinstance(username, str) or not isinstance(secret, str):
        # Not quoted: what a helper prints may hold the secret.
        raise CredentialHelperError(
            f"{program} (credential helper for {registry}) printed something that is not "
            f'credentials (JSON with "Username" and "Secret"); {fix}'
        )
    return Credentials(username, secret)


def find_credentials(registry: str) -> Credentials | None:
    """The credentials for `registry`, from the first place that has some; None if none
    does. `CredentialHelperError` when the helper named for it fails."""
    user = os.environ.get("IMAGESMITH_REGISTRY_USER")
    password = os.environ.get("IMAGESMITH_REGISTRY_PASSWORD")
    if user and password is not None:
        return Credentials(user, password)
    for path in _docker_config_paths():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(config, dict):
            continue
        helpers = config.get("credHelpers")
        helper = (helpers.get(registry) if isinstance(helpers, dict) else None) or config.get(
            "credsStore"
        )
        if helper and isinstance(helper, str):
            found = _from_helper(helper, registry)
            if found:
                return found
        auths = config.get("auths")
        for key in _config_keys(registry):
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    pair = base64.b64decode(entry["auth"], validate=True).decode()
                except (ValueError, UnicodeDecodeError):
                    continue
                user, colon, password = pair.partition(":")
                if user and colon:
                    return Credentials(user, password)
    return None


class RegistryClient:
    """One registry; caches its bearer tokens per scope."""

    def __init__(self, registry: str, credentials: Credentials | None = None) -> None:
        self.registry = registry
        self._credential_problem: CredentialHelperError | None = None
        if credentials is None:
            try:
                credentials = find_credentials(registry)
            except CredentialHelperError as exc:
                self._credential_problem = exc  # said when the registry asks for them
        self.credentials = credentials
        self._tokens: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        data: bytes | FileBody | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request, doing the token dance once on 401; (status, headers, body).
        `RegistryUnreachable` when no answer comes."""
        url = path if path.startswith("http") else base_url(self.registry) + path
        for attempt in range(2):
            request = urllib.request.Request(url, method=method, data=data)
            for key, value in (headers or {}).items():
                request.add_header(key, value)
            token = self._tokens.get(scope)
            if token:
                request.add_header("Authorization", token)
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    return response.status, dict(response.headers.items()), response.read()
            except urllib.error.HTTPError as exc:
                with exc:  # closes its connection
                    body = exc.read()
                if exc.code == 401 and attempt == 0:
                    self._authenticate(exc.headers.get("WWW-Authenticate", ""), scope)
                    continue
                return exc.code, dict(exc.headers.items()), body
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc) or type(exc).__name__
                raise RegistryUnreachable(
                    f"cannot reach registry {self.registry}: {reason}"
                ) from None
        raise RegistryError(f"unauthorized: check the credentials for {self.registry}")

    def unauthorized(self) -> RegistryError:
        """What to say when the registry still answers 401."""
        if self.credentials is None:
            if self._credential_problem is not None:
                return self._credential_problem
            return RegistryError(
                f"unauthorized: {self.registry} needs credentials (imagesmith login, docker "
                "login, or IMAGESMITH_REGISTRY_USER / IMAGESMITH_REGISTRY_PASSWORD)"
            )
        return RegistryError(f"unauthorized: check the credentials for {self.registry}")

    def _authenticate(self, challenge: str, scope: str) -> None:
        if self.credentials is None and self._credential_problem is not None:
            raise self._credential_problem
        scheme, _, params_text = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self.credentials is None:
                raise self.unauthorized()
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            self._tokens[scope] = "Basic " + base64.b64encode(pair).decode()
            return
        params = dict(
            (k.strip(), v.strip().strip('"'))
            for k, _, v in (p.partition("=") for p in _split_challenge(params_text))
        )
        realm = params.get("realm")
        if scheme.lower() != "bearer" or not realm:
            raise RegistryError(f"{self.registry} asked for an authentication imagesmith cannot do")
        realm_parts = urllib.parse.urlsplit(realm)
        if self.credentials is not None and not (
            realm_parts.scheme == "https"
            or (realm_parts.scheme == "http" and is_loopback(realm_parts.netloc))
        ):
            raise RegistryError(
                f"{self.registry} sends its token requests to {realm}, which is not HTTPS; "
                "no credentials are sent there"
            )
        query = {"service": params.get("service", ""), "scope": scope}
        request = urllib.request.Request(realm + "?" + urllib.parse.urlencode(query))
        if self.credentials is not None:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            raise RegistryError(
                f"unauthorized: check the credentials for {self.registry} ({exc.code})"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryError(f"cannot get a token from {realm}: {exc}") from None
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryError(f"{realm} gave no token")
        self._tokens[scope] = f"Bearer {token}"

    def download_blob(self, path: str, digest: str, sink: IO[bytes]) -> bool:
        """Stream blob `digest` of repository `path` into `sink`, checking it against the
        digest as it arrives; False when the repository does not hold it.

        The credential goes to the registry only, not to the storage a registry may
        redirect blob downloads to (its own signed URL authorises those).
        """
        scope = f"repository:{path}:pull"
        status, _, _ = self.request("HEAD", f"/v2/{path}/blobs/{digest}", scope=scope)
        if status == 404:
            return False
        if status in (401, 403):
            raise RegistryError(f"unauthorized: check the credentials for {self.registry}")
        request = urllib.request.Request(base_url(self.registry) + f"/v2/{path}/blobs/{digest}")
        token = self._tokens.get(scope)
        if token:
            request.add_unredirected_header("Authorization", token)
        hasher = hashlib.sha256()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                while chunk := response.read(1 << 20):
                    hasher.update(chunk)
                    sink.write(chunk)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                return False
            raise RegistryError(
                f"{self.registry} answered {exc.code} for blob {digest[:19]}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc) or type(exc).__name__
            raise RegistryError(f"cannot reach registry {self.registry}: {reason}") from None
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise RegistryError(
                f"{self.registry}/{path} served {actual} when asked for blob {digest}"
            )
        return True

    def manifest(self, path: str, reference: str) -> tuple[str, str, bytes]:
        """(digest, media type, bytes) of the manifest `path:reference`."""
        status, headers, body = self.request(
            "GET",
            f"/v2/{path}/manifests/{reference}",
            scope=f"repository:{path}:pull",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if status == 404:
            raise NoSuchManifest(
                f"{self.registry}/{path}:{reference} does not exist in the registry"
            )
        if status == 401:
            raise self.unauthorized()
        if status >= 400:
            raise RegistryError(f"{self.registry} answered {status} for {path}:{reference}")
        lowered = {k.lower(): v for k, v in headers.items()}
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        media_type = lowered.get("content-type", "").split(";")[0]
        return digest, media_type, body

    def has_manifest(self, path: str, reference: str) -> bool:
        """Whether the registry holds `path:reference`; other failures raise as `manifest`."""
        try:
            self.manifest(path, reference)
        except NoSuchManifest:
            return False
        return True


def _split_challenge(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def platform_digest(ref: ImageReference, platform: str) -> tuple[str, str | None]:
    """(manifest digest for `platform`, index digest or None) of a reference, from its registry."""
    client = RegistryClient(ref.registry)
    digest, media_type, body = client.manifest(ref.path, ref.digest or ref.tag or "latest")
    if media_type not in INDEX_TYPES:
        return digest, None
    os_name, arch, *variant = platform.split("/")
    for entry in json.loads(body).get("manifests", []):
        plat = entry.get("platform", {})
        if plat.get("os") == os_name and plat.get("architecture") == arch:
            if variant and plat.get("variant") not in (None, variant[0]):
                continue
            return str(entry["digest"]), digest
    raise RegistryError(f"{ref} has no image for {platform}")


# -- pushing an OCI layout -------------------------------------------------------------

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRIES = 5


#: The longest wait a registry's Retry-After header can ask for between two attempts.
MAX_RETRY_AFTER = 60.0


class TransientError(Exception):
    """A failure worth retrying (connection dropped, 429, 5xx)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a 429 or 503 asks the client to wait (Retry-After: N), if it says."""
    text = next((v for k, v in headers.items() if k.lower() == "retry-after"), "").strip()
    return min(float(text), MAX_RETRY_AFTER) if text.isdigit() else None


def with_retries(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int | None = None,
    first_delay: float = 0.5,
    on_line: Callable[[str], None] | None = None,
) -> T:
    """Run `action`; retry transient failures with exponential backoff, `attempts` times at
    most, waiting at least what the registry's Retry-After asks."""
    attempts = attempts or RETRIES
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TransientError as exc:
            if attempt == attempts:
                raise RegistryError(f"{what} failed after {attempts} attempts: {exc}") from None
            wait = max(delay, exc.retry_after or 0.0)
            if on_line:
                on_line(f"push: {what}: {exc}; retrying in {wait:.1f} s ({attempt}/{attempts})")
            time.sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")


class FileBody:
    """A file sent as a request body in 1 MiB pieces, never whole in memory; each time the
    request is sent (again, after a 401) it is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk


class Pusher:
    """Sends the blobs and manifest of an OCI image layout to one repository."""

    def __init__(
        self, client: RegistryClient, path: str, on_line: Callable[[str], None] | None
    ) -> None:
        self.client = client
        self.path = path
        self.scope = f"repository:{path}:pull,push"
        self.on_line = on_line

    def _call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | FileBody | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            status, response_headers, body = self.client.request(
                method, url, scope=self.scope, headers=headers, data=data
            )
        except RegistryUnreachable as exc:  # refused, reset, timed out: worth another try
            raise TransientError(str(exc)) from None
        lowered = {k.lower(): v for k, v in response_headers.items()}
        if status in TRANSIENT_STATUS:
            raise TransientError(
                f"{self.client.registry} answered {status}", retry_after=_retry_after(lowered)
            )
        denied = status == 403 or (
            status == 401
            and self.client.credentials is not None
            and "insufficient_scope" in lowered.get("www-authenticate", "")
        )
        if denied:
            raise RegistryError(
                f"denied: {self.client.registry} does not let these credentials push to "
                f"{self.path} ({status}: {_why(body)})"
            )
        if status == 401:
            raise self.client.unauthorized()
        return status, lowered, body

    def has_blob(self, digest: str) -> bool:
        def attempt() -> bool:
            status, _, _ = self._call("HEAD", f"/v2/{self.path}/blobs/{digest}")
            return status == 200

        return with_retries(attempt, what=f"checking {digest[:19]}", on_line=self.on_line)

    def push_blob(self, digest: str, path: Path) -> None:
        """Upload the blob at `path` unless the registry has it, streamed from the file.
        Its bytes are checked against `digest` before an upload starts (`CorruptEntry`:
        nothing sent)."""

        def attempt() -> None:
            status, _, _ = self._call("HEAD", f"/v2/{self.path}/blobs/{digest}")
            if status == 200:
                return
            try:
                check_file(path, digest)
                body = FileBody(path)
            except FileNotFoundError:
                raise CorruptEntry(path, digest, "no such file") from None
            status, headers, answer = self._call(
                "POST", f"/v2/{self.path}/blobs/uploads/", data=b""
            )
            if status != 202 or "location" not in headers:
                raise RegistryError(
                    f"{self.client.registry} refused an upload to {self.path} "
                    f"({status}): {_why(answer)}"
                )
            location = headers["location"]
            if location.startswith("/"):
                location = base_url(self.client.registry) + location
            separator = "&" if "?" in location else "?"
            status, _, answer = self._call(
                "PUT",
                f"{location}{separator}digest={digest}",
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(body.size),
                },
                data=body,
            )
            if status != 201:
                raise RegistryError(
                    f"{self.client.registry} refused blob {digest[:19]} ({status}): {_why(answer)}"
                )

        with_retries(attempt, what=f"uploading {digest[:19]}", on_line=self.on_line)

    def push_manifest(self, reference: str, manifest: bytes, media_type: str) -> str:
        def attempt() -> str:
            status, headers, body = self._call(
                "PUT",
                f"/v2/{self.path}/manifests/{reference}",
                headers={"Content-Type": media_type},
                data=manifest,
            )
            if status != 201:
                raise RegistryError(
                    f"{self.client.registry} refused the manifest for {self.path}:{reference} "
                    f"({status}): {_why(body)}"
                )
            return headers.get("docker-content-digest", "")

        return with_retries(attempt, what=f"writing manifest {reference}", on_line=self.on_line)


def _why(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors", [])
        return (
            "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or body[:200].decode()
        )
    except (ValueError, AttributeError, UnicodeDecodeError):
        return body[:200].decode(errors="replace")


def push_layout(
    layout: Path,
    repository: ImageReference,
    tags: Sequence[str],
    *,
    credentials: Credentials | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Push the single image of an OCI layout under each tag; return the registry's digest.

    Raises `CorruptEntry` (before anything of that blob is sent) when a blob of the
    layout does not match its digest.
    """
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    descriptor = index["manifests"][0]
    digest: str = descriptor["digest"]
    blobs = layout / "blobs" / "sha256"
    manifest_path = blobs / digest.removeprefix("sha256:")
    try:
        manifest_bytes = manifest_path.read_bytes()
    except FileNotFoundError:
        raise CorruptEntry(manifest_path, digest, "no such file") from None
    check_bytes(manifest_bytes, digest, what=manifest_path)
    manifest = json.loads(manifest_bytes)
    media_type = manifest.get("mediaType") or descriptor["mediaType"]
    client = RegistryClient(repository.registry, credentials)
    pusher = Pusher(client, repository.path, on_line)
    for blob in [manifest["config"], *manifest["layers"]]:
        if on_line:
            on_line(f"push: blob {blob['digest'][:19]} ({blob['size'] / 1e6:.1f} MB)")
        pusher.push_blob(blob["digest"], blobs / blob["digest"].removeprefix("sha256:"))
    confirmed = pusher.push_manifest(digest, manifest_bytes, media_type)
    if confirmed and confirmed != digest:
        raise RegistryError(
            f"{repository.registry} stored the manifest as {confirmed}, expected {digest}"
        )
    for tag in tags:
        pusher.push_manifest(tag, manifest_bytes, media_type)
    return digest
