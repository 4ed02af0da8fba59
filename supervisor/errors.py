"""The errors farmhand reports to people, each with the exit code a script can branch on.

A FarmhandError is always a clear one-line message; anything else escaping the CLI is a bug.
"""

from __future__ import annotations

# Exit codes are part of the CLI contract (documented in README.md).
EXIT_OK = 0
EXIT_FAILED = 1  # a runtime did not become ready, a step failed
EXIT_BAD_INPUT = 2  # malformed profile/config, unknown names, values out of range
EXIT_CONFLICT = 3  # the host is in a state farmhand will not override (a port held by someone else)
EXIT_VERIFY = 4  # a download or artifact failed verification
EXIT_UNSUPPORTED = 5  # the chosen backend or install method cannot be installed here
EXIT_ENVIRONMENT = 6  # the host lacks something farmhand needs (python venv, disk space)
EXIT_CHANGES_PENDING = 10  # `plan --detailed-exitcode`: the plan would change something


class FarmhandError(Exception):
    """An error meant for the user: one line, no traceback, a meaningful exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(FarmhandError):
    exit_code = EXIT_BAD_INPUT


class Conflict(FarmhandError):
    exit_code = EXIT_CONFLICT


class VerificationFailed(FarmhandError):
    exit_code = EXIT_VERIFY


class Unsupported(FarmhandError):
    exit_code = EXIT_UNSUPPORTED


class EnvironmentProblem(FarmhandError):
    exit_code = EXIT_ENVIRONMENT


def from_os_error(exc: OSError) -> FarmhandError:
    """One place that turns an OS error escaping a command into a one-line message and exit code."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return EnvironmentProblem(f"{where}no space left on device; free some space and re-run (work already "
                                  "done is kept and resumed)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentProblem(f"{where}{exc.strerror}: farmhand cannot write there (check the owner and mode, "
                                  "or use FARMHAND_HOME / --system)")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        return BadInput(f"{where}{exc.strerror}")
    return FarmhandError(f"{where}{exc.strerror or exc}")
