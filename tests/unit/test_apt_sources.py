"""[apt] mirror and [[apt.sources]]: key files, the spec's checks, what the probe gives apt,
how apt's complaints become one line each, and what the lock pins."""

from __future__ import annotations

import base64
import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from imagesmith.errors import ResolveError, SpecError
from imagesmith.locking.apt_probe import _download
from imagesmith.locking.apt_sources import (
    CA_FILE,
    SourceUnreachable,
    host_ca_bundle,
    missing_index,
    needs_host_network,
    probe_setup,
    source_locks,
    update_problems,
)
from imagesmith.locking.resolve import inputs_hash
from imagesmith.model.lock import AptLock, AptSourceLock, parse_lock
from imagesmith.model.openpgp import KeyFileError, parse_key, read_key
from imagesmith.model.spec_loading import load_spec
from tests.fixtures.make_lock import make_lock

KEYS = Path(__file__).resolve().parent.parent / "fixtures" / "keys"
# What `gpg --list-keys --with-colons` said of the fixture keys when they were made.
LAB = "A5EA94B6A6BA355AB3ADBFA801BB7BFFA482D061"
SECOND = "908367AC3B23554183D46E21275C6536B8446E21"  # RSA 2048

PLAIN_INPUTS = "sha256:44bd75450674d18c4cfe8ad96c7812031c0a1f2bfdb6ccfe1a923284f921fa4b"
SOURCE = (
    '[[apt.sources]]\nurl = "http://127.0.0.1:8901/lab"\nsuites = ["stable"]\n'
    'components = ["main"]\nkey = "lab.asc"\n'
)


def _spec(tmp_path: Path, apt: str = SOURCE, packages: str = '["lab-tools"]') -> Path:
    for name in ("lab.asc", "lab.gpg", "keyring.gpg"):
        (tmp_path / name).write_bytes((KEYS / name).read_bytes())
    path = tmp_path / "env.toml"
    path.write_text(
        f'name = "x"\n[base]\nimage = "debian:bookworm"\n[apt]\npackages = {packages}\n{apt}'
    )
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.lines()


# -- key files -----------------------------------------------------------------------


def test_armored_and_binary_keys_give_gpgs_fingerprints() -> None:
    armored, binary = read_key(KEYS / "lab.asc"), read_key(KEYS / "lab.gpg")
    assert armored.fingerprints == binary.fingerprints == (LAB,)
    assert armored.binary == binary.binary == (KEYS / "lab.gpg").read_bytes()
    assert read_key(KEYS / "keyring.gpg").fingerprints == (LAB, SECOND)


