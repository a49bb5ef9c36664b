"""User-facing errors. The CLI prints their message on one line and exits with status 2."""


class NmtError(Exception):
    """A user mistake (bad config, bad input file, bad run directory): no traceback is shown."""


class ConfigError(NmtError):
    """An unknown key, a wrong type or an invalid value in a config."""


class DataError(NmtError):
    """A missing, misaligned or undecodable corpus file."""


class RunDirError(NmtError):
    """A run directory that is missing or lacks what the command needs."""
