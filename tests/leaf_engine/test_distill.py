"""The distillation trainer on tiny real models (CPU)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from leaf_engine.distill import distill, lr_factor
from leaf_engine.distill_config import DistillConfig
from leaf_engine.errors import ConfigError, IncompatibleModelsError, InputError
from leaf_engine.models import load_model
from tests import tiny

ROWS = [
    {"id": "a", "instruction": "Ann has 7 pens. The sky is blue today. She buys 5 more pens.",
     "output": "Step 1: add the numbers. The answer is 12.",
     "pruned": [{"instruction": "Ann has 7 pens. She buys 5 more pens.", "span": [16, 38]},
                {"instruction": "Ann has 7 pens. The sky is blue today.", "span": [39, 60]}],
     "views": [{"segment": 1, "target": [24, 42],
                "pruned": [{"instruction": "Ann has 7 pens. She buys 5 more pens.",
                            "output_prefix": "Step 1: add.", "span": None}]}]},
    {"id": "b", "instruction": "Bob had 12 apples and gave 4 to Carl. Numbers like 3 matter.",
     "output": "The answer is 8.",
     "pruned": [{"instruction": "Bob had 12 apples and gave 4 to Carl.", "span": [38, 59]}]},
    {"id": "c", "instruction": "Please answer the question below: 3, 14 and 159.",
     "output": "thanks! The answer is 159.", "pruned": []},
    {"id": "d", "instruction": "How many pens does Ann have now?", "output": "Ann has 12 pens."},
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def config(llama_pair, data: Path, out: Path, **kw) -> DistillConfig:
    base = {"teacher": str(llama_pair[0]), "student": str(llama_pair[1]), "device": "cpu",
            "epochs": 1, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
            "warmup_steps": 0, "val_fraction": 0.0}
    return DistillConfig(data=str(data), out=str(out), **{**base, **kw})


def weights(path: Path | str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_loss_decreases_on_a_tiny_run(llama_pair, data: Path, tmp_path: Path) -> None:
    # mix mode with one step per epoch over all 8 rows: every step sees the same objective.
    result = distill(config(llama_pair, data, tmp_path / "out", mode="mix", epochs=6,
                            batch_size=8, micro_batch_size=4, lr=3e-3))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 6
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
def test_checkpoints_load_with_transformers(llama_pair, data: Path, tmp_path: Path) -> None:
    seen = []
    result = distill(config(llama_pair, data, tmp_path / "out", epochs=3, batch_size=2,
                            micro_batch_size=1, val_data=str(data)), progress=seen.append)
    assert result.steps == result.total_steps == 6 and not result.stopped
    assert [p.step for p in seen] == list(range(1, 7))
    assert all(p.loss is not None and p.loss > 0 and p.phase == "train" for p in seen)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for epoch in result.epochs:
        path = Path(epoch.checkpoint)
        assert path.name == f"epoch-{epoch.epoch}"
        AutoModelForCausalLM.from_pretrained(path)
        assert len(AutoTokenizer.from_pretrained(path)) == len(
            AutoTokenizer.from_pretrained(llama_pair[1]))
    assert max_diff(weights(result.last_checkpoint), weights(llama_pair[1])) > 1e-4
    # Only the newest checkpoint keeps the optimizer state needed to resume.
    assert [p.parent.name for p in (tmp_path / "out").glob("*/optimizer.pt")] == ["epoch-3"]
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["steps"] == 6 and len(saved["history"]) == 6
    assert saved["best_checkpoint"] == result.best_checkpoint
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2, 3]


@pytest.mark.slow
def test_accumulation_gives_the_same_update_as_one_big_batch(
    llama_pair, data: Path, tmp_path: Path
) -> None:
    one = distill(config(llama_pair, data, tmp_path / "one", micro_batch_size=1))
    four = distill(config(llama_pair, data, tmp_path / "four", micro_batch_size=4))
    assert one.steps == four.steps == 1
    assert one.history[0]["loss"] == pytest.approx(four.history[0]["loss"], rel=1e-5)
    a, b = weights(one.last_checkpoint), weights(four.last_checkpoint)
    assert max_diff(a, b) < 1e-6
    assert max_diff(a, weights(llama_pair[1])) > 1e-4  # and the update did happen


@pytest.mark.slow
def test_generic_head_path_trains_like_the_fused_linear_head(
    llama_pair, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused = distill(config(llama_pair, data, tmp_path / "fused"))
    # Heads with softcapping or a logit scale take the checkpointed path; force it here.
    monkeypatch.setattr("leaf_engine.distill_batches.linear_head", lambda model: None)
    generic = distill(config(llama_pair, data, tmp_path / "generic"))
    assert generic.history[0]["loss"] == pytest.approx(fused.history[0]["loss"], rel=1e-6)
    # Adam's first step is about lr * sign(g): rounding differences in near-zero gradient
    # entries move a weight by a small fraction of lr (1e-3), never more.
    diff = max_diff(weights(fused.last_checkpoint), weights(generic.last_checkpoint))
    assert diff < 1e-5
    assert max_diff(weights(fused.last_checkpoint), weights(llama_pair[1])) > 5e-4


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(llama_pair, data: Path, tmp_path: Path) -> None:
    kw = {"epochs": 2, "batch_size": 2, "micro_batch_size": 1, "warmup_steps": 2}
    full = distill(config(llama_pair, data, tmp_path / "full", **kw))
    calls = iter(range(100))
    stopped = distill(config(llama_pair, data, tmp_path / "run", **kw),
                      should_stop=lambda: next(calls) >= 3)
    assert stopped.stopped and stopped.steps == 3
    assert stopped.last_checkpoint == str(tmp_path / "run" / "step-3")
    resumed = distill(config(llama_pair, data, tmp_path / "run", resume=str(tmp_path / "run"),
                             **kw))
    assert resumed.steps == full.steps == 4 and not resumed.stopped
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])
    assert max_diff(weights(resumed.last_checkpoint), weights(full.last_checkpoint)) < 1e-6


@pytest.mark.slow
def test_resume_refuses_a_changed_run(llama_pair, data: Path, tmp_path: Path) -> None:
    distill(config(llama_pair, data, tmp_path / "run"))
    with pytest.raises(ConfigError, match="resume: batch_size differs"):
        distill(config(llama_pair, data, tmp_path / "run", batch_size=2,
                       resume=str(tmp_path / "run")))
    with pytest.raises(ConfigError, match="no checkpoint found"):
        distill(config(llama_pair, data, tmp_path / "x", resume=str(tmp_path)))


def test_unit_weights_give_the_hybrid_loss() -> None:
    from leaf_engine.distill_batches import unit_weights
    from leaf_engine.losses import hybrid_loss

    torch.manual_seed(0)
    for size, lam in itertools.product((1, 2, 5), (0.0, 0.3, 1.0)):
        rows = torch.rand(size)  # L_kd of the original, then of each counterfactual
        weights = torch.tensor(unit_weights(size, lam))
        has = torch.tensor([size > 1])
        expected = hybrid_loss(rows[:1], rows[1:].mean().reshape(1) if size > 1 else rows[:1],
                               lam, has)
        assert torch.allclose((weights * rows).sum(), expected[0])
        assert weights.sum().item() == pytest.approx(1.0)


def _row_kd(llama_pair, data: Path, **select_kw):
    """The prepared examples and a function giving the initial student's L_kd per row."""
    from leaf_engine.distill_batches import StudentKL, prepare, row_losses, shared_vocab
    from leaf_engine.distill_data import read_training_data, select

    teacher = load_model(str(llama_pair[0]), device="cpu")
    student = load_model(str(llama_pair[1]), device="cpu", dtype="float32")
    examples, _ = prepare(select(read_training_data(data), **select_kw), teacher, student, 4096)
    wrapper = StudentKL(student.model, temperature=1.0, vocab=shared_vocab(teacher, student),
                        chunk_rows=None)

    @torch.no_grad()
    def kd(rows) -> list[float]:
        return row_losses(wrapper, teacher, rows, pad_id=student.pad_id,
                          device=torch.device("cpu")).tolist()

    return examples, kd


