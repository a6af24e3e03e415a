"""Exception types: one per kind of user mistake, so the CLI can map them to exit code 2."""


class RobustsimError(Exception):
    """Base class of every error robustsim raises on purpose."""


class InputError(RobustsimError, ValueError):
    """Bad user input: an image, tensor, option or file that cannot be used as given."""


class WeightsError(RobustsimError, ValueError):
    """Weights that cannot be found, fail their checksum, or do not fit the model."""


class OfflineError(WeightsError):
    """A download was needed while offline mode (ROBUSTSIM_OFFLINE / HF_HUB_OFFLINE) is on."""


class CorruptImageError(InputError):
    """An image file exists but cannot be decoded (truncated, not an image, empty): datasets may skip it."""
