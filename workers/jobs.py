"""RQ job functions: thin adapters over `leaf_engine`.

Each takes one JSON object, returns a JSON-serialisable result and raises on failure; RQ's
worker is the one failure boundary. Progress, stage and ETA go to `job.meta`. Dataset jobs
write their outputs under DATA_DIR/jobs/{id}/ so they outlive Redis.

Importing this module is cheap (the API names these functions by path and never imports
torch): the engine is imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rq import get_current_job

from leaf_engine.data import atomic_writer
from leaf_engine.errors import InputError, LeafError
from leaf_service.cache import ModelRef, analysis_key
from leaf_service.jobs import (
    CORPUS_REPORT_FILES,
    DETECTIONS_FILE,
    MODEL_ARCHIVE,
    PRUNED_FILE,
    REPORT_FILE,
    RESULT_FILE,
    RESUME_ARCHIVE,
)
from leaf_service.specs import DetectSpec, DistillSpec, EvaluateSpec, PromptSpec
from workers.runtime import JobRun, WorkerContext, context

if TYPE_CHECKING:
    from leaf_engine.analysis import Analysis
    from leaf_engine.detect_output import DetectionCounts
    from leaf_engine.report import ReportBuilder

log = logging.getLogger(__name__)

KEY_CHUNK = 1000  # cache keys fetched per MGET
TOP_FLAGGED = 25
REPORT_TOP_PATTERNS = 5  # the corpus report's top patterns repeated in the job's result
PHASES = {"train": "training", "cache": "caching teacher outputs", "validate": "validating"}
SENSITIVITY_TAUS = tuple(round(0.05 * i, 2) for i in range(11))  # 0.0 .. 0.5
ARCHIVE_FOLDER = "model"  # what a distill job's archives unpack into


def detect_prompt(payload: dict[str, Any]) -> dict[str, Any]:
    """Analyse one prompt for POST /detect and store the raw analysis in the cache.

    payload: a `PromptSpec`'s JSON. Returns {"cache_key", "analysis"}: the API applies tau
    and friends itself.

    Prompts queued behind this one for the same models are analysed in the same batch and
    cached too; the API answers their requests from the cache, and their own jobs, when
    their turn comes, find the analysis there and end at once.
    """
    ctx = context()
    job = get_current_job()
    run = JobRun(ctx, job, durable=False)
    with run.running():
        spec = PromptSpec.from_json(payload)
        known = ctx.cache.get(spec.cache_key)
        if known is not None:  # analysed in an earlier job's batch
            return run.finish({"cache_key": spec.cache_key, "analysis": known})
        params = spec.analysis
        run.stage("loading models")
        detector = ctx.models.detector(ctx.model_ref(spec.teacher), ctx.model_ref(spec.student),
                                       batch_size=ctx.settings.batch_size, truncate=False)
        batch = [spec, *_queued_alike(ctx, spec, limit=ctx.settings.batch_size - 1)]
        pairs = [(s.instruction, s.output) for s in batch]
        run.stage("saliency", total=detector.work(pairs, params.level, params.segments))
        analyses = detector.analyse(pairs, level=params.level, segments=params.segments,
                                    with_surprisal=params.surprisal, progress=run.advance)
        data = [a.to_dict() for a in analyses]
        ctx.cache.put_many([(s.cache_key, d) for s, d in zip(batch, data, strict=True)])
        return run.finish({"cache_key": spec.cache_key, "analysis": data[0],
                           "batched": len(batch)})


def _queued_alike(ctx: WorkerContext, spec: PromptSpec, *, limit: int) -> list[PromptSpec]:
    """Specs of prompt jobs waiting at the head of the queue that can share this batch:
    same models and analysis parameters, not cached yet. They stay queued; this only reads."""
    if limit <= 0:
        return []
    from rq.job import Job

    from leaf_service.queues import PROMPT_FUNCTION, SERIALIZER, SHORT_QUEUE

    ids = [i.decode() for i in ctx.redis.lrange(f"rq:queue:{SHORT_QUEUE}", 0, 4 * limit)]
    out: list[PromptSpec] = []
    seen = {spec.cache_key}
    for queued in Job.fetch_many(ids, connection=ctx.redis, serializer=SERIALIZER):
        if queued is None or queued.func_name != PROMPT_FUNCTION or not queued.args:
            continue
        try:
            other = PromptSpec.from_json(queued.args[0])
        except InputError:  # its own job will fail with the reason; it cannot join this one
            continue
        if other.cache_key in seen or (other.teacher, other.student, other.analysis) != (
                spec.teacher, spec.student, spec.analysis):
            continue
        seen.add(other.cache_key)
        out.append(other)
        if len(out) >= limit:
            break
    if not out:
        return out
    with ctx.redis.pipeline(transaction=False) as pipe:
        for other in out:
            pipe.exists(other.cache_key)
        return [o for o, hit in zip(out, pipe.execute(), strict=True) if not hit]


def detect_dataset(payload: dict[str, Any]) -> dict[str, Any]:
    """Detect confounders in every row of an uploaded dataset, like `leaf detect`.

    payload: a `DetectSpec`'s JSON. Rows already in the analysis cache (from /detect or an
    earlier job) cost no model call; new analyses are added to it. Writes detections.jsonl,
    the corpus report (corpus_report.json, .html, .md) and, if asked, pruned.jsonl.
    """
    from leaf_engine.data import read_examples
    from leaf_engine.detect_output import write_detections
    from leaf_engine.report import ReportBuilder

    with _dataset_job() as (ctx, run, out_dir):
        spec = DetectSpec.from_json(payload)
        examples = read_examples(_dataset_path(ctx, spec.dataset_id))
        keys = [analysis_key(spec.teacher_id, spec.student_id, spec.analysis,
                             device=ctx.settings.device, dtype=ctx.settings.dtype,
                             instruction=e.instruction, output=e.output) for e in examples]
        run.stage("checking the cache")
        known: set[str] = set()
        for start in range(0, len(keys), KEY_CHUNK):
            chunk = keys[start : start + KEY_CHUNK]
            with ctx.redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.exists(key)
                known.update(k for k, hit in zip(chunk, pipe.execute(), strict=True) if hit)
        missing = [i for i, k in enumerate(keys) if k not in known]
        detector = None
        total = 0
        if missing:
            run.stage("loading models")
            detector = ctx.models.detector(ctx.model_ref(spec.teacher),
                                           ctx.model_ref(spec.student),
                                           batch_size=spec.batch_size, truncate=spec.truncate)
            total = detector.work([(examples[i].instruction, examples[i].output)
                                   for i in missing], spec.analysis.level,
                                  spec.analysis.segments)
        run.stage("saliency", total=total)
        summary = _Summary()
        # Fed as records are written, so the report costs no second pass over the file and
        # its memory stays flat in the number of rows.
        report = ReportBuilder()

        def on_record(record: dict[str, Any]) -> None:
            summary.add(record)
            report.add(record)  # numbered in order: its `line` is its line in detections.jsonl
            run.check()  # cached rows report no progress: stop here when asked

        counts = write_detections(
            examples, spec.config, out_dir / DETECTIONS_FILE, detector=detector,
            batch_size=spec.batch_size,
            export=out_dir / PRUNED_FILE if spec.export_pruned else None,
            progress=run.advance, on_record=on_record,
            cache=_CachedAnalyses(ctx, keys, known, computing=detector is not None),
        )
        run.stage("writing the report")
        result = {"records": len(examples), "cached": len(examples) - len(missing),
                  "computed": len(missing), **summary.to_dict(counts),
                  "report": _write_corpus_report(report, out_dir)}
        return run.finish(result)


def _write_corpus_report(builder: ReportBuilder, out_dir: Path) -> dict[str, Any] | None:
    """Write the corpus report into the job's directory under CORPUS_REPORT_FILES and
    answer the few figures of it that the job's result repeats (None for no records)."""
    from leaf_engine.report import FILES, write_report

    if not builder.records:
        return None
    report = builder.report(source=DETECTIONS_FILE)
    names = dict(zip(FILES, CORPUS_REPORT_FILES, strict=True))
    # write_report names its files report.*; they are written beside the outputs in a
    # hidden folder (never listed as one) and renamed, each whole, into place.
    staging = Path(tempfile.mkdtemp(prefix=".corpus-report-", dir=out_dir))
    try:
        for path in write_report(report, staging):
            path.replace(out_dir / names[path.name])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    main = report.segments[0]
    return {
        "files": list(CORPUS_REPORT_FILES),
        "segments": len(report.segments),
        "prompts_flagged": main.prompts_flagged,
        "flags_by_category": {c.category: c.flags for c in main.categories},
        "top_patterns": [{"pattern": p.pattern, "count": p.count, "prompts": p.prompts}
                         for p in main.patterns.rows[:REPORT_TOP_PATTERNS]],
    }


