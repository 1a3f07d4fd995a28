"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits 2."""


class TunechainError(Exception):
    """Base class: the message says what is wrong and what would be valid."""


class ConfigError(TunechainError):
    """A config key, value or recipe shape is wrong."""


class PlanError(TunechainError):
    """The chain cannot run as composed (inputs, hardware, unavailable models)."""


class ModelUnavailable(TunechainError):
    """A model cannot be loaded from its path or the hub."""
