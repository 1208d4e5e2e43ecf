"""Exceptions raised by ckpt.

Every engine failure raises a subclass of :class:`CheckpointError` named
after the engine's status code; its message is the engine's, naming the file,
tensor and offending value::

    try:
        ckpt.load(model.state_dict(), "/ckpt/step_100")
    except ckpt.DataLossError as e:
        print(e.code, e)   # "DataLoss", "...shard-00001-...: tensor 'w': ..."
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "CheckpointError",
    "DataLossError",
    "FailedPreconditionError",
    "IOError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnavailableError",
]


class CheckpointError(Exception):
    """Base class of every error the ckpt engine reports."""

    code: str = ""


class InvalidArgumentError(CheckpointError, ValueError):
    """The caller or an input file broke a documented rule."""

    code = "InvalidArgument"


class NotFoundError(CheckpointError, LookupError):
    """A file, tensor or key does not exist."""

    code = "NotFound"


class AlreadyExistsError(CheckpointError, FileExistsError):
    """Refusing to overwrite something that exists."""

    code = "AlreadyExists"


class DataLossError(CheckpointError):
    """Stored bytes are corrupt, truncated or inconsistent."""

    code = "DataLoss"


class IOError(CheckpointError, OSError):  # noqa: A001 - named after the engine's status code
    """The operating system or device failed."""

    code = "IOError"


class FailedPreconditionError(CheckpointError):
    """The system is not in a state where the call can work."""

    code = "FailedPrecondition"


class UnavailableError(CheckpointError):
    """A peer or resource is missing: a rank timed out or died, the disk is full."""

    code = "Unavailable"


class InternalError(CheckpointError):
    """A broken invariant inside ckpt (a bug; please report it)."""

    code = "Internal"


BY_CODE: dict[str, type[CheckpointError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        DataLossError,
        IOError,
        FailedPreconditionError,
        UnavailableError,
        InternalError,
    )
}
