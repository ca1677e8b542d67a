"""User-facing errors: a one-line message that names the problem and the fix."""


class LlmrecError(Exception):
    """An error caused by input or configuration that the user can fix.

    The CLI prints its message on one line and exits with status 2, without a traceback.
    """


class DataError(LlmrecError):
    """Input data is missing, malformed or empty after filtering."""


class ArtifactError(LlmrecError):
    """An artifact is missing, incompatible, or would overwrite a different one."""
