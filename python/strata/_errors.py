"""Strata's exceptions: one class per absl::Status code the engine returns.

Every error the engine reports is a ``strata.Error`` carrying ``code`` (a
``StatusCode``) and ``message`` (the engine's text, which says what to do).
Each subclass also derives from the built-in exception that fits, so code
that knows nothing of Strata can still catch ``ValueError``, ``KeyError``,
``MemoryError``, ``TimeoutError`` or ``OSError``.

The extension (strata._strata) imports this module when it loads and raises
these classes; it must not import the ``strata`` package itself.
"""

from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    """absl::StatusCode, with absl's numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Error(Exception):
    """Base of every Strata error: ``code`` and ``message`` of the Status."""

    code: StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str, code: StatusCode | int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = StatusCode(code)

    def __str__(self) -> str:
        # KeyError (a base of NotFoundError) would print repr(message).
        return f"{self.code.name}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.message, int(self.code)))


class InvalidArgumentError(Error, ValueError):
    code = StatusCode.INVALID_ARGUMENT


class OutOfRangeError(Error, IndexError):
    code = StatusCode.OUT_OF_RANGE


class NotFoundError(Error, KeyError):
    code = StatusCode.NOT_FOUND


class AlreadyExistsError(Error, ValueError):
    code = StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(Error, MemoryError):
    code = StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(Error, TimeoutError):
    code = StatusCode.DEADLINE_EXCEEDED


class FailedPreconditionError(Error, RuntimeError):
    """The engine or the object is in the wrong state: a closed engine, a
    released pin, a tensor dropped while one of its blocks is pinned."""

    code = StatusCode.FAILED_PRECONDITION


class UnimplementedError(Error, NotImplementedError):
    code = StatusCode.UNIMPLEMENTED


class PermissionDeniedError(Error, PermissionError):
    code = StatusCode.PERMISSION_DENIED


class UnavailableError(Error, OSError):
    """A transient I/O error (the engine's message names the errno)."""

    code = StatusCode.UNAVAILABLE


class InternalError(Error, OSError):
    """An I/O error the device reported (the message names the errno)."""

    code = StatusCode.INTERNAL


class DataLossError(Error, OSError):
    """A checksum mismatch: bytes read back are not the bytes written."""

    code = StatusCode.DATA_LOSS


# What the extension raises for each code; codes not listed raise Error.
BY_CODE: dict[int, type[Error]] = {
    cls.code: cls
    for cls in (InvalidArgumentError, OutOfRangeError, NotFoundError,
                AlreadyExistsError, ResourceExhaustedError,
                DeadlineExceededError, FailedPreconditionError,
                UnimplementedError, PermissionDeniedError, UnavailableError,
                InternalError, DataLossError)
}

# Show them as strata.X (the package re-exports every one).
for _cls in (StatusCode, Error, *BY_CODE.values()):
    _cls.__module__ = "strata"
del _cls
