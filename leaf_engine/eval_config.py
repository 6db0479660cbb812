"""Configuration of evaluation (`leaf evaluate`, the evaluate job).

Torch-free, unlike `leaf_engine.evaluate`: the API builds its request schema and the CLI its
options from these fields without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaf_engine.answers import AnswerCheck
from leaf_engine.config_fields import check_fields, setting
from leaf_engine.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S

# Greedy generation's defaults, here rather than in `leaf_engine.generate` (which imports
# torch and takes them from here) so that the API can read this config without torch.
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run; validated on construction."""

    model: str = setting(help="Model to evaluate: directory, hub id or .gguf file.", min_length=1)
    data: str = setting(help="JSONL: instruction[, input], answer or tests[, id].",
                        min_length=1)
    out: str | None = setting(None, "Where to write the JSON report.")
    teacher: str | None = setting(None, "Also evaluate a teacher and report output similarity "
                                        "(Jaccard).")
    max_new_tokens: int = setting(DEFAULT_MAX_NEW_TOKENS, "Tokens generated per answer, at most.",
                                  ge=1)
    batch_size: int = setting(DEFAULT_BATCH_SIZE, "Prompts generated together (left padding).",
                              ge=1)
    device: str = setting("auto", "auto, cpu or cuda.")
    answer_check: AnswerCheck = setting("auto", "number: final-number match; math: "
                                                "math-verify; auto: by the answer.")
    code_timeout_s: float = setting(DEFAULT_TIMEOUT_S, "Seconds per code test run.", gt=0,
                                    le=3600)
    code_memory_mb: int = setting(DEFAULT_MEMORY_MB, "Memory limit per code test run (MiB).",
                                  ge=64)
    group_by: str | None = setting(None, "Also report accuracy per value of this field.")
    prompt_template: str | None = setting(None, "Plain template with '{instruction}' for models "
                                                "without a chat template.")

    def __post_init__(self) -> None:
        check_fields(self)
