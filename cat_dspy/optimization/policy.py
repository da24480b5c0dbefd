"""``cat-dspy optimize --target policy``: optimize the policy program itself, with CaT's reference as the metric.

The program is the solve program by default (:class:`~cat_dspy.modules.Solver`: the ``Solve`` signature, the
rollout prompt of a ``CaT`` program), the rollout prompt of a saved ``CaT`` program (``program``), or any DSPy
module of a script (``module="path.py:Name"``, called as ``program(question=...)``). ``metric`` scores it:

* ``cat``: agreement with the frozen anchor's reference, synthesized from G outputs of the base program
  (:class:`~cat_dspy.optimization.label_free.CaTAgreement`; free-text tasks: the reference's rubric score);
* ``majority``: agreement with the majority answer of the same G outputs
  (:class:`~cat_dspy.optimization.label_free.MajorityAgreement`);
* ``gold``: the gold answer (:class:`~cat_dspy.optimization.metrics.AnswerMetric`), the labelled ceiling.

With ``cat`` and ``majority`` the training examples hold the question only: no label reaches the optimizer or the
metric. Optimizers: ``BootstrapFewShot`` (demos the metric accepts), ``MIPROv2``, ``SIMBA``, ``GEPA`` (these three
need a capable proposal LM, ``reflection_lm``). The solve program is saved as a whole ``CaT`` program (its
``rollout.generate`` prompt optimized), so ``cat-dspy solve``/``eval --program`` and ``CaT.load`` or
``Solver.load`` read it; a script's module is saved with its own ``save``, and its class loads it.

Resume: every LM call goes through a DSPy disk cache in the run folder (``runs/optimize/policy-<hash>``, ``run_dir``)
and each finished reference is appended to a crash-safe JSONL cache, so a killed run, rerun with the same options,
recomputes nothing it had finished. Labels are read only by ``metric="gold"`` and by the held-out report
(``test`` > 0: the base and optimized programs' G outputs per held-out question graded against the gold answers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cat_dspy.lm.usage import tracker_totals
from cat_dspy.modules.base import thread_map
from cat_dspy.optimization.compile import (
    DEFAULT_OUT,
    METRICS,
    JsonlCache,
    OptimizeConfig,
    OptimizeError,
    lm_settings,
    make_optimizer,
    proposal_lm,
    seed_of,
    split,
)
from cat_dspy.optimization.label_free import build_references, sample_outputs

RUNS = "runs/optimize"
"""Where each policy optimization keeps its run folder (DSPy disk cache) unless ``run_dir`` says otherwise."""
_NOT_HASHED = ("out", "threads", "experiment", "traces", "run_dir", "cache", "test", "data_dir")


def load_module(spec: str) -> Any:
    """The DSPy module named by ``"path.py:Name"``: a module instance, or a class (or function) called with no
    arguments.

    Raises:
        OptimizeError: No such file or name, or the name is no ``dspy.Module``.
    """
    import dspy

    path, _, name = spec.rpartition(":")
    if not path or not name or not Path(path).is_file():
        raise OptimizeError(f"--module must be FILE.py:NAME of an existing file, got {spec!r}")
    loader = importlib.util.spec_from_file_location(f"cat_dspy_user_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[loader.name] = module  # a class pickled or deep-copied by an optimizer is found again
    loader.loader.exec_module(module)
    if not hasattr(module, name):
        raise OptimizeError(f"{path} has no {name!r}")
    found = getattr(module, name)
    program = found if isinstance(found, dspy.Module) else found() if callable(found) else None
    if not isinstance(program, dspy.Module):
        raise OptimizeError(f"{spec} is no dspy.Module (nor a class or function that returns one)")
    return program


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else None


def run_key(config: OptimizeConfig, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What determines a policy optimization's LM calls (the run folder's name is its hash)."""
    fields = {k: v for k, v in vars(config).items() if k not in _NOT_HASHED}
    return fields | {"settings": settings, "program_sha256": file_digest(config.program),
                     "module_sha256": file_digest(config.module.rpartition(":")[0]) if config.module else None}