class _CachedAnalyses:
    """The analysis cache as the detect writer's source of known analyses: rows whose key
    existed when the job began are read block by block; what the models compute is added."""

    def __init__(self, ctx: WorkerContext, keys: list[str], present: set[str], *,
                 computing: bool):
        self.ctx = ctx
        self.keys = keys
        self.present = present
        self.computing = computing  # whether models were loaded for the missing rows

    def known(self, indices: Sequence[int]) -> Mapping[int, Analysis]:
        from leaf_engine.analysis import Analysis

        hits = [i for i in indices if self.keys[i] in self.present]
        out = {i: Analysis.from_dict(data) for i, data in
               zip(hits, self.ctx.cache.get_many([self.keys[i] for i in hits]), strict=True)
               if data is not None}
        if len(out) < len(indices) and not self.computing:
            # Only hits that expired meanwhile are missing, and no models are loaded.
            raise LeafError("cached analyses expired during the job; submit it again")
        return out

    def add(self, indices: Sequence[int], analyses: Sequence[Analysis]) -> None:
        self.ctx.cache.put_many([(self.keys[i], a.to_dict())
                                 for i, a in zip(indices, analyses, strict=True)])


class _Summary:
    """What a dataset's detections look like at a glance, for the UI."""

    def __init__(self) -> None:
        self.words: Counter[str] = Counter()
        self.per_record: Counter[int] = Counter()
        self.sensitivity = [[0, 0] for _ in SENSITIVITY_TAUS]  # [tokens, records] per tau

    def add(self, record: dict[str, Any]) -> None:
        flagged = [t for t in record["tokens"] if t["confounder"]]
        self.per_record[len(flagged)] += 1
        self.words.update(t["text"].strip().lower() for t in flagged if t["text"].strip())
        visible = [t["score"] for t in record["tokens"] if t["text"].strip()]
        for slot, tau in zip(self.sensitivity, SENSITIVITY_TAUS, strict=True):
            n = sum(score <= tau for score in visible)
            slot[0] += n
            slot[1] += n > 0

    def to_dict(self, counts: DetectionCounts) -> dict[str, Any]:
        return {
            "flagged_tokens": counts.flagged_tokens,
            "spans": counts.spans,
            "pruned_rows": counts.pruned_rows,
            # Bytes at the run's peak, weights included (CUDA: None without a GPU).
            "peak_memory": {"rss_bytes": counts.peak_rss_bytes,
                            "cuda_bytes": counts.peak_cuda_bytes},
            "summary": {
                "top_flagged": [[w, c] for w, c in self.words.most_common(TOP_FLAGGED)],
                "flags_per_record": {str(k): v for k, v in sorted(self.per_record.items())},
            },
            "sensitivity": [{"tau": tau, "tokens": n, "records": r}
                            for tau, (n, r) in zip(SENSITIVITY_TAUS, self.sensitivity,
                                                   strict=True)],
        }


