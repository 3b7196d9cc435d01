"""The one error type for checkpoints that cannot be read."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, of an unknown architecture, or inconsistent.

    The message always names the file and the problem.
    """