def test_armor_with_headers_and_crlf_lines_is_read() -> None:
    text = (KEYS / "lab.asc").read_text()
    begin = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
    with_headers = text.replace(begin, begin + "Comment: lab archive\nVersion: 2\n")
    assert parse_key(with_headers.replace("\n", "\r\n").encode()).fingerprints == (LAB,)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty: no OpenPGP public key in it"),
        (b"hello\n", "is not an OpenPGP key (bad packet header)"),
        (
            b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nAAAA\n-----END PGP PRIVATE KEY BLOCK-----\n",
            "is a secret key; give the public key (gpg --export --armor KEYID)",
        ),
        (b"\xc5\x01\x04", "is a secret key; give the public key (gpg --export --armor KEYID)"),
        (b"\xc2\x01\x04", "is not an OpenPGP public key (it does not start with one)"),
        (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDME\n", "has no -----END PGP PUBLIC"),
        (
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!\n-----END PGP PUBLIC KEY BLOCK-----",
            "has an armored block that is not valid base64",
        ),
        (b"\xff\xfe\x00", "is not an OpenPGP key (partial-length packets)"),
    ],
)
def test_what_is_not_a_public_key_says_why(data: bytes, message: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_key(data)
    assert str(caught.value).startswith(message)


def test_a_key_cut_short_is_refused() -> None:
    binary = (KEYS / "lab.gpg").read_bytes()
    with pytest.raises(KeyFileError, match="cut short"):
        parse_key(binary[: len(binary) // 2])


# -- the spec ------------------------------------------------------------------------


def test_a_source_is_modelled(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, SOURCE.replace('lab"', 'lab/"')))
    (source,) = spec.apt_sources
    assert (source.url, source.suites, source.components, source.key) == (
        "http://127.0.0.1:8901/lab",  # the trailing '/' dropped
        ("stable",),
        ("main",),
        "lab.asc",
    )
    assert needs_host_network(spec)
    assert source_locks(spec) == (
        AptSourceLock(
            url="http://127.0.0.1:8901/lab",
            suites=("stable",),
            components=("main",),
            key="lab.asc",
            fingerprints=(LAB,),
        ),
    )


@pytest.mark.parametrize(
    ("apt", "problem"),
    [
        (
            SOURCE.replace("lab.asc", "missing.asc"),
            '$.apt.sources[0].key: "missing.asc" does not exist (looked for',
        ),
        (SOURCE.replace("lab.asc", "env.toml"), '$.apt.sources[0].key: "env.toml" is not an'),
        (
            SOURCE.replace("lab.asc", "../lab.asc"),
            '$.apt.sources[0].key: "../lab.asc" is outside the spec\'s folder; keep the key',
        ),
        (
            SOURCE.replace('components = ["main"]\n', ""),
            '$.apt.sources[0]: needs components (e.g. ["main"]) for suites that are not flat',
        ),
        (
            SOURCE.replace('["stable"]', '["cran40/"]'),
            "$.apt.sources[0].components: must be empty for a flat repository",
        ),
        (
            SOURCE.replace('["stable"]', '["cran40/", "stable"]'),
            "$.apt.sources[0].suites: mixes flat directories (ending with '/') and suites",
        ),
        (
            SOURCE.replace("http://", "http://lab:s3cret@"),
            "$.apt.sources[0].url: holds a user name or password, which would be published",
        ),
        (
            'mirror = "http://m.example/debian"\nsnapshot = "20250520T000000Z"\n',
            "$.apt.mirror: cannot be used with [apt] snapshot",
        ),
        (
            'mirror = "ftp://m.example/debian"\n',
            '$.apt.mirror: "ftp://m.example/debian" is not an http://',
        ),
        (
            SOURCE.replace('suites = ["stable"]\n', ""),
            '$.apt.sources[0]: missing required key "suites"',
        ),
        (
            SOURCE.replace('["stable"]', '["//"]').replace('components = ["main"]\n', ""),
            '$.apt.sources[0].suites[0]: "//" is not a suite name',
        ),
    ],
)
def test_each_bad_source_is_one_line(tmp_path: Path, apt: str, problem: str) -> None:
    (tmp_path / "inner").mkdir()
    problems = _problems(_spec(tmp_path / "inner" if "../" in apt else tmp_path, apt))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"env.toml: {problem}"), problems[0]


def test_a_flat_repository_needs_no_components(tmp_path: Path) -> None:
    flat = SOURCE.replace('["stable"]', '["bookworm-cran40/"]').replace(
        'components = ["main"]\n', ""
    )
    spec = load_spec(_spec(tmp_path, flat.replace("127.0.0.1:8901", "cloud.r-project.org")))
    assert spec.apt_sources[0].components == ()
    assert not needs_host_network(spec)
    script, _ = probe_setup(spec)
    assert "'Suites: bookworm-cran40/'" in script and "Components" not in script


def test_https_sources_get_the_hosts_ca_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base image rarely has CA certificates: apt is given the host's (SSL_CERT_FILE
    first, as the host's own downloads), in pieces no command-line argument outgrows."""
    pem = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 200_000 + b"\n-----END CERTIFICATE-----\n"
    (tmp_path / "bundle.pem").write_bytes(pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "bundle.pem"))
    assert host_ca_bundle() == pem

    plain, plain_env = probe_setup(load_spec(_spec(tmp_path)))
    assert CA_FILE not in plain and not any(k.startswith("IMAGESMITH_CA") for k in plain_env)

    https = SOURCE.replace("http://127.0.0.1:8901", "https://cran.example")
    script, env = probe_setup(load_spec(_spec(tmp_path, https)))
    pieces = sorted((k for k in env if k.startswith("IMAGESMITH_CA_")), key=lambda k: int(k[14:]))
    assert len(pieces) > 1 and all(len(env[k]) <= 64 * 1024 for k in pieces)
    assert base64.b64decode("".join(env[k] for k in pieces)) == pem
    names = " ".join(f'"${key}"' for key in pieces)
    assert f"printf %s {names} | base64 -d > {CA_FILE}" in script
    assert f"echo 'Acquire::https::CAInfo \"{CA_FILE}\";' > /etc/apt/apt.conf.d/" in script
    # The certificates are the host's, not an input: the lock does not change with them.
    before = inputs_hash(load_spec(_spec(tmp_path, https)), "linux/amd64")
    (tmp_path / "other.pem").write_bytes(pem.replace(b"A", b"B"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "other.pem"))
    assert inputs_hash(load_spec(_spec(tmp_path, https)), "linux/amd64") == before