def distill_dataset(payload: dict[str, Any]) -> dict[str, Any]:
    """Distill the teacher into the student on a dataset (plain rows, detection records or
    pruned rows) or on a finished detect job's records. payload: a `DistillSpec`'s JSON.
    Writes the checkpoints, the downloads (MODEL_ARCHIVE: the best model; RESUME_ARCHIVE:
    the state to continue training) and the training result (per-epoch and per-step
    losses, and `downloads`, which says what each archive holds)."""
    from leaf_engine.distill import distill
    from leaf_engine.distill_config import DistillConfig

    with _dataset_job() as (ctx, run, out_dir):
        spec = DistillSpec.from_json(payload)
        if spec.detect_job is not None:
            data = ctx.store.job_file(spec.detect_job, DETECTIONS_FILE)
            if data is None:
                raise InputError(f"job {spec.detect_job} has no detection records",
                                 field="detect_job")
        else:
            data = _dataset_path(ctx, spec.dataset_id)
        teacher_ref = ctx.model_ref(spec.teacher)
        student_ref = ctx.model_ref(spec.student)
        config = DistillConfig(
            data=str(data), out=str(out_dir / "checkpoint"), teacher=teacher_ref.path,
            student=student_ref.path, device=ctx.settings.device, **spec.config,
        )
        run.stage("loading models")
        # distill copies the student before training, so the cached models serve as is.
        teacher, student = ctx.models.get(teacher_ref), ctx.models.get(student_ref)
        run.stage("training")

        def progress(p: Any) -> None:
            run.note(stage=PHASES.get(p.phase, p.phase), step=p.step,
                     total_steps=p.total_steps, epoch=p.epoch, loss=p.loss)
            run.fraction(p.step / p.total_steps if p.total_steps else 0.0)

        result = distill(config, teacher=teacher, student=student, progress=progress,
                         should_stop=run.should_stop).to_dict()
        run.raise_if_stopped()  # distill returns early when asked to stop
        run.stage("archiving")
        best = _best_checkpoint(result, out_dir)
        last = _job_checkpoint(result.get("last_checkpoint"), out_dir)
        result["downloads"] = {} if best is None else _write_downloads(best, last, out_dir)
        result["checkpoint"] = None if best is None else str(best.relative_to(out_dir))
        result = _public_paths(result, out_dir, {
            teacher_ref.path: spec.teacher, student_ref.path: spec.student,
            str(data): _data_label(spec)})
        with atomic_writer(out_dir / RESULT_FILE) as handle:
            json.dump(result, handle, indent=1)
        return run.finish(result)


