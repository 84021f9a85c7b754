"""The project's own exception types.

Every error a user can cause (bad file, bad dataset, missing model) is raised as a subclass of
:class:`VesselSegError` with a one-line message naming the file, the problem and what to do. The CLI
layer prints that line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class VesselSegError(Exception):
    """Base class for errors caused by user input or environment, reported as one line."""


class ImageReadError(VesselSegError):
    """An image file could not be read or holds unusable data (truncated, NaN/Inf, wrong type)."""


class ImageWriteError(VesselSegError):
    """An output image could not be written (permissions, disk full, unsupported format)."""


class DatasetError(VesselSegError):
    """A raw or preprocessed dataset is missing, malformed or inconsistent."""


class PlansError(VesselSegError):
    """Plans or fingerprint files are missing or invalid."""


class CheckpointError(VesselSegError):
    """A model checkpoint is missing, truncated or unsafe."""


class TrainingError(VesselSegError):
    """Training cannot go on (e.g. the loss became NaN); earlier checkpoints are kept."""


class OutputWriteError(VesselSegError):
    """A file could not be written (disk full, quota, permissions, file size limit); nothing partial is left."""
