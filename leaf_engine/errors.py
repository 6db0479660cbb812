"""Domain errors. Each carries a one-line message meant for the user as is.

The CLI turns them into exit code 2 and the API into a 4xx; nothing here knows about either.
"""

from __future__ import annotations

from typing import Any


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
    """A prompt does not fit in the model's context window.

    The figures are attributes, so that a caller words the error its own way (the service
    names the model as its user knows it; the CLI adds the flag that would help) without
    reading them back out of the message. `model` is the name the model was loaded by;
    `truncatable` says whether cutting the response would make the prompt fit, i.e. the
    text before the response fits on its own; `field` is the input with more tokens, or the
    instruction when the prompt alone is too long.
    """

    user_fault = True

    def __init__(self, *, tokens: int, limit: int, model: str, truncatable: bool,
                 field: str | None = None):
        self.tokens = tokens
        self.limit = limit
        self.model = model
        self.truncatable = truncatable
        super().__init__(f"example is {tokens} tokens, more than {model}'s context of {limit}",
                         field=field)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from `args` (the message), which this constructor does not take.
        return (_context_too_long, (self.tokens, self.limit, self.model, self.truncatable,
                                    self.field))


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


def _context_too_long(tokens: int, limit: int, model: str, truncatable: bool,
                      field: str | None) -> ContextTooLongError:
    return ContextTooLongError(tokens=tokens, limit=limit, model=model,
                               truncatable=truncatable, field=field)
