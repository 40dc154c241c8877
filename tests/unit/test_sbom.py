"""SBOMs from a lock: validated by the official tooling (spdx-tools, cyclonedx-python-lib)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from packageurl import PackageURL
from typer.testing import CliRunner

from imagesmith.attest.inventory import (
    inventory,
    parse_dpkg_query,
    parse_venv_licenses,
    unique_ids,
)
from imagesmith.attest.purl import deb_distro, oci_purl
from imagesmith.attest.sbom import cyclonedx_document, render_sbom, spdx_document
from imagesmith.attest.target import lock_from_labels
from imagesmith.cli import app
from imagesmith.errors import InputError
from imagesmith.model.lock import AptPackage, BaseImageLock, Lock, write_lock
from imagesmith.render.containerfile import embedded_lock
from tests.conftest import RECIPES
from tests.fixtures.make_lock import make_lock

runner = CliRunner()
PYSPDXTOOLS = Path(sys.executable).with_name("pyspdxtools")


@pytest.fixture
def lock(example_dir: Path) -> Lock:
    return make_lock(example_dir / "env.toml")


def _pyspdxtools(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYSPDXTOOLS), "-i", str(path)], capture_output=True, text=True, check=False
    )


def _spdx_problems(path: Path) -> list[str]:
    """What `pyspdxtools -i` checks, in-process (its parser and full validator)."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    return [m.validation_message for m in validate_full_spdx_document(parse_file(str(path)))]


def test_spdx_validates_with_pyspdxtools(lock: Lock, tmp_path: Path) -> None:
    good = tmp_path / "good.spdx.json"
    good.write_text(render_sbom(inventory(lock), "spdx"))
    run = _pyspdxtools(good)
    assert run.returncode == 0, run.stdout + run.stderr
    # The validator can fail: the same document with a relationship to nothing is refused.
    doc = json.loads(good.read_text())
    doc["relationships"].append(
        {
            "spdxElementId": "SPDXRef-image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": "SPDXRef-nothing",
        }
    )
    bad = tmp_path / "bad.spdx.json"
    bad.write_text(json.dumps(doc))
    assert _pyspdxtools(bad).returncode != 0


def test_cyclonedx_validates_with_the_official_schema(lock: Lock) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    validator = JsonStrictValidator(SchemaVersion.V1_6)
    text = render_sbom(inventory(lock), "cyclonedx")
    assert validator.validate_str(text) is None
    doc = json.loads(text)
    doc["components"][0]["hashes"] = [{"alg": "SHA-256", "content": "not-hex"}]
    assert validator.validate_str(json.dumps(doc)) is not None


def test_every_pinned_package_is_listed_with_purl_and_hashes(lock: Lock) -> None:
    assert lock.python is not None
    spdx = spdx_document(inventory(lock))
    by_purl = {
        p["externalRefs"][0]["referenceLocator"]: p for p in spdx["packages"] if "externalRefs" in p
    }
    for deb in lock.apt.packages:
        purl = f"pkg:deb/debian/{deb.name}@{deb.version}?arch=amd64&distro=debian-12"
        assert PackageURL.from_string(purl).to_string() in by_purl, purl
        package = by_purl[PackageURL.from_string(purl).to_string()]
        assert package["checksums"] == [
            {"algorithm": "SHA256", "checksumValue": deb.sha256.removeprefix("sha256:")}
        ]
        assert package["licenseConcluded"] == "NOASSERTION"
    cdx = cyclonedx_document(inventory(lock))
    cdx_by_purl = {c["purl"]: c for c in cdx["components"]}
    for dist in lock.python.packages:
        purl = f"pkg:pypi/{dist.name}@{dist.version}"
        admitted = [p["value"] for p in cdx_by_purl[purl]["properties"] if "wheel" in p["name"]]
        assert admitted == sorted(h.removeprefix("sha256:") for h in dist.hashes)
        assert all(h in by_purl[purl]["comment"] for h in admitted)
        assert "checksums" not in by_purl[purl]  # several admitted wheels: no single checksum
    # base, apt closure, Python distributions, and nothing else
    assert len(cdx["components"]) == 1 + len(lock.apt.packages) + len(lock.python.packages)
    assert len(spdx["packages"]) == 2 + len(lock.apt.packages) + len(lock.python.packages)
    base = cdx["components"][0]
    assert base["purl"] == (
        f"pkg:oci/debian@{lock.base.digest}?repository_url=docker.io/library/debian&tag=bookworm"
    )
    assert base["hashes"] == [{"alg": "SHA-256", "content": lock.base.digest[7:]}]


