"""Exceptions that mean "the user's input is wrong" rather than "lamm-cl is broken".

The CLI turns a :class:`UserError` into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a config, a dataset folder, a weights file or an output folder."""


class ConfigError(UserError):
    """A config value is missing, unknown or of the wrong type; the message names its key path."""


class DataNotFoundError(UserError):
    """A dataset or weights file is missing; the message says where we looked and how to get it."""
