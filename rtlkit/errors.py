"""The two errors a user sees instead of a traceback deep in torch."""


class ConfigError(ValueError):
    """A bad setting, raised before any compute starts."""


class DatasetNotFound(FileNotFoundError):
    """A dataset is not on this machine; the message names the ways to get it."""


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)
