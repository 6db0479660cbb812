"""Domain errors. Each carries a one-line message meant for the user as is.

The CLI turns them into exit code 2 and the API into a 4xx; nothing here knows about either.
"""

from __future__ import annotations


class LeafError(Exception):
    """Base class: something asked for cannot be done, and the message says why.

    `user_fault` says whether what the user sent is the cause (bad data, an out-of-range
    setting, a prompt too long) rather than the server (a model that will not load, a lost
    cache); `field` names the input at fault, when one is. Those two decide, in one place
    each, the HTTP status of an error and whether a failed job logs a traceback.
    """

    user_fault = False

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(message)


class InputError(LeafError):
    """A data row, file or argument is malformed. `line` is the 1-based JSONL line, if any."""

    user_fault = True

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None):
        self.line = line
        self.reason = message  # without the line prefix
        super().__init__(f"line {line}: {message}" if line is not None else message,
                         field=field)


class ConfigError(LeafError):
    """A configuration value is out of range; the message names the field."""

    user_fault = True


class ModelLoadError(LeafError):
    """A model or tokenizer cannot be loaded or is unsuitable (not a causal LM, slow tokenizer)."""


class ContextTooLongError(LeafError):
    """A prompt does not fit in the model's context window."""

    user_fault = True


class IncompatibleModelsError(LeafError):
    """Teacher and student cannot be paired for the requested operation."""

    user_fault = True


class SandboxUnavailable(ConfigError):
    """Untrusted code would have to run without isolation, and the policy forbids it."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(
            f"running model-written code needs an isolated sandbox, which is unavailable "
            f"here ({problem}): install bubblewrap (apt-get install bubblewrap), or set "
            f"LEAF_ALLOW_UNSANDBOXED_CODE=true to run it as a plain child process that can "
            f"read and write everything this user can and reach the network")