@pytest.mark.slow
@pytest.mark.parametrize("units", ["example", "pair"])
def test_every_counterfactual_is_trained_every_epoch(
    llama_pair, data: Path, tmp_path: Path, units: str
) -> None:
    examples, kd = _row_kd(llama_pair, data)
    lam = 0.5
    expected = []  # each unit's loss under the initial student
    for e in examples:
        original, *rest = kd([e.original, *e.counterfactuals])
        if not rest:
            expected.append(original)
        elif units == "example":
            expected.append(lam * original + (1 - lam) * sum(rest) / len(rest))
        else:
            expected.extend(lam * original + (1 - lam) * c for c in rest)
    n = len(expected)
    assert n == (4 if units == "example" else 2 + 4)  # pairs: a has 3 counterfactuals, b 1
    # One step over every unit: its loss is the objective before any update.
    result = distill(config(llama_pair, data, tmp_path / "out", lam=lam, hybrid_units=units,
                            batch_size=n, micro_batch_size=1, epochs=2))
    assert result.data["units_per_epoch"] == n and result.steps == 2
    assert result.history[0]["loss"] == pytest.approx(sum(expected) / n, rel=1e-5)


@pytest.mark.slow
def test_collective_counterfactuals_train_when_asked(llama_pair, tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    rows[0]["collective"] = "Ann has 7 pens."  # both spans pruned
    rows[1]["collective"] = rows[1]["pruned"][0]["instruction"]  # one span: the same prompt
    rows[2]["collective"] = rows[2]["instruction"]  # nothing pruned
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, kd = _row_kd(llama_pair, data, counterfactuals="collective")
    assert [len(e.counterfactuals) for e in examples] == [1, 1, 0, 0]
    result = distill(config(llama_pair, data, tmp_path / "c", counterfactuals="collective"))
    assert result.data["counterfactuals"] == 2 and result.config["counterfactuals"] == (
        "collective")
    losses = [kd([e.original, *e.counterfactuals]) for e in examples]
    expected = [0.5 * v[0] + 0.5 * v[1] if len(v) > 1 else v[0] for v in losses]
    assert result.history[0]["loss"] == pytest.approx(sum(expected) / 4, rel=1e-5)
    both = distill(config(llama_pair, data, tmp_path / "b", counterfactuals="both"))
    assert both.data["counterfactuals"] == 4 + 1  # b's collective is its span counterfactual


@pytest.mark.slow
def test_mix_adds_rows_and_hybrid_keeps_one_unit_per_example(
    llama_pair, data: Path, tmp_path: Path
) -> None:
    hybrid = distill(config(llama_pair, data, tmp_path / "h", batch_size=2))
    mix = distill(config(llama_pair, data, tmp_path / "m", batch_size=2, mode="mix"))
    counterfactuals = 2 + 1 + 1  # a: two instruction-level + one response-level; b: one
    assert hybrid.data["counterfactuals"] == mix.data["counterfactuals"] == counterfactuals
    assert hybrid.data["units_per_epoch"] == 4 and hybrid.steps == 2
    assert mix.data["units_per_epoch"] == 4 + counterfactuals and mix.steps == 4
    instr = distill(config(llama_pair, data, tmp_path / "i", level="instruction"))
    assert instr.data["counterfactuals"] == 3


@pytest.mark.slow
def test_lambda_one_is_plain_kd(llama_pair, data: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: r[k] for k in ("id", "instruction", "output")})
                             + "\n" for r in ROWS))
    kd = distill(config(llama_pair, plain, tmp_path / "kd"))
    lam1 = distill(config(llama_pair, data, tmp_path / "l1", lam=1.0))
    half = distill(config(llama_pair, data, tmp_path / "l5", lam=0.5))
    assert kd.history[0]["loss"] == pytest.approx(lam1.history[0]["loss"], rel=1e-6)
    assert half.history[0]["loss"] != pytest.approx(kd.history[0]["loss"], rel=1e-3)


