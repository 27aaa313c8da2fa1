"""AutopipeError and its children: every error a user can cause and fix."""

from __future__ import annotations


class AutopipeError(Exception):
    """Base of every error autopipe raises on purpose.

    Args:
        message: what went wrong, with the actual values.
        hint: how to fix it (the CLI prints it on its own line).
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class SpecError(AutopipeError, ValueError):
    """A model spec string or the ModelSpec it returns is wrong."""


class TraceError(AutopipeError, RuntimeError):
    """The model could not be traced into a graph."""


class ExampleInputError(TraceError, ValueError):
    """The example inputs do not fit the model."""


class ProfileError(AutopipeError, ValueError):
    """A profile cannot be made, read or used."""


class DeviceSpecError(AutopipeError, ValueError):
    """A device spec or devices file is missing or malformed."""


class PlanError(AutopipeError, ValueError):
    """A plan cannot be made, read or used (bad options, corrupt file)."""


class InfeasiblePlanError(PlanError):
    """No partition fits the memory limits."""


class PlanMismatchError(PlanError):
    """A plan was made for another model, input shape or world size."""


class WeightsError(AutopipeError, ValueError):
    """A weights file cannot be read, or its tensors do not fit the model."""


class RuntimeStageError(AutopipeError, RuntimeError):
    """Pipeline training failed on some rank (peer died, timeout)."""


class ExportError(AutopipeError, ValueError):
    """A plan cannot be handed to another engine (it cuts inside a layer, an unknown format)."""


class CheckpointError(AutopipeError, ValueError):
    """A checkpoint or state dict is missing, incomplete, or does not fit the model."""
