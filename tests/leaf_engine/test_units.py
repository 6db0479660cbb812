"""Word-true pruning: the unit a record is scored and cut in, and word scores that do not
depend on how finely a tokenizer splits a word."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from leaf_engine.analysis import Analysis, DetectConfig, ViewAnalysis, decide, units_of
from leaf_engine.detect import Detector
from leaf_engine.models import load_model
from leaf_engine.records import ContextToken
from leaf_engine.units import is_word, members, pieces, pool, words_cut
from tests import tiny

NUMBERS = "Tom has 12 apples. He bakes 24 muffins, costing $5 or 1,000 yen (12.5%)."


def _texts(text: str) -> list[str]:
    return [text[a:b] for a, b in pieces(text)]


def test_a_word_keeps_numbers_whole_and_punctuation_apart() -> None:
    assert _texts(NUMBERS) == [
        "Tom", "has", "12", "apples", ".", "He", "bakes", "24", "muffins", ",", "costing",
        "$5", "or", "1,000", "yen", "(", "12.5%", ")", "."]
    assert _texts("Don't use well-known x -5 and 3-4!") == [
        "Don't", "use", "well-known", "x", "-5", "and", "3-4", "!"]
    assert [is_word(t) for t in ("24", "$5", "é", ".", "$", "(", "_", "...")] == [
        True, True, True, False, False, False, False, False]


def test_pool_is_split_invariant_and_counts_shared_tokens_toward_each_word() -> None:
    # "2024" whole (norm 3) or as four digits of norm 3 each: the same word saliency.
    assert pool(np.array([3.0]), [[0]], "rms")[0] == pool(np.full(4, 3.0), [[0, 1, 2, 3]],
                                                           "rms")[0] == 3.0
    assert pool(np.array([1.0, np.nan, 2.0]), [[0, 1, 2], [1]], "sum").tolist()[0] == 3.0
    assert np.isnan(pool(np.array([np.nan]), [[0]], "sum")[0])
    text = "ab cd. ef"
    tokens = [ContextToken("instruction", 0, 4), ContextToken("instruction", 4, 6),
              ContextToken("instruction", 6, 9)]  # "ab c", "d.", " ef"
    units = [ContextToken("instruction", a, b) for a, b in pieces(text)]  # ab, cd, ., ef
    assert members(tokens, units, {"instruction": text}) == [[0], [0, 1], [1], [2]]


def test_words_cut_names_words_a_cut_falls_inside() -> None:
    assert words_cut("24 muffins.", [(0, 1)]) == ["24"]
    assert words_cut("24 muffins.", [(0, 2), (3, 10)]) == []
    assert words_cut("24 muffins.", [(3, 5)]) == ["muffins"]


@pytest.fixture(scope="module")
def bpe_analysis(llama_pair) -> Analysis:
    teacher, student = (load_model(str(p), device="cpu") for p in llama_pair)
    # The tiny BPE splits most of these words and every multi-digit number.
    (analysis,) = Detector(teacher, student).analyse([(NUMBERS, "The answer is 12.")],
                                                     with_surprisal=True)
    return analysis


@pytest.mark.parametrize("tau", [0.1, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("method", ["gradient", "ppl", "random"])
def test_word_unit_prunes_whole_words_only(bpe_analysis: Analysis, tau: float,
                                           method: str) -> None:
    record = decide(bpe_analysis, DetectConfig(tau=tau, method=method))  # type: ignore[arg-type]
    data = record.to_dict()
    assert data["params"]["unit"] == "word" and data["params"]["compare"] == "tokens"
    assert [t["text"] for t in data["tokens"]] == _texts(NUMBERS)
    assert "warnings" not in data
    words = set(_texts(NUMBERS))
    for variant in [*data["pruned"], {"instruction": data["collective"]}]:
        kept = _texts(variant["instruction"])
        assert set(kept) <= words  # never "2" from "24", never "muff" from "muffins"
        assert kept.count(".") == 2 and kept.count(",") == 1  # punctuation stays
    flagged = [t for t in data["tokens"] if t["confounder"]]
    assert all(is_word(t["text"]) for t in flagged)
    if tau == 1.0 and method == "gradient":
        assert {t["text"] for t in flagged} == {w for w in words if is_word(w)}
        assert not any(is_word(x) for x in _texts(data["collective"]))


def test_pruning_a_word_keeps_its_punctuation(bpe_analysis: Analysis) -> None:
    view = bpe_analysis.views[0]
    # Only the student attends, and only to the tokens of "12 apples" (not to its ".").
    inside = np.array([t.start < 17 and t.end > 8 for t in view.tokens])
    student = np.where(inside, 10.0, 1.0)
    forced = Analysis(NUMBERS, "x", (ViewAnalysis(view.target, view.tokens, np.ones(len(inside)),
                                                  student, None),))
    record = decide(forced, DetectConfig(tau=0.1))
    assert record.spans == [(8, 17)]
    assert record.main.pruned[0].instruction.startswith("Tom has. He bakes")


def test_token_unit_warns_when_it_cuts_inside_a_word(bpe_analysis: Analysis) -> None:
    record = decide(bpe_analysis, DetectConfig(tau=0.5, unit="token"))
    data = record.to_dict()
    assert data["params"]["unit"] == "token"
    cut = words_cut(NUMBERS, record.spans)
    assert cut, "the tiny BPE splits words: a token cut at tau 0.5 falls inside one"
    (warning,) = data["warnings"]
    assert warning.startswith(f"unit token: pruning cuts inside {len(cut)} words")
    assert f'"{cut[0]}"' in warning
    # Punctuation tokens are never flagged, in any unit.
    assert not any(t.confounder for t in record.tokens if not is_word(t.text))


def test_sentence_unit_removes_whole_sentences(bpe_analysis: Analysis) -> None:
    record = decide(bpe_analysis, DetectConfig(tau=0.5, unit="sentence"))
    assert record.spans
    first = NUMBERS.index("He")
    for s, e in record.spans:
        assert s in {0, first} and e in {first - 1, len(NUMBERS)}


# ------------------------------------------------------------ one model, two tokenizers

WORDS = ["Ann", "keeps", "24", "red", "pens", "now", "and", "then"]
# A larger embedding gets a lower saliency. "24" sits just below "keeps", so an aggregate
# that inflates a split word (the L2 over its tokens, by sqrt 2) would move it above.
SCALES = {w: 1.3**k for k, w in enumerate(WORDS)} | {"24": 1.3 * 1.1}
INSTRUCTION = " ".join(WORDS)


def _word_level(vocab: list[str], *, split_digits: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    steps = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.chat_template = tiny.CHAT_TEMPLATE
    return fast


def _uniform_attention_model(vocab: list[str], embeddings: dict[str, torch.Tensor]):
    """One Llama layer with zero query and key weights: attention is uniform, so every
    context token's gradient is J_norm(e_i)^T c, with c shared by all context tokens. Tokens
    with the same embedding get the same norm: "24" whole, and each of its digits when they
    are given its embedding, are equally salient, and the word's saliency must be too."""
    model = tiny.build_model("llama", len(vocab), hidden=128, layers=1, seed=0)
    with torch.no_grad():
        attention = model.model.layers[0].self_attn
        attention.q_proj.weight.zero_()
        attention.k_proj.weight.zero_()
        for word, vector in embeddings.items():
            if word in vocab:
                model.model.embed_tokens.weight[vocab.index(word)] = vector
    return model


