"""How the lock reads uv's answers (pure parsing; uv itself in
tests/integration/test_python_resolution.py)."""

from __future__ import annotations

from imagesmith.locking.python_pins import _known_platform

# uv 0.13.9's own words for a platform it does not know (trimmed list).
_REFUSED = """error: invalid value '{value}' for '--python-platform <PYTHON_PLATFORM>'
  [possible values: windows, linux, x86_64-manylinux2014, x86_64-manylinux_2_17, \
x86_64-manylinux_2_28, x86_64-manylinux_2_39, x86_64-manylinux_2_40, aarch64-manylinux_2_17, \
aarch64-manylinux_2_38, aarch64-pc-windows-msvc]

  tip: a similar value exists: 'x86_64-manylinux_2_40'

For more information, try '--help'.
"""


def test_a_glibc_too_new_for_uv_falls_back_to_the_newest_manylinux_it_knows() -> None:
    assert (
        _known_platform(_REFUSED.format(value="x86_64-manylinux_2_41"), "x86_64-manylinux_2_41")
        == "x86_64-manylinux_2_40"
    )
    assert (
        _known_platform(_REFUSED.format(value="aarch64-manylinux_2_41"), "aarch64-manylinux_2_41")
        == "aarch64-manylinux_2_38"
    )


def test_only_a_refused_platform_and_only_an_older_one_is_taken() -> None:
    # A glibc older than every manylinux uv knows: no fallback (uv's error stands).
    assert (
        _known_platform(_REFUSED.format(value="x86_64-manylinux_2_5"), "x86_64-manylinux_2_5")
        is None
    )
    # uv failed for another reason: nothing to retry.
    assert _known_platform("error: No solution found", "x86_64-manylinux_2_41") is None
    # An architecture uv lists no manylinux for.
    assert (
        _known_platform(_REFUSED.format(value="riscv64-manylinux_2_41"), "riscv64-manylinux_2_41")
        is None
    )


def test_an_upgrade_package_the_lock_does_not_pin_is_refused_with_the_closest_name() -> None:
    import pytest

    from imagesmith.errors import InputError
    from imagesmith.locking.resolve import _check_upgraded
    from imagesmith.model.lock import PythonLock, PythonPackage

    python = PythonLock(
        version="3.11",
        platform="x86_64-manylinux_2_36",
        packages=(PythonPackage("numpy", "2.1.0", ()), PythonPackage("pyyaml", "6.0.2", ())),
    )
    _check_upgraded(["PyYAML", "NumPy"], python)  # pip's names, any spelling
    with pytest.raises(InputError) as caught:
        _check_upgraded(["pyyam", "torch"], python)
    assert caught.value.exit_code == 2
    assert str(caught.value).splitlines() == [
        "--upgrade-package pyyam: env.lock pins no Python distribution of that name "
        "(did you mean pyyaml?)",
        "--upgrade-package torch: env.lock pins no Python distribution of that name "
        "(it pins: numpy, pyyaml)",
    ]
    with pytest.raises(InputError, match=r"\(it pins: none\)"):
        _check_upgraded(["numpy"], None)