def test_the_hosts_ca_folder_when_it_has_no_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "b.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----")
    (folder / "a.0").write_bytes(b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n")
    (folder / "README").write_text("not a certificate")
    monkeypatch.setattr(
        "ssl.get_default_verify_paths",
        lambda: ssl.DefaultVerifyPaths(None, str(folder), "", "", "", ""),  # type: ignore[call-arg]
    )
    assert host_ca_bundle() == (
        b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"
        b"-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
    )


@pytest.mark.parametrize("suite", ["/", "./"])
def test_a_flat_repository_at_its_url_is_suite_slash(tmp_path: Path, suite: str) -> None:
    """NVIDIA's CUDA repository: ``deb URL/debian12/x86_64/ /``."""
    flat = SOURCE.replace('["stable"]', f'["{suite}"]').replace('components = ["main"]\n', "")
    spec = load_spec(_spec(tmp_path, flat))
    assert spec.apt_sources[0].suites == (suite,)
    script, _ = probe_setup(spec)
    assert f"'Suites: {suite}'" in script and "Components" not in script


# -- what the probe gives apt ----------------------------------------------------------


def test_each_source_is_signed_by_its_own_key_and_never_trusted(tmp_path: Path) -> None:
    two = SOURCE + SOURCE.replace("8901/lab", "8902/other").replace("lab.asc", "keyring.gpg")
    spec = load_spec(_spec(tmp_path, 'mirror = "http://mirror.example.edu/debian/"\n' + two))
    script, env = probe_setup(spec)
    assert "trusted" not in script.lower()
    for index, key in enumerate(("lab.gpg", "keyring.gpg")):
        assert base64.b64decode(env[f"IMAGESMITH_KEY_{index}"]) == (KEYS / key).read_bytes()
        assert f"'Signed-By: /etc/apt/keyrings/imagesmith-{index}.gpg'" in script
        assert f"> /etc/apt/sources.list.d/imagesmith-{index}.sources" in script
    assert "'URIs: http://127.0.0.1:8902/other'" in script
    assert env["IMAGESMITH_MIRROR"] == "http://mirror.example.edu/debian"
    assert "deb\\.debian\\.org/debian" in script  # only Debian's own archive is replaced


def test_nothing_is_added_for_a_spec_without_sources(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, apt=""))
    assert probe_setup(spec) == ("", {})
    assert not needs_host_network(spec)


# -- apt's complaints (apt 2.6's wording) ------------------------------------------------

URL = "http://127.0.0.1:8901/lab"


