"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class GpoError(Exception):
    """A problem the user can fix (bad input, refused rerun, missing upstream stage)."""

    exit_code = 2


class Preempted(GpoError):
    """SIGTERM arrived (Slurm preemption warning): stop taking work; finished chunks are kept."""

    exit_code = 143
