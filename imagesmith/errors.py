"""One root exception; each subclass knows the exit code the CLI should use.

Exit codes: 0 ok, 1 an operation failed (engine, network, registry),
2 the input is wrong (spec, lock, usage).
"""

from __future__ import annotations

from collections.abc import Sequence


class ImagesmithError(Exception):
    """Root of every error imagesmith expects and reports without a traceback."""

    exit_code = 1

    def lines(self) -> list[str]:
        """The message as the lines the CLI prints, one problem per line."""
        return str(self).splitlines() or [type(self).__name__]


class InputError(ImagesmithError):
    """The user's input (spec, lock, command line) is wrong: exit 2."""

    exit_code = 2


class SpecError(InputError):
    """An env.toml that does not validate; carries every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class LockError(InputError):
    """A missing, corrupted, hand-edited or stale env.lock."""


class StaleLockError(LockError):
    """The lock exists but was made from another version of the spec."""


class LockFormatError(LockError):
    """The lock is in a format this imagesmith would build to another digest."""


class ResolveError(InputError):
    """A requirement or package cannot be satisfied (the user must change the spec)."""


class OperationError(ImagesmithError):
    """Something outside imagesmith failed (engine, network, registry): exit 1."""


class EngineError(OperationError):
    """The container engine is missing, not running, or refused a request."""


class NoLocalImageError(EngineError):
    """The engine has no image by that name or ID (the other engine may have it)."""

    def __init__(self, engine: str, ref: str, *, note: str = "") -> None:
        self.engine = engine
        self.ref = ref
        super().__init__(f"{engine}: no local image {ref}{'; ' + note if note else ''}")


class BuildError(OperationError):
    """A build step failed; carries the step and the tail of its output."""

    def __init__(self, message: str, *, step: str = "", output_tail: Sequence[str] = ()) -> None:
        self.step = step
        self.output_tail = list(output_tail)
        super().__init__(message)

    def lines(self) -> list[str]:
        out = [str(self)]
        if self.step:
            step = " ".join(self.step.split())
            out.append(f"failing step: {step[:200]}{' ...' if len(step) > 200 else ''}")
        if self.output_tail:
            out.append(f"last {len(self.output_tail)} lines of its output:")
            out.extend("  " + line for line in self.output_tail)
        return out


class RegistryError(OperationError):
    """A registry refused or failed a request."""


class ReproducibilityError(OperationError):
    """A rebuild produced a different digest."""