@contextlib.contextmanager
def stage(usage: dict[str, dict[str, float]], name: str) -> Iterator[None]:
    """Record the LM calls, tokens and wall seconds of the block under ``usage[name]`` (cache hits count no call),
    also those made on the worker threads of ``dspy.Evaluate`` and the optimizers (``dspy.Parallel`` gives each of
    its threads a deep copy of the usage tracker, whose counts would be lost: this one is shared, not copied)."""
    import dspy
    from dspy.utils.usage_tracker import UsageTracker

    class SharedTracker(UsageTracker):
        def __init__(self) -> None:
            super().__init__()
            self.lock = threading.Lock()

        def __deepcopy__(self, memo: dict[int, Any]) -> SharedTracker:
            return self

        def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
            with self.lock:
                super().add_usage(lm, usage_entry)

    tracker, parent = SharedTracker(), dspy.settings.usage_tracker
    start = time.perf_counter()
    try:
        with dspy.settings.context(usage_tracker=tracker):
            yield
    finally:
        usage[name] = {**tracker_totals(tracker), "seconds": time.perf_counter() - start}
        if parent is not None:
            for lm, entries in tracker.usage_data.items():
                parent.usage_data[lm].extend(entries)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr; yields a thread-safe ``advance()``."""
    from tqdm import tqdm

    lock = threading.Lock()
    with tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, mininterval=2.0) as bar:
        def advance() -> None:
            with lock:
                bar.update(1)

        yield advance


def heldout(program: Any, items: list[Any], g: int, lm: Any, temperature: float, extraction: str,
            equivalence: str, threads: int, progress: bool = True) -> dict[str, Any]:
    """G outputs of ``program`` per held-out item with a gold answer, graded: per question the share of the G right
    (single-rollout accuracy) and whether their majority answer is right (majority@G)."""
    from cat_dspy.scoring.equivalence import equivalent
    from cat_dspy.scoring.extraction import extract_answer
    from cat_dspy.scoring.rewards import majority_answer

    items = [i for i in items if i.verifiable]
    with progress_bar(len(items), "held-out", progress) as advance:
        def grade(item: Any) -> tuple[float, float] | None:
            outputs = sample_outputs(program, {"question": item.question}, g, lm, temperature)
            advance()
            if outputs is None:
                return None
            answers = [extract_answer(o, extraction) for o in outputs]
            right = [equivalent(item.answer, a, mode=equivalence) for a in answers]
            top, _, _ = majority_answer(answers, mode=equivalence)
            return sum(right) / g, float(equivalent(item.answer, top, mode=equivalence))

        graded = thread_map(grade, items, max(1, threads))
    kept = [(i, r) for i, r in zip(items, graded, strict=True) if r is not None]
    return {"ids": [i.id for i, _ in kept], "single": [r[0] for _, r in kept], "majority": [r[1] for _, r in kept]}


def changes_of(before: Any, after: Any) -> dict[str, dict[str, Any]]:
    """Per predictor: how many demos it holds now, and whether its instructions changed."""
    old = dict(before.named_predictors())
    return {name: {"demos": len(p.demos), "instructions_changed":
                   p.signature.instructions != old[name].signature.instructions}
            for name, p in after.named_predictors()}


def optimize_policy(config: OptimizeConfig, lms: dict[str, Any],
                    settings: dict[str, dict[str, Any]] | None = None, progress: bool = True) -> dict[str, Any]:
    """Optimize the policy program with ``config.metric`` and save it (see the module docstring).

    Returns:
        ``{"out", "report", "changes", "examples", "references", "usage", "run_dir"}``; ``report``: the report file
        (meta, per-stage LM calls and seconds, references built, and with ``test`` > 0 the held-out comparison).

    Raises:
        OptimizeError: Options that cannot work together, or no usable training example.
    """
    import dspy
    import mlflow

    from cat_dspy import tracking
    from cat_dspy.adapters import FreeTextAdapter
    from cat_dspy.evaluation.runner import dspy_cache_in
    from cat_dspy.lm.hf import cache_dir
    from cat_dspy.modules import CaT
    from cat_dspy.modules.solver import Solver
    from cat_dspy.optimization.label_free import CaTAgreement, MajorityAgreement
    from cat_dspy.optimization.metrics import AnswerMetric, compare
    from cat_dspy.scoring.stats import mean_stderr
    from cat_dspy.signatures import Respond, Solve

    mode = config.mode or "verifiable"
    metric_name = config.metric or "cat"
    if metric_name not in METRICS:
        raise OptimizeError(f"--metric must be one of {METRICS}, got {metric_name!r}")
    if metric_name in ("majority", "gold") and mode != "verifiable":
        raise OptimizeError(f"--metric {metric_name} compares final answers: it needs --mode verifiable")
    if config.program and config.module:
        raise OptimizeError("--program (a saved CaT program) and --module (a script's module) exclude each other")
    seed = seed_of(config)
    random.seed(seed)
    settings = settings if settings is not None else lm_settings(lms)
    temperature = settings["policy"]["temperature"]
    cat = CaT(g=config.g, mode=mode, policy=lms["policy"], anchor=lms["anchor"], judge=lms["judge"],
              question_aware=config.question_aware, per_criterion=config.per_criterion,
              equivalence=config.equivalence, extraction=config.extraction, temperature=temperature)
    if config.program:
        cat.load(config.program)
    if config.module:
        student = load_module(config.module)
    else:
        student = Solver(signature=Solve if mode == "verifiable" else Respond, extraction=config.extraction)
        student.generate.load_state(cat.rollout.generate.dump_state())
    base = student.deepcopy()
    policy_lm = lms["policy"]

    key = run_key(config, settings)
    run_dir = Path(config.run_dir or f"{RUNS}/policy-{digest(key)}")
    folder = None if config.cache == "none" else Path(config.cache or cache_dir() / "optimize")
    ref_key = {"dataset": str(config.dataset), "split": config.split, "g": config.g, "seed": config.seed,
               "mode": mode, "question_aware": config.question_aware, "policy": settings["policy"],
               "anchor": settings["anchor"], "program": digest(base.dump_state())}
    references_cache = JsonlCache(folder, "policy-references", ref_key)  # the judge only scores: not in the key
    validates = config.optimizer in ("mipro", "gepa")  # bootstrap and SIMBA take no validation set: --dev unused
    train, dev, test = split(config if validates else dataclasses.replace(config, dev=0), lambda item: True)
    if metric_name == "gold" and any(not i.verifiable for i in train + dev):
        raise OptimizeError("--metric gold needs a gold answer for every training example")

    def example(item: Any) -> Any:
        fields = {"question": item.question} | ({"answer": item.answer} if metric_name == "gold" else {})
        return dspy.Example(**fields).with_inputs("question")  # cat / majority: the question only, no label

    trainset, devset = [example(i) for i in train], [example(i) for i in dev]
    proposer = proposal_lm(config, settings["anchor"]["model"])
    out = Path(config.out or f"{DEFAULT_OUT}/policy-{config.optimizer}-{metric_name}.json")
    meta = {"target": "policy", "metric": metric_name, "optimizer": config.optimizer, "budget": config.budget,
            "mode": mode, "dataset": str(config.dataset), "train": config.train, "dev": config.dev,
            "test": config.test, "g": config.g, "seed": seed, "demos": config.demos,
            "program": config.program, "module": config.module, "reflection_lm": getattr(proposer, "model", None),
            "equivalence": config.equivalence, "extraction": config.extraction}
    params = meta | {f"{role}.{k}": v for role, opts in settings.items() for k, v in opts.items()}
    usage: dict[str, dict[str, float]] = {}
    tracking.write_json(key, run_dir / "config.json")
    with dspy_cache_in(run_dir / "dspy_cache"), dspy.context(lm=policy_lm), \
            tracking.run(config.experiment, run_name=f"optimize-policy-{config.optimizer}-{metric_name}"):
        mlflow.dspy.autolog(log_traces=config.traces, log_compiles=True, log_evals=True, silent=True)
        try:
            tracking.log_params({f"cat.{k}": v for k, v in params.items()} | {"cat.run_dir": str(run_dir)})
            references: dict[str, Any] = {}
            if metric_name == "gold":
                metric = AnswerMetric(equivalence=config.equivalence, extraction=config.extraction)
            else:
                with stage(usage, "references"), progress_bar(len(trainset + devset), "references", progress) as adv:
                    references = build_references(trainset + devset, base, cat, references_cache, g=config.g,
                                                  lm=policy_lm, temperature=temperature, threads=config.threads,
                                                  progress=adv)
                trainset = [ex for ex in trainset if _has(references, ex)]
                devset = [ex for ex in devset if _has(references, ex)]
                options = {"equivalence": config.equivalence, "extraction": config.extraction}
                metric = (MajorityAgreement(references, **options) if metric_name == "majority" else
                          CaTAgreement(references, **options, judge=cat.judge if mode == "rubric" else None))
            mlflow.log_metrics({"examples.train": len(trainset), "examples.dev": len(devset),
                                "references": len(references)})
            if not trainset:
                raise OptimizeError("no usable training examples (every rollout group failed?)")
            with stage(usage, "train-base"):  # a baseline, and cached calls for bootstrap's sequential pass
                evaluator = dspy.Evaluate(devset=trainset, metric=metric, num_threads=config.threads,
                                          max_errors=10 * len(trainset), display_progress=progress)
                base_scores = [float(s) for _, _, s in evaluator(student).results]
            mlflow.log_metric("train.base", mean_stderr(base_scores)[0])
            optimizer, extra = make_optimizer(config, metric, proposer, policy_lm)
            local_proposer = config.optimizer == "mipro" and proposer.model.startswith("local")
            with stage(usage, "compile"), \
                    dspy.context(adapter=FreeTextAdapter()) if local_proposer else contextlib.nullcontext():
                with_valset = {"valset": devset} if devset else {}
                compiled = optimizer.compile(student, trainset=trainset, **with_valset, **extra)
            compiled._compiled = False
            changes = changes_of(base, compiled)
            out.parent.mkdir(parents=True, exist_ok=True)
            if config.module:
                compiled.save(str(out))
            else:
                cat.rollout.generate = compiled.generate
                cat.provenance = meta
                cat.save(str(out))
            mlflow.log_artifact(str(out), "program")
            report: dict[str, Any] = {**meta, "out": str(out), "run_dir": str(run_dir), "changes": changes,
                                      "examples": len(trainset), "references": len(references),
                                      "train_base": mean_stderr(base_scores)[0]}
            if test:
                grade = {"g": config.g, "lm": policy_lm, "temperature": temperature, "extraction": config.extraction,
                         "equivalence": config.equivalence, "threads": config.threads, "progress": progress}
                with stage(usage, "heldout"):
                    before, after = heldout(base, test, **grade), heldout(compiled, test, **grade)
                common = sorted(set(before["ids"]) & set(after["ids"]))
                for name in ("single", "majority"):
                    b, a = (dict(zip(r["ids"], r[name], strict=True)) for r in (before, after))
                    report[f"test_{name}"] = compare([b[q] for q in common], [a[q] for q in common])
                    mlflow.log_metrics({f"test.{name}.{part}.{stat}": report[f"test_{name}"][part][stat]
                                        for part in ("base", "optimized", "difference") for stat in ("mean", "se")})
                report["test_ids"] = common
            report["usage"] = usage
            report_path = tracking.write_json(report, out.with_name(out.stem + ".report.json"))
            mlflow.log_artifact(str(report_path), "program")
            tracking.log_json(changes, "program_changes.json")
            mlflow.log_metrics({f"usage.{name}.{k}": float(v) for name, u in usage.items() for k, v in u.items()})
            return {"out": str(out), "report": report, "changes": changes, "examples": len(trainset),
                    "references": len(references), "usage": usage, "run_dir": str(run_dir)}
        finally:
            mlflow.dspy.autolog(disable=True, silent=True)


def _has(references: dict[str, Any], example: Any) -> bool:
    from cat_dspy.optimization.label_free import inputs_key

    return inputs_key(example) in references


__all__ = ["RUNS", "heldout", "load_module", "optimize_policy"]