def test_purls_are_in_packageurl_python_canonical_form(lock: Lock) -> None:
    for component in inventory(lock).components:
        assert PackageURL.from_string(component.purl).to_string() == component.purl


def test_relationships_describe_contain_and_direct_dependencies(lock: Lock) -> None:
    spdx = spdx_document(inventory(lock))
    rels = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
        for r in spdx["relationships"]
    }
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-image") in rels
    contained = {r[2] for r in rels if r[1] == "CONTAINS"}
    assert contained == {p["SPDXID"] for p in spdx["packages"]} - {"SPDXRef-image"}
    direct = {r[2] for r in rels if r[1] == "DEPENDS_ON"}
    assert direct == {
        "SPDXRef-deb-git-amd64",
        "SPDXRef-deb-curl-amd64",
        "SPDXRef-deb-libhdf5-dev-amd64",
        "SPDXRef-deb-tzdata-amd64",
        "SPDXRef-pypi-numpy",
        "SPDXRef-pypi-requests",
        "SPDXRef-pypi-pyyaml",
    }
    cdx = cyclonedx_document(inventory(lock))
    assert cdx["dependencies"] == [
        {
            "ref": "image:lab-analysis:1.0.0",
            "dependsOn": [
                c["purl"]
                for c in cdx["components"]
                if c["name"]
                in {"debian", "git", "curl", "libhdf5-dev", "tzdata", "numpy", "requests", "pyyaml"}
            ],
        }
    ]


def test_same_lock_same_bytes_and_ids_follow_the_lock(lock: Lock) -> None:
    for fmt in ("spdx", "cyclonedx"):
        assert render_sbom(inventory(lock), fmt) == render_sbom(inventory(lock), fmt)
    spdx = spdx_document(inventory(lock))
    assert spdx["creationInfo"]["created"] == "2025-05-20T00:00:00Z"  # the lock's epoch
    assert spdx["documentNamespace"].endswith(lock.lock_hash.removeprefix("sha256:"))
    other = replace(lock, source_date_epoch=lock.source_date_epoch + 1)
    assert spdx_document(inventory(other))["documentNamespace"] != spdx["documentNamespace"]
    assert (
        cyclonedx_document(inventory(other))["serialNumber"]
        != cyclonedx_document(inventory(lock))["serialNumber"]
    )


def test_local_base_has_no_manifest_digest_in_its_purl() -> None:
    local = BaseImageLock(
        reference="imagesmith/debian:bookworm",
        repository="imagesmith/debian",
        digest="sha256:" + "ab" * 32,
        local=True,
    )
    assert oci_purl(local) == "pkg:oci/debian?repository_url=imagesmith/debian&tag=bookworm"


def test_distro_from_the_suite() -> None:
    assert deb_distro("bookworm") == ("debian", "debian-12")
    assert deb_distro("trixie") == ("debian", "debian-13")
    assert deb_distro("sid") == ("debian", "debian-sid")
    assert deb_distro("noble") == ("ubuntu", "ubuntu-24.04")
    assert deb_distro("jammy") == ("ubuntu", "ubuntu-22.04")


def test_spdx_ids_stay_distinct_after_sanitising() -> None:
    ids = unique_ids("SPDXRef-", ["deb-libstdc++6-amd64", "deb-libstdc..6-amd64", "deb-a+b"])
    assert len(set(ids)) == 3
    assert all(all(ch.isalnum() or ch in ".-" for ch in i) for i in ids)


def test_multiarch_packages_get_their_own_entries(lock: Lock) -> None:
    i386 = AptPackage(name="libc6", version="2.36-9+deb12u10", arch="i386", sha256="cd" * 32)
    amd64 = replace(i386, arch="amd64", sha256="ef" * 32)
    both = replace(lock, apt=replace(lock.apt, packages=(*lock.apt.packages, i386, amd64)))
    ids = [p["SPDXID"] for p in spdx_document(inventory(both))["packages"]]
    assert "SPDXRef-deb-libc6-amd64" in ids and "SPDXRef-deb-libc6-i386" in ids


# -- the image route: the lock travels in a label -------------------------------------------


def test_lock_from_labels_reads_either_prefix(lock: Lock) -> None:
    for label in ("io.imagesmith.lock", "dev.imagesmith.lock"):
        found = lock_from_labels("img:1", {label: embedded_lock(lock)})
        assert found.lock_hash == lock.lock_hash


def test_an_image_without_the_label_names_the_missing_label() -> None:
    with pytest.raises(InputError) as caught:
        lock_from_labels("debian:bookworm", {"org.opencontainers.image.title": "x"})
    assert str(caught.value) == (
        "debian:bookworm was not built by imagesmith: it has no dev.imagesmith.lock or "
        "io.imagesmith.lock label"
    )


