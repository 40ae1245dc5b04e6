"""Errors that reach a user.

Every error raised for bad *input* (a missing model, an unknown architecture, a NaN weight, a bad config value,
a truncated or altered artifact) is a :class:`MacjaxError`. The CLI prints its message on one line and exits
non-zero without a traceback; anything else is a bug and keeps its traceback.

Messages name the thing (file, tensor, key), what was found, and what was expected.
"""

from __future__ import annotations


class MacjaxError(Exception):
  """Base class of the errors caused by user input."""


class ModelLoadError(MacjaxError):
  """A model could not be found, read, or recognised (missing file, unknown architecture, bad tensor)."""


class ConfigError(MacjaxError):
  """A pipeline config has an unknown key, a value of the wrong type, or a value out of range."""


class ArtifactError(MacjaxError):
  """A compressed artifact is missing, truncated, altered, or of an unsupported format version."""


class ShapeError(MacjaxError):
  """An array has a shape (or dtype) other than the one an operation requires."""


class NonFiniteError(MacjaxError):
  """A weight or statistic contains NaN or infinity."""