@pytest.fixture(scope="module")
def split_and_whole(model_dir: Path) -> tuple[Path, Path]:
    """The same model twice: one tokenizer keeps "24" whole, one splits it into digits whose
    embeddings are both the embedding of "24"."""
    whole = [*tiny.SPECIALS, "<|user|>", *WORDS, "yes", "\n"]
    split = [*whole, "2", "4"]
    generator = torch.Generator().manual_seed(0)
    vectors = {w: torch.randn(128, generator=generator) * SCALES[w] for w in WORDS}
    vectors |= {"2": vectors["24"], "4": vectors["24"]}
    dirs = []
    for name, vocab in (("whole", whole), ("digits", split)):
        path = model_dir / f"uniform-{name}"
        _uniform_attention_model(vocab, vectors).save_pretrained(path)
        _word_level(vocab, split_digits=name == "digits").save_pretrained(path)
        dirs.append(path)
    return dirs[0], dirs[1]


def test_word_ranking_does_not_depend_on_how_a_tokenizer_splits_numbers(
    split_and_whole: tuple[Path, Path],
) -> None:
    whole, digits = (load_model(str(p), device="cpu") for p in split_and_whole)
    assert [len(m.encode(INSTRUCTION, "yes").context_tokens) for m in (whole, digits)] == [8, 9]
    detector = Detector(whole, digits)
    assert not detector.shared_tokens
    (analysis,) = detector.analyse([(INSTRUCTION, "yes")])
    view = analysis.views[0]
    assert analysis.compare == "words"
    assert [INSTRUCTION[t.start:t.end] for t in view.tokens] == WORDS
    # Lower embedding scale, higher saliency: both tokenizers rank the words the same way.
    expected = sorted(WORDS, key=SCALES.get)
    assert [WORDS[i] for i in np.argsort(-view.teacher)] == expected
    assert [WORDS[i] for i in np.argsort(-view.student)] == expected
    # The plain L2 over tokens would have inflated the split "24" by sqrt(2) and moved it up.
    (same,) = Detector(digits, digits).analyse([(INSTRUCTION, "yes")])
    tokens = same.views[0]
    texts = {"instruction": INSTRUCTION, "output": ""}
    groups = members(tokens.tokens, view.tokens, texts)
    l2 = np.array([np.sqrt(np.sum(tokens.student[g] ** 2)) for g in groups])
    assert [WORDS[i] for i in np.argsort(-l2)] != expected
    # Same-tokenizer word mode pools exactly as the cross-tokenizer comparison does.
    pooled = units_of(tokens, texts, "word")
    np.testing.assert_allclose(pooled.student, view.student, rtol=1e-12)
    record = decide(analysis, DetectConfig(unit="token")).to_dict()
    assert record["params"]["unit"] == "word" and record["params"]["compare"] == "words"


