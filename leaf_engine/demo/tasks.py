"""Arithmetic word problems with inserted distracting sentences, and their ground truth.

"Ann has 7 pens. She buys 5 more pens. How many pens does Ann have now?" becomes, with a
distractor, "Ann has 7 pens. Her brother has 9 pens. She buys 5 more pens. ...". Every
example records the character spans of its distractor sentences and of each distractor's
key token (its number), so detection can be scored against the truth.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

NAMES = [("Ann", "She", "her"), ("Bob", "He", "his"), ("Cara", "She", "her"),
         ("Dan", "He", "his"), ("Eve", "She", "her"), ("Finn", "He", "his"),
         ("Gina", "She", "her"), ("Hugo", "He", "his")]
ITEMS = ["pens", "apples", "books", "coins", "cards", "shells", "stamps", "marbles"]
GAIN = ["buys {n} more {item}", "finds {n} more {item}", "gets {n} more {item}",
        "wins {n} more {item}"]
LOSS = ["gives away {n} {item}", "loses {n} {item}", "sells {n} {item}"]
NUMBERED = [
    "{Poss} brother has {n} {other}.",
    "{Pron} is {n} years old.",
    "The shop is {n} miles away.",
    "{Other} has {n} {item}.",
    "{Poss} friend owns {n} {other}.",
    "It rained for {n} days.",
    "The bus leaves in {n} minutes.",
]
PLAIN = [  # distractors without a key token
    "{Pron} likes the color blue.",
    "The weather is nice today.",
    "{Poss} friend is very kind.",
    "{Other} likes {other}.",
    "The shop sells {other}.",
]
NUMBERED_SHARE = 0.8  # "most carrying a number"
MAX_AMOUNT = 20
SPLITS = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class Problem:
    """One example: the engine's input fields plus the ground truth."""

    id: str
    instruction: str
    output: str
    answer: str
    distractors: int
    distractor_spans: list[list[int]] = field(default_factory=list)  # [start, end] sentences
    key_spans: list[list[int]] = field(default_factory=list)  # [start, end] of their numbers

    def to_row(self) -> dict:
        return asdict(self)


def make_problem(rng: random.Random, distractors: int, ident: str, *,
                 numbered_share: float = NUMBERED_SHARE) -> Problem:
    name, pron, poss = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    other = rng.choice([i for i in ITEMS if i != item])
    a = rng.randint(2, MAX_AMOUNT)
    if rng.random() < 0.5:
        b = rng.randint(1, MAX_AMOUNT)
        action, answer, op = rng.choice(GAIN), a + b, "+"
    else:
        b = rng.randint(1, a - 1)
        action, answer, op = rng.choice(LOSS), a - b, "-"
    # The action names its subject, so no inserted sentence can make a pronoun ambiguous.
    story = [f"{name} has {a} {item}.", f"{name} {action.format(n=b, item=item)}."]
    used = {a, b, answer}
    inserted: list[tuple[str, str | None]] = []
    numbered = [rng.random() < numbered_share for _ in range(distractors)]
    templates = (rng.sample(NUMBERED, sum(numbered))
                 + rng.sample(PLAIN, distractors - sum(numbered)))
    rng.shuffle(templates)
    for template in templates:
        n = rng.choice([x for x in range(1, MAX_AMOUNT + 1) if x not in used])
        used.add(n)
        other_name = rng.choice([x[0] for x in NAMES if x[0] != name])
        text = template.format(Poss=poss.capitalize(), Pron=pron, n=n, other=other, item=item,
                               Other=other_name)
        inserted.append((text, str(n) if "{n}" in template else None))
    # Distractors go after the first sentence (their pronouns need a subject) and before
    # the question, never inside a sentence.
    sentences: list[tuple[str, str | None, bool]] = [(s, None, False) for s in story]
    for text, key in inserted:
        sentences.insert(rng.randint(1, len(sentences)), (text, key, True))
    question = f"How many {item} does {name} have now?"
    pieces, spans, keys, cursor = [], [], [], 0
    for text, key, is_distractor in [*sentences, (question, None, False)]:
        if is_distractor:
            spans.append([cursor, cursor + len(text)])
            if key is not None:
                offset = text.index(f" {key} ") + 1
                keys.append([cursor + offset, cursor + offset + len(key)])
        pieces.append(text)
        cursor += len(text) + 1
    instruction = " ".join(pieces)
    output = f"{a} {op} {b} = {answer}. The answer is {answer}."
    return Problem(ident, instruction, output, str(answer), distractors, spans, keys)


def generate(split: str, n: int, *, seed: int = 0, mix: tuple[float, float, float] =
             (1 / 3, 1 / 3, 1 / 3), distractors: int | None = None,
             numbered_share: float = NUMBERED_SHARE) -> list[Problem]:
    """`n` problems of one split. Splits use disjoint random streams, so they never share
    a generator state; `mix` gives the share of 0, 1 and 2 distractors (or `distractors`
    fixes the count) and `numbered_share` the chance that a distractor carries a number."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    rng = random.Random(seed * 1000 + SPLITS[split])
    out = []
    for i in range(n):
        k = distractors if distractors is not None else rng.choices((0, 1, 2), weights=mix)[0]
        out.append(make_problem(rng, k, f"{split}-{i}", numbered_share=numbered_share))
    return out


def write_split(path: str | Path, problems: list[Problem]) -> None:
    Path(path).write_text("".join(json.dumps(p.to_row()) + "\n" for p in problems))


def final_number(text: str) -> str | None:
    """The last number in a response: the demo task's answer."""
    import re

    found = re.findall(r"-?\d+", text)
    return found[-1] if found else None


def vocabulary() -> list[str]:
    """Every word the generator can emit, numbers 0..2*MAX_AMOUNT and punctuation."""
    words: set[str] = {".", "?", "+", "-", "=", ",", "The", "answer", "is", "How", "many",
                       "does", "have", "now", "has"}
    for name, pron, poss in NAMES:
        words.update([name, pron, poss, poss.capitalize()])
    words.update(ITEMS)
    for template in GAIN + LOSS + NUMBERED + PLAIN:
        for word in template.replace(".", " ").split():
            if not word.startswith("{"):
                words.add(word)
    words.update(str(i) for i in range(0, 2 * MAX_AMOUNT + 1))
    return sorted(words)
