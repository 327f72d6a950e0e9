"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback.

Exit codes follow the Unix convention (docs/commands.md "Exit codes"): 2 for a usage error (a bad flag, value or
settings file, found before anything runs), 1 for a run that failed (missing or damaged input, a refused
rerun, a model that does not load), 143 after SIGTERM, 130 after Ctrl-C.
"""


class GpoError(Exception):
    """A problem the user can fix (bad input, refused rerun, missing upstream stage): the run failed."""

    exit_code = 1


class UsageError(GpoError):
    """A bad command line: an unknown or contradictory option, a value out of range, a bad settings file."""

    exit_code = 2


class Preempted(GpoError):
    """SIGTERM arrived (Slurm preemption warning): stop taking work; finished chunks are kept."""

    exit_code = 143