def evaluate_dataset(payload: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a model (from the allow-list, or a finished distillation job's checkpoint)
    on a dataset: greedy answers, accuracy, and Jaccard similarity to the teacher.
    payload: an `EvaluateSpec`'s JSON."""
    from leaf_engine.evaluate import EvalConfig, evaluate

    with _dataset_job() as (ctx, run, out_dir):
        spec = EvaluateSpec.from_json(payload)
        if spec.checkpoint_job is not None:
            model_ref = ModelRef(str(_checkpoint_of(ctx, spec.checkpoint_job)))
        else:
            model_ref = ctx.model_ref(spec.model)
        teacher_ref = ctx.model_ref(spec.teacher) if spec.teacher else None
        config = EvalConfig(
            model=model_ref.path, data=str(_dataset_path(ctx, spec.dataset_id)),
            out=str(out_dir / REPORT_FILE),
            teacher=None if teacher_ref is None else teacher_ref.path,
            device=ctx.settings.device, **spec.config,
        )
        run.stage("loading models")
        model = ctx.models.get(model_ref)
        teacher = None if teacher_ref is None else ctx.models.get(teacher_ref)
        run.stage("generating")

        def progress(done: int, total: int) -> None:
            run.fraction(done / total if total else 0.0)

        report = evaluate(config, model=model, teacher=teacher, progress=progress).to_dict()
        report_path = out_dir / REPORT_FILE
        public = _public_paths(report, out_dir,
                               _eval_names(spec, model_ref, teacher_ref, config.data))
        with atomic_writer(report_path) as handle:  # the downloadable copy: no server paths
            json.dump(public, handle, indent=1)
        return run.finish(public)


@contextmanager
def _dataset_job() -> Iterator[tuple[WorkerContext, JobRun, Path]]:
    """A durable job's context, its run (status in job.json, errors recorded, a malformed
    spec among them: parse it inside) and the directory its outputs go to."""
    ctx = context()
    job = get_current_job()
    if job is None:
        raise LeafError("a dataset job runs in a worker: its outputs go to the job's directory")
    run = JobRun(ctx, job, durable=True)
    with run.running():
        yield ctx, run, ctx.store.job_dir(job.id)


def _dataset_path(ctx: WorkerContext, dataset_id: str) -> Path:
    path = ctx.store.dataset_rows_path(dataset_id)
    if path is None:
        raise InputError(f"dataset {dataset_id} no longer exists", field="dataset_id")
    return path


def _checkpoint_of(ctx: WorkerContext, job_id: str) -> Path:
    """The best checkpoint of a finished distillation job, inside that job's directory."""
    record = ctx.store.job_record(job_id)
    if record is None or record.get("kind") != "distill" or record.get("status") != "finished":
        raise InputError(f"job {job_id} is not a finished distillation", field="checkpoint_job")
    job_dir = ctx.store.job_dir(job_id)
    relative = (record.get("result") or {}).get("checkpoint")
    path = (job_dir / relative).resolve() if relative else None
    if path is None or not path.is_dir() or job_dir.resolve() not in path.parents:
        raise InputError(f"job {job_id} has no checkpoint", field="checkpoint_job")
    return path


def _best_checkpoint(result: dict[str, Any], out_dir: Path) -> Path | None:
    """The checkpoint directory distill reports as best, if it is inside the job's."""
    for key in ("best_checkpoint", "last_checkpoint"):
        path = _job_checkpoint(result.get(key), out_dir)
        if path is not None:
            return path
    default = out_dir / "checkpoint"
    return default if default.is_dir() else None


def _job_checkpoint(value: Any, out_dir: Path) -> Path | None:
    """A checkpoint directory distill reported, if it is one inside the job's directory."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    path = (path if path.is_absolute() else out_dir / path).resolve()
    return path if path.is_dir() and out_dir.resolve() in [path, *path.parents] else None


def _write_downloads(best: Path, last: Path | None, out_dir: Path) -> dict[str, str]:
    """Write MODEL_ARCHIVE (the best checkpoint without its training state: what
    `from_pretrained` loads) and RESUME_ARCHIVE (what the last checkpoint adds to resume:
    its training state, and its weights too when it is not the best); return what each
    holds. Both unpack into ARCHIVE_FOLDER, so unpacking one then the other gives the last
    checkpoint whole."""
    from leaf_engine.distill import OPTIMIZER_FILE, TRAINING_FILES

    _write_tar(out_dir / MODEL_ARCHIVE,
               [p for p in sorted(best.iterdir()) if p.name not in TRAINING_FILES])
    out = {MODEL_ARCHIVE: f"the best checkpoint ({best.name}): weights (safetensors), config "
                          "and tokenizer, for from_pretrained"}
    if last is None or not (last / OPTIMIZER_FILE).is_file():
        return out
    same = last == best
    _write_tar(out_dir / RESUME_ARCHIVE,
               [p for p in sorted(last.iterdir()) if not same or p.name in TRAINING_FILES])
    out[RESUME_ARCHIVE] = (
        f"for resuming only: the optimizer, scheduler and RNG state and trainer_state.json of "
        f"the last checkpoint ({last.name})"
        + ("" if same else ", with its weights (it is not the best)")
        + f"; unpack {MODEL_ARCHIVE} then {RESUME_ARCHIVE} into one folder")
    return out


def _write_tar(path: Path, files: list[Path]) -> None:
    """An uncompressed tar of `files` under ARCHIVE_FOLDER/, streamed file by file (never
    whole in memory) to a hidden name and renamed into place when complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as archive:
            for file in files:
                archive.add(file, arcname=f"{ARCHIVE_FOLDER}/{file.name}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _public_paths(data: Any, root: Path, named: dict[str, str]) -> Any:
    """Results are shown to API users: no server paths in them. A model or data path
    becomes the name the request used; a path inside the job's directory, relative."""
    prefix = str(root.resolve()) + "/"
    if isinstance(data, dict):
        return {k: _public_paths(v, root, named) for k, v in data.items()}
    if isinstance(data, list):
        return [_public_paths(v, root, named) for v in data]
    if isinstance(data, str):
        if data in named:
            return named[data]
        if data.startswith(prefix):
            return data[len(prefix):]
    return data


def _data_label(spec: DistillSpec | EvaluateSpec) -> str:
    if isinstance(spec, DistillSpec) and spec.detect_job is not None:
        return f"records of job {spec.detect_job}"
    return f"dataset {spec.dataset_id}"


def _eval_names(spec: EvaluateSpec, model: ModelRef, teacher: ModelRef | None,
                data: str) -> dict[str, str]:
    named = {data: _data_label(spec),
             model.path: (f"checkpoint of job {spec.checkpoint_job}"
                          if spec.checkpoint_job is not None else str(spec.model))}
    if teacher is not None and spec.teacher is not None:
        named[teacher.path] = spec.teacher
    return named


def calibrate_dataset(payload: dict[str, Any]) -> dict[str, Any]:
    """Sweep tau (or a percentile) on a dataset whose rows have an output and an answer, as
    `leaf calibrate` does. payload: a `CalibrateSpec`'s JSON. Writes CALIBRATION_JSON and,
    where matplotlib is installed, CALIBRATION_PNG; the result is the curve and the
    recommended value."""
    import dataclasses

    from leaf_engine.calibrate import JUDGE_OPTIONS, calibrate, configs_from, write_calibration
    from leaf_engine.data import read_examples
    from leaf_engine.selection import Judge, require_references
    from leaf_service.specs import CalibrateSpec

    with _dataset_job() as (ctx, run, out_dir):
        spec = CalibrateSpec.from_json(payload)
        sweep, detect = configs_from(spec.config)
        examples = read_examples(_dataset_path(ctx, spec.dataset_id))
        require_references(examples, "a calibrate job")
        generation = {k: spec.config[k] for k in JUDGE_OPTIONS if k in spec.config}
        batch_size = generation.pop("batch_size", ctx.settings.batch_size)
        run.stage("loading models")
        detector = ctx.models.detector(ctx.model_ref(spec.teacher), ctx.model_ref(spec.student),
                                       batch_size=batch_size, truncate=False)
        shown = [""]  # the stage the job's meta names

        def progress(stage: str, done: int, total: int) -> None:
            if stage != shown[0]:
                shown[0] = stage
                run.stage(stage, total=total)
            run.fraction(done / total if total else 0.0)

        result = calibrate(detector, examples, sweep=sweep, detect=detect, progress=progress,
                           judge=Judge(batch_size=batch_size, **generation))
        # Names as the request gave them: no server paths in the downloadable curve.
        result = dataclasses.replace(result, params={
            "data": f"dataset {spec.dataset_id}", **result.params, "teacher": spec.teacher,
            "student": spec.student})
        run.stage("writing the curve")
        written, note = write_calibration(result, out_dir)
        return run.finish({**result.to_dict(), "files": [p.name for p in written],
                           **({"png": note} if note else {})})