@pytest.mark.parametrize("value", ["%%%", base64.b64encode(b"not zlib").decode()])
def test_a_damaged_label_is_an_input_error(value: str, lock: Lock) -> None:
    with pytest.raises(InputError, match="io.imagesmith.lock label is damaged"):
        lock_from_labels("img:1", {"io.imagesmith.lock": value})
    bad_lock = base64.b64encode(zlib.compress(b"lock_version = 1\n")).decode()
    with pytest.raises(InputError, match="not a valid lock"):
        lock_from_labels("img:1", {"io.imagesmith.lock": bad_lock})


# -- the command --------------------------------------------------------------------------


def test_cli_writes_both_formats_from_the_spec(lock: Lock, example_dir: Path) -> None:
    write_lock(lock, example_dir / "env.lock")
    spec = str(example_dir / "env.toml")
    out = example_dir / "sbom.json"
    result = runner.invoke(app, ["sbom", spec, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == render_sbom(inventory(lock), "spdx")
    result = runner.invoke(app, ["sbom", spec, "--format", "cyclonedx"])
    assert result.exit_code == 0, result.output
    assert result.stdout == render_sbom(inventory(lock), "cyclonedx")
    # env.lock itself works as well
    result = runner.invoke(app, ["sbom", str(example_dir / "env.lock"), "-f", "cyclonedx"])
    assert result.stdout == render_sbom(inventory(lock), "cyclonedx")


def test_cli_unknown_format_exits_2_before_anything_else(example_dir: Path) -> None:
    out = example_dir / "sbom.json"
    result = runner.invoke(
        app, ["sbom", str(example_dir / "env.toml"), "-f", "xml", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --format must be spdx or cyclonedx, not 'xml'"
    assert not out.exists()


def test_cli_without_a_lock_says_how_to_make_one(example_dir: Path) -> None:
    result = runner.invoke(app, ["sbom", str(example_dir / "env.toml")])
    assert result.exit_code == 2
    assert "run `imagesmith lock " in result.stderr and "env.toml`" in result.stderr
    assert "Traceback" not in result.output


# -- the base image's own packages, read from an image's dpkg database --------------------


DPKG_OUTPUT = (
    "ii \tbase-files\t12.4+deb12u10\tamd64\n"
    "ii \tcurl\t7.88.1-10+deb12u5\tamd64\n"  # older than the lock's: the lock's pin wins
    "rc \tgone\t1.0\tamd64\n"  # removed, config files left: not installed
    "ii \tlibc6\t2.36-9+deb12u10\tamd64\n"
    "dpkg-query: warning: something on stderr\n"
)


def test_parse_dpkg_query_keeps_installed_packages_only() -> None:
    assert [p.name for p in parse_dpkg_query(DPKG_OUTPUT)] == ["base-files", "curl", "libc6"]


def test_base_packages_join_the_lock_pins(lock: Lock, tmp_path: Path) -> None:
    inv = inventory(lock, parse_dpkg_query(DPKG_OUTPUT))
    debs = [c for c in inv.components if c.kind == "deb"]
    assert [c.name for c in debs] == sorted(c.name for c in debs)
    from_base = {c.name for c in debs if c.in_base}
    assert from_base == {"base-files", "libc6"}
    curl = next(c for c in debs if c.name == "curl")
    assert curl.version == "7.88.1-10+deb12u12" and curl.sha256  # the lock's, with its hash
    spdx = spdx_document(inv)
    rels = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
        for r in spdx["relationships"]
    }
    assert ("SPDXRef-base-debian", "CONTAINS", "SPDXRef-deb-libc6-amd64") in rels
    assert ("SPDXRef-image", "CONTAINS", "SPDXRef-deb-libc6-amd64") in rels
    out = tmp_path / "s.spdx.json"
    out.write_text(render_sbom(inv, "spdx"))
    assert _spdx_problems(out) == []
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert (
        JsonStrictValidator(SchemaVersion.V1_6).validate_str(render_sbom(inv, "cyclonedx")) is None
    )


# -- licenses Python distributions declare (PEP 639 License-Expression) -------------------


def test_parse_venv_licenses_keeps_valid_spdx_expressions_only() -> None:
    output = (
        "some warning\n"
        + json.dumps(
            {
                "NumPy": "bsd-3-clause AND 0BSD",
                "requests": "Apache-2.0",
                "Weird_Pkg": "Apache-2",  # not on the SPDX list: unknown, not guessed
                "inhouse": "LicenseRef-Lab-Internal",  # would need the license text too
            }
        )
        + "\n"
    )
    assert parse_venv_licenses(output) == {
        "numpy": "BSD-3-Clause AND 0BSD",
        "requests": "Apache-2.0",
    }
    assert parse_venv_licenses("Traceback (most recent call last):\n") == {}
    assert parse_venv_licenses("{not json\n") == {}


def test_declared_licenses_reach_both_formats_and_validate(lock: Lock, tmp_path: Path) -> None:
    inv = inventory(lock, licenses={"requests": "Apache-2.0", "numpy": "BSD-3-Clause AND 0BSD"})
    spdx = spdx_document(inv)
    declared = {p["name"]: p["licenseDeclared"] for p in spdx["packages"]}
    assert declared["requests"] == "Apache-2.0"
    assert declared["numpy"] == "BSD-3-Clause AND 0BSD"
    assert declared["idna"] == "NOASSERTION"
    assert all(p["licenseConcluded"] == "NOASSERTION" for p in spdx["packages"])
    out = tmp_path / "s.spdx.json"
    out.write_text(render_sbom(inv, "spdx"))
    assert _spdx_problems(out) == []
    cdx = cyclonedx_document(inv)
    by_name = {c["name"]: c for c in cdx["components"]}
    assert by_name["requests"]["licenses"] == [
        {"expression": "Apache-2.0", "acknowledgement": "declared"}
    ]
    assert "licenses" not in by_name["idna"]
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert (
        JsonStrictValidator(SchemaVersion.V1_6).validate_str(render_sbom(inv, "cyclonedx")) is None
    )


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.iterdir() if p.is_dir()))
def test_every_recipes_sbom_validates(recipe: str, tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    shutil.copytree(RECIPES / recipe, tmp_path / recipe)
    inv = inventory(make_lock(tmp_path / recipe / "env.toml"))
    out = tmp_path / "sbom.spdx.json"
    out.write_text(render_sbom(inv, "spdx"))
    assert _spdx_problems(out) == []
    assert (
        JsonStrictValidator(SchemaVersion.V1_6).validate_str(render_sbom(inv, "cyclonedx")) is None
    )


@pytest.mark.parametrize(
    ("debian", "spdx"),
    [
        ("GPL-2+", "GPL-2.0-or-later"),
        ("GPL-2", "GPL-2.0-only"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("Expat", "MIT"),
        ("BSD-3-clause", "BSD-3-Clause"),
        ("GPL-2+ or BSD-3-clause", "GPL-2.0-or-later OR BSD-3-Clause"),
        ("(GPL-2+ or Expat) and Zlib", "(GPL-2.0-or-later OR MIT) AND Zlib"),
        ("GPL-1+ or Artistic", None),  # Debian's "Artistic" has no single SPDX identifier
        ("public-domain", None),
        ("curl", None),  # not one of Debian's short names: unknown, never guessed
        ("", None),
    ],
)
def test_debian_license_names_become_spdx_only_when_debian_defines_them(
    debian: str, spdx: str | None
) -> None:
    from imagesmith.attest.inventory import debian_to_spdx

    assert debian_to_spdx(debian) == spdx


def test_deb_licenses_are_read_from_the_scripts_output() -> None:
    from imagesmith.attest.inventory import parse_deb_licenses

    output = "dpkg\tGPL-2+\ncurl\tcurl\nBad Name\tGPL-2+\nnoise\nlibc6\tLGPL-2.1+ and GPL-2+\n"
    assert parse_deb_licenses(output) == {
        "dpkg": "GPL-2.0-or-later",
        "libc6": "LGPL-2.1-or-later AND GPL-2.0-or-later",
    }


def test_the_copyright_reader_takes_the_main_license_of_machine_readable_files(
    tmp_path: Path,
) -> None:
    """The shell the image runs, against copyright files of each kind (DEB_LICENSES reads
    /usr/share/doc; here the same awk program over a folder the test makes)."""
    import subprocess

    from imagesmith.attest.inventory import DEB_LICENSES

    doc = tmp_path / "usr" / "share" / "doc"
    files = {
        "dep5": "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: x\n\nFiles: debian/*\nLicense: Expat\n\n"
        "Files: *\nCopyright: someone\nLicense: GPL-2+\n\nLicense: GPL-2+\n text\n",
        "freeform": "This package was debianized by someone.\nLicense: GPL-2+\n",
    }
    for name, text in files.items():
        (doc / name).mkdir(parents=True)
        (doc / name / "copyright").write_text(text)
    script = DEB_LICENSES[2].replace("/usr/share/doc", str(doc))
    run = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout == "dep5\tGPL-2+\n"