@pytest.mark.slow
def test_validation_and_best_checkpoint(llama_pair, data: Path, tmp_path: Path) -> None:
    result = distill(config(llama_pair, data, tmp_path / "out", epochs=3, batch_size=1,
                            micro_batch_size=1, val_fraction=0.25))
    assert result.data["val_examples"] == 1 and result.data["train_examples"] == 3
    vals = [e.val_loss for e in result.epochs]
    assert all(v is not None and v > 0 for v in vals)
    best = min(result.epochs, key=lambda e: e.val_loss)
    assert result.best_checkpoint == best.checkpoint


@pytest.mark.slow
def test_teacher_cache_with_full_k_trains_like_the_live_teacher(
    llama_pair, data: Path, tmp_path: Path
) -> None:
    vocab = len(load_model(str(llama_pair[0]), device="cpu").tokenizer)
    live = distill(config(llama_pair, data, tmp_path / "live", epochs=2, batch_size=2))
    cached = distill(config(llama_pair, data, tmp_path / "cached", epochs=2, batch_size=2,
                            teacher_cache_topk=vocab))
    for a, b in zip(live.history, cached.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    (directory,) = (tmp_path / "cached" / "teacher-cache").iterdir()
    assert (directory / "complete.json").is_file()
    stamp = (directory / "ids.npy").stat().st_mtime_ns
    small = distill(config(llama_pair, data, tmp_path / "cached", teacher_cache_topk=vocab))
    assert (directory / "ids.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert small.steps == 1
    topk = distill(config(llama_pair, data, tmp_path / "k8", teacher_cache_topk=8))
    assert 0 < topk.history[0]["loss"] <= live.history[0]["loss"] + 1e-6  # a coarsened KL


@pytest.mark.slow
def test_student_passed_in_is_not_modified(llama_pair, data: Path, tmp_path: Path) -> None:
    teacher = load_model(str(llama_pair[0]), device="cpu")
    student = load_model(str(llama_pair[1]), device="cpu")
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    result = distill(config(llama_pair, data, tmp_path / "out", lr=1e-2), teacher=teacher,
                     student=student)
    assert max_diff(before, student.model.state_dict()) == 0.0
    assert max_diff(before, weights(result.last_checkpoint)) > 1e-4
    assert all(p.requires_grad for p in teacher.model.parameters())  # frozen() restored it


@pytest.mark.slow
def test_a_gguf_student_distills_and_saves_like_any_other(
    model_dir: Path, data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny_gguf import write_llama_gguf

    tok = tiny.bpe_tokenizer()
    # transformers' GGUF reader adds "<|endoftext|>" to a GPT-2 style vocabulary that lacks
    # it: one spare embedding row keeps the head as wide as the tokenizer.
    teacher, student = (
        write_llama_gguf(model_dir / f"{name}.gguf",
                         tiny.build_model("llama", len(tok) + 1, hidden=h, seed=seed), tok,
                         chat_template=tiny.CHAT_TEMPLATE)
        for name, h, seed in (("gguf-teacher", 48, 1), ("gguf-student", 32, 2)))
    loaded = load_model(str(student), device="cpu", dtype="float32")
    before = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    # transformers' own GGUF load keeps a "quantized" mark that refuses .float() and saving.
    raw = AutoModelForCausalLM.from_pretrained(student.parent, gguf_file=student.name)
    assert raw.is_quantized
    runs = {"by path": distill(config((teacher, student), data, tmp_path / "path", lr=1e-2)),
            "passed in": distill(config((teacher, student), data, tmp_path / "raw", lr=1e-2),
                                 student=replace(loaded, model=raw))}
    text = "Ann has 7 pens."
    for how, result in runs.items():
        saved = Path(result.last_checkpoint)
        assert "quantization_config" not in json.loads((saved / "config.json").read_text()), how
        model = AutoModelForCausalLM.from_pretrained(saved)
        assert max_diff(before, model.state_dict()) > 1e-4, how  # trained, saved as trained
        assert AutoTokenizer.from_pretrained(saved)(text).input_ids == loaded.tokenizer(
            text).input_ids
        again = load_model(str(saved), device="cpu")  # a directory now, no GGUF left in it
        assert again.template_note is None  # the chat template came along
    first, second = (r.history[0]["loss"] for r in runs.values())
    assert first == pytest.approx(second, rel=1e-5)  # the same student either way


def test_different_tokenizers_are_refused(model_dir: Path, data: Path, tmp_path: Path) -> None:
    word = tiny.save_pair(model_dir / "word", "llama", tiny.word_tokenizer(), seed=3)
    bpe = tiny.save_pair(model_dir / "bpe", "llama", tiny.bpe_tokenizer(), seed=4)
    with pytest.raises(IncompatibleModelsError, match="different tokenizers"):
        distill(config((word, bpe), data, tmp_path / "out"))


@pytest.mark.slow
def test_padded_teacher_vocab_is_truncated(llama_pair, data: Path, tmp_path: Path) -> None:
    teacher = load_model(str(llama_pair[0]), device="cpu")
    vocab = teacher.model.get_output_embeddings().weight.shape[0]
    padded = load_model(str(llama_pair[0]), device="cpu")
    padded.model.resize_token_embeddings(vocab + 13)
    with torch.no_grad():
        padded.model.get_output_embeddings().weight[vocab:] = 30.0  # would dominate if kept
    assert padded.model.get_output_embeddings().weight.shape[0] == vocab + 13
    plain = distill(config(llama_pair, data, tmp_path / "a"), teacher=teacher)
    wide = distill(config(llama_pair, data, tmp_path / "b"), teacher=padded)
    assert wide.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-5)


def test_bad_data_fails_before_models_load(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = DistillConfig(data=str(empty), out=str(tmp_path / "o"), teacher="/nonexistent/t",
                        student="/nonexistent/s")
    with pytest.raises(InputError, match="has no rows"):
        distill(cfg)
    no_output = tmp_path / "bad.jsonl"
    no_output.write_text('{"instruction": "q"}\n')
    with pytest.raises(InputError, match="line 1: missing field 'output'"):
        distill(replace(cfg, data=str(no_output)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lam", 1.5, "lam must be a number in [0, 1]"),
        ("lam", -0.1, "lam must be a number in [0, 1]"),
        ("mode", "blend", "mode must be one of hybrid, mix"),
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("temperature", 0.0, "temperature must be a number in (0, inf)"),
        ("lr", 0.0, "lr must be a number in (0, 1]"),
        ("batch_size", 6, "batch_size (6) must be a multiple of micro_batch_size (4)"),
        ("val_fraction", 1.0, "val_fraction must be a number in [0, 1)"),
        ("level", "token", "level must be one of auto, instruction, response"),
        ("hybrid_units", "all", "hybrid_units must be one of example, pair"),
        ("counterfactuals", "spans", "counterfactuals must be one of span, collective, both"),
        ("device", "tpu", "device must be auto, cpu or cuda"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    kw = {"micro_batch_size": 4} if field == "batch_size" else {}
    with pytest.raises(ConfigError) as info:
        DistillConfig(data="d.jsonl", out="o", **{field: value, **kw})
    assert message in str(info.value)


@pytest.mark.parametrize("choice", ["collective", "both"])
def test_only_verified_is_for_span_counterfactuals(choice: str) -> None:
    with pytest.raises(ConfigError, match="only_verified keeps span counterfactuals only") as info:
        DistillConfig(data="d.jsonl", out="o", only_verified=True, counterfactuals=choice)
    assert info.value.field == "only_verified"


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, warmup=4, total=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert 0 < factors[-1] < 0.05