@pytest.mark.parametrize(
    ("said", "kind", "line"),
    [
        (
            f"W: GPG error: {URL} stable InRelease: The following signatures couldn't be "
            "verified because the public key is not available: NO_PUBKEY 99021E194265BE59",
            ResolveError,
            f"apt source {URL}: its Release is not signed by the key in lab.asc ({LAB}); "
            f"apt says: GPG error: {URL} stable InRelease: The following",
        ),
        (
            f"E: The repository '{URL} stable InRelease' is not signed.",
            ResolveError,
            f"apt source {URL}: its Release is not signed by the key in lab.asc",
        ),
        (
            f"E: The repository '{URL} oldstable Release' does not have a Release file.",
            ResolveError,
            f"apt source {URL}: no such suite or component there",
        ),
        (
            f"W: Failed to fetch {URL}/dists/stable/InRelease  Could not connect to "
            "127.0.0.1:8901 (127.0.0.1). - connect (111: Connection refused)",
            SourceUnreachable,
            f"apt source {URL}: cannot reach it; apt says: Failed to fetch {URL}/dists/stable/"
            "InRelease Could not connect",
        ),
        (
            "W: Failed to fetch http://mirror.example.edu/debian/dists/bookworm/InRelease  "
            "Could not resolve 'mirror.example.edu'",
            SourceUnreachable,
            "apt mirror http://mirror.example.edu/debian: cannot reach it",
        ),
        (
            f"E: Failed to fetch {URL}/dists/stable/main/binary-amd64/Packages  404  Not Found "
            "[IP: 127.0.0.1 8901]",
            SourceUnreachable,
            f"apt source {URL}: its signed Release lists /dists/stable/main/binary-amd64/"
            "Packages but the server does not have it (a mirror being updated? try again "
            "later); apt says: Failed to fetch",
        ),
        (
            f"W: Failed to fetch {URL}/dists/stable/InRelease  Certificate verification "
            "failed: The certificate is NOT trusted. The certificate issuer is unknown.  "
            "Could not handshake: Error in the certificate verification. [IP: 127.0.0.1 8901]",
            SourceUnreachable,
            f"apt source {URL}: this host does not trust its HTTPS certificate (apt is given "
            "the CA certificates the host trusts: add its CA to them, or name a bundle with "
            "SSL_CERT_FILE); apt says: Failed to fetch",
        ),
        (
            f"E: Release file for {URL}/dists/stable/InRelease is expired (invalid since 3d "
            "4h 5min 6s). Updates for this repository will not be applied.",
            SourceUnreachable,
            f"apt source {URL}: its signed Release has expired (its Valid-Until is past), and "
            "apt refuses an expired Release: the archive must publish a newly signed one (a "
            f"stale mirror?); apt says: Release file for {URL}/dists/stable/InRelease is expired",
        ),
        (
            "E: Release file for http://mirror.example.edu/debian/dists/bookworm/InRelease is "
            "not valid yet (invalid for another 2h 1min 3s). Updates for this repository will "
            "not be applied.",
            SourceUnreachable,
            "apt mirror http://mirror.example.edu/debian: its signed Release is dated in the "
            "future, and apt refuses it: this machine's clock is behind, or the archive's ahead",
        ),
    ],
)
def test_apt_complaints_become_one_line_with_the_right_exit(
    tmp_path: Path, said: str, kind: type[Exception], line: str
) -> None:
    spec = load_spec(_spec(tmp_path, 'mirror = "http://mirror.example.edu/debian"\n' + SOURCE))
    found = update_problems(spec, [said, said, "W: unrelated http://deb.debian.org/debian"])
    assert type(found) is kind
    assert str(found).startswith(line) and "\n" not in str(found)


