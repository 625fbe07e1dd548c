"""The two ways a sync fails: for good (SyncError), or because the source is out of reach."""

from __future__ import annotations


class SyncError(Exception):
    """A model's artifacts cannot be used; the message names the model, the object and why."""


class SourceUnavailable(Exception):
    """The source could not be reached, even after retries: the last good local copy may serve."""
