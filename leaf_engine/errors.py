"""Domain errors. Each carries a one-line message meant for the user as is.

The CLI turns them into exit code 2 and the API into a 4xx; nothing here knows about either.
"""

from __future__ import annotations


class LeafError(Exception):
    """Base class: something the user asked for cannot be done, and the message says why."""


class InputError(LeafError):
    """A data row, file or argument is malformed. `line` is the 1-based JSONL line, if any."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None):
        self.line = line
        self.field = field
        self.reason = message  # without the line prefix
        super().__init__(f"line {line}: {message}" if line is not None else message)


class ConfigError(LeafError):
    """A configuration value is out of range; the message names the field."""


class ModelLoadError(LeafError):
    """A model or tokenizer cannot be loaded or is unsuitable (not a causal LM, slow tokenizer)."""


class ContextTooLongError(LeafError):
    """A prompt does not fit in the model's context window."""


class IncompatibleModelsError(LeafError):
    """Teacher and student cannot be paired for the requested operation."""


class SandboxUnavailable(ConfigError):
    """Untrusted code would have to run without isolation, and the policy forbids it."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(
            f"running model-written code needs an isolated sandbox, which is unavailable "
            f"here ({problem}): install bubblewrap (apt-get install bubblewrap), or set "
            f"LEAF_ALLOW_UNSANDBOXED_CODE=true to run it as a plain child process that can "
            f"read and write everything this user can and reach the network")