def test_complaints_about_other_sources_are_not_ours(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    other = f"W: Failed to fetch {URL}-old/dists/stable/InRelease  Could not connect"
    assert update_problems(spec, [other]) is None
    assert update_problems(load_spec(_spec(tmp_path, apt="")), [other]) is None


def test_a_key_changed_since_validation_is_one_line(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    (tmp_path / "lab.asc").write_text("not a key any more")
    with pytest.raises(ResolveError) as caught:
        source_locks(spec)
    assert str(caught.value) == (
        'apt source http://127.0.0.1:8901/lab: key "lab.asc" is not an OpenPGP key '
        "(bad packet header)"
    )


def test_a_build_needs_no_key_file_but_lock_does(tmp_path: Path) -> None:
    """The lock pins the keys' fingerprints: with a matching lock, the spec is good to
    build without its key files (as after `imagesmith unpack`); resolving needs them."""
    from imagesmith.model.lock import write_lock

    spec = load_spec(_spec(tmp_path))
    lock = replace(make_lock(spec.path), apt=AptLock(suite="bookworm", sources=source_locks(spec)))
    write_lock(lock, spec.lock_path)
    (tmp_path / "lab.asc").unlink()
    assert load_spec(spec.path).apt_sources == spec.apt_sources
    with pytest.raises(ResolveError) as caught:
        source_locks(spec)
    assert str(caught.value).startswith(
        'apt source http://127.0.0.1:8901/lab: key "lab.asc" does not exist (looked for'
    )
    spec.lock_path.unlink()  # no lock: the spec itself is checked, key files included
    problems = _problems(spec.path)
    assert problems == [
        f'env.toml: $.apt.sources[0].key: "lab.asc" does not exist (looked for {tmp_path / "lab.asc"})'
    ]


# -- the lock ------------------------------------------------------------------------


def test_the_lock_pins_each_keys_fingerprints_and_reads_them_back(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    lock = replace(make_lock(spec.path), apt=AptLock(suite="bookworm", sources=source_locks(spec)))
    text = lock.to_toml()
    assert f'fingerprints = [\n    "{LAB}",\n]' in text
    again = parse_lock(text, path=tmp_path / "env.lock")
    assert again.apt.sources == lock.apt.sources and again.lock_hash == lock.lock_hash


def test_sources_and_keys_are_resolution_inputs_and_their_absence_changes_nothing(
    tmp_path: Path,
) -> None:
    spec = load_spec(_spec(tmp_path))
    before = inputs_hash(spec, "linux/amd64")
    (tmp_path / "lab.asc").write_bytes((KEYS / "keyring.gpg").read_bytes())
    assert inputs_hash(spec, "linux/amd64") != before  # another key: resolve again
    # A spec without sources or mirror hashes as imagesmith 0.6.0 hashed it before sources
    # existed (the value that code gave), so no lock made then resolves again.
    plain = load_spec(_spec(tmp_path, apt=""))
    assert (plain.apt_sources, plain.apt_mirror) == ((), None)
    assert inputs_hash(plain, "linux/amd64") == PLAIN_INPUTS


@pytest.mark.parametrize(
    ("url", "filename", "root", "path"),
    [
        (
            "http://h/lab/pool/main/l/lab-tools/lab-tools_1.0_all.deb",
            "pool/main/l/lab-tools/lab-tools_1.0_all.deb",
            "http://h/lab",
            "pool/main/l/lab-tools/lab-tools_1.0_all.deb",
        ),
        (  # a flat repository: Filename is relative to its URL
            "https://cran.example/debian/bookworm-cran40/r-base-core_4.5.2-1_amd64.deb",
            "bookworm-cran40/r-base-core_4.5.2-1_amd64.deb",
            "https://cran.example/debian",
            "bookworm-cran40/r-base-core_4.5.2-1_amd64.deb",
        ),
        (
            "http://h/flat/./tool_1_all.deb",
            "./tool_1_all.deb",
            "http://h/flat",
            "tool_1_all.deb",
        ),
    ],
)
def test_where_a_deb_lives(url: str, filename: str, root: str, path: str) -> None:
    assert _download(url, filename) == (root, path)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3:80", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("registry.example.edu:5000", False),
        ("127.example.edu", False),  # a name that starts with 127. is not an address
        ("10.0.0.1:5000", False),
    ],
)
def test_one_rule_tells_this_machine_from_others(host: str, loopback: bool) -> None:
    from imagesmith.model.reference import is_loopback, is_loopback_url

    assert is_loopback(host) is loopback
    in_url = f"[{host}]" if host.count(":") > 1 and not host.startswith("[") else host
    assert is_loopback_url(f"http://{in_url}/lab") is loopback


@pytest.mark.parametrize(
    ("said", "index"),
    [
        (
            "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm-updates/main/"
            "binary-amd64/Packages.xz  404  Not Found [IP: 151.101.2.132 80]",
            "http://deb.debian.org/debian/dists/bookworm-updates/main/binary-amd64/Packages.xz",
        ),
        (
            f"W: Failed to fetch {URL}/dists/stable/main/i18n/Translation-en  404  File not found",
            f"{URL}/dists/stable/main/i18n/Translation-en",
        ),
        # A Release that is not there is a suite that is not there, not a half-updated one.
        (f"E: Failed to fetch {URL}/dists/oldstable/InRelease  404  Not Found", None),
        (f"E: Failed to fetch {URL}/dists/oldstable/Release  404  Not Found", None),
        (f"E: Failed to fetch {URL}/dists/oldstable/Release.gpg  404  Not Found", None),
        # Not under dists/, or not a 404.
        (f"E: Failed to fetch {URL}/pool/main/l/lab-tools_1.0_all.deb  404  Not Found", None),
        (f"E: Failed to fetch {URL}/dists/stable/main/binary-amd64/Packages  Hash Sum", None),
        (f"E: Failed to fetch {URL}/dists/stable  404  Not Found", None),
    ],
)
def test_an_index_missing_under_a_checked_release_is_a_half_updated_archive(
    said: str, index: str | None
) -> None:
    assert missing_index(said) == index