# ------------------------------------------------------------ a real subword tokenizer

GSM_LIKE = [
    ("A bakery makes 24 muffins every morning. It sells 18 muffins before noon and gives "
     "away 2 muffins. How many muffins are left?",
     "18 + 2 = 20 muffins are gone. 24 - 20 = 4 muffins are left. The answer is 4."),
    ("A farmer harvested 1,250 kilograms of potatoes. He sold 480 kilograms on Tuesday. "
     "How many kilograms remain?", "1,250 - 480 = 770 kilograms remain. The answer is 770."),
    ("Jessica earns $15 per hour babysitting. She babysat for 8 hours and spent $35 on "
     "groceries. How much money does she have left?",
     "She earned 15 * 8 = $120. 120 - 35 = $85. The answer is 85."),
]


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_prunes_whole_words_and_warns_on_token_cuts(smollm2: Path) -> None:
    """SmolLM2 splits every digit ("24" -> "2", "4"): unit word still removes whole words and
    numbers only; unit token says when its cut falls inside one."""
    from leaf_engine.models import DEFAULT_PLAIN_TEMPLATE, PromptTemplate

    teacher = load_model(str(smollm2), name="smollm2", device="cpu")
    # The same weights seeing a plain template: a student that shares the tokenizer.
    student = dataclasses.replace(teacher, name="smollm2-plain",
                                  template=PromptTemplate(plain=DEFAULT_PLAIN_TEMPLATE))
    analyses = Detector(teacher, student, batch_size=1).analyse(GSM_LIKE)
    for analysis, (instruction, _) in zip(analyses, GSM_LIKE, strict=True):
        words = _texts(instruction)
        for tau in (0.1, 0.3):
            data = decide(analysis, DetectConfig(tau=tau)).to_dict()
            for variant in [*data["pruned"], {"instruction": data["collective"]}]:
                kept = _texts(variant["instruction"])
                assert set(kept) <= set(words)
                assert [w for w in kept if not is_word(w)] == [w for w in words
                                                               if not is_word(w)]
            token = decide(analysis, DetectConfig(tau=tau, unit="token"))
            cut = words_cut(instruction, token.spans)
            assert bool(cut) == any(w.startswith("unit token") for w in token.warnings)
