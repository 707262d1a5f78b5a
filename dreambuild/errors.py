"""Typed errors. Each carries a message meant for the user: it names the problem."""


class DreambuildError(Exception):
    """Base class; ``str(error)`` is the user-facing message."""


class InputError(DreambuildError):
    """A request or training input is invalid."""


class ArchiveError(InputError):
    """An uploaded archive is not a zip, is corrupt, or is hostile (zip slip, bomb, symlink)."""


class ModelLayoutError(InputError):
    """A directory or archive is not a diffusers pipeline."""


class ImageDataError(InputError):
    """Training images are missing or unreadable."""


class TemplateWithoutWeightsError(DreambuildError):
    """A template image was asked to predict before weights were added to it."""


class SafetyCheckerError(DreambuildError):
    """The safety checker is required but cannot run (fail closed)."""


class NSFWContentError(DreambuildError):
    """Every generated image was flagged by the safety checker."""


class ControlImageError(InputError):
    """A ControlNet control image could not be preprocessed."""


class ImageReferenceError(InputError):
    """An image reference or model name cannot be parsed."""


class RegistryError(DreambuildError):
    """A registry or image store refused or failed a request."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or asked for some and none are configured)."""


class ImageNotFoundError(RegistryError):
    """A manifest or blob does not exist where the reference points."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or kept failing after retries (transient)."""


class BuildError(DreambuildError):
    """An image build failed (for example the Docker engine reported an error)."""
