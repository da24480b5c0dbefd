"""``cat-dspy optimize``: compile one of CaT's prompts with a DSPy optimizer and save the whole program.

The target submodule of a :class:`~cat_dspy.modules.CaT` program (``synthesize``, ``propose_rubric`` or ``judge``)
is compiled with ``BootstrapFewShot``, ``MIPROv2``, ``SIMBA`` or ``GEPA`` against a labelled metric
(:mod:`cat_dspy.optimization.metrics`) on examples built from a seeded, disjoint train/dev/test split. The whole
program is saved as DSPy JSON, so ``solve``, ``eval`` and ``train`` load it with ``--program PATH``. The compile is
one MLflow run (``mlflow.dspy.autolog(log_compiles=True, log_evals=True)``) holding the params, the saved program
and, with ``--test N``, a held-out base-vs-optimized report. Programs are saved and loaded by DSPy (``CaT.save`` /
``CaT.load``). ``--target policy`` (the policy program itself, scored by CaT's reference without labels) is
:func:`cat_dspy.optimization.policy.optimize_policy`, on the same configuration.

The modules call their LM under :class:`~cat_dspy.adapters.FreeTextAdapter` whatever the optimizer does, so
bootstrapped demos render through it. During a compile the target's LM is lent through ``dspy.settings.lm`` instead
of the module attribute: optimizers deep-copy the student many times, and a copied local LM would copy its model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cat_dspy.config import DEFAULTS
from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.lm.roles import ROLE_TEMPERATURE
from cat_dspy.modules.base import thread_map

logger = logging.getLogger(__name__)

TARGETS = {"synthesize": "synthesize", "rubric": "propose_rubric", "judge": "judge"}
OPTIMIZERS = ("bootstrap", "mipro", "simba", "gepa")
AUTO = ("light", "medium", "heavy")
METRICS = ("cat", "majority", "gold")
"""``--metric`` of ``--target policy``: CaT's reference and the majority answer (label-free), the gold answer."""
DEFAULT_OUT = "outputs/programs"
"""Where saved programs go unless ``out`` says otherwise (not ``programs/``, the folder of example scripts)."""


class OptimizeError(ValueError):
    """Options that cannot work together (the CLI prints the message and exits)."""


@dataclass
class OptimizeConfig:
    """What :func:`optimize` compiles, on which data, with which optimizer (``cat-dspy optimize`` flags, one each).

    The role LMs are passed to :func:`optimize` separately. ``budget``: light|medium|heavy, or an integer (GEPA
    metric calls, MIPRO trials, SIMBA steps, bootstrap rounds). ``cache``: folder of cached rollouts/references,
    "none" for memory only, None for the cat-dspy cache. ``out`` defaults to
    ``outputs/programs/<target>-<optimizer>.json``. :data:`POLICY_ONLY` fields are ``--target policy``'s:
    ``metric`` (cat|majority|gold, default cat), ``program`` (a saved CaT program whose rollout prompt to
    optimize), ``module`` (``path.py:Name``, a DSPy module to optimize) and ``run_dir`` (its DSPy cache).
    """

    target: str
    dataset: str
    split: str | None = None
    data_dir: str | None = None
    train: int = 20
    dev: int = 10
    test: int = 0
    g: int = 4
    optimizer: str = "bootstrap"
    budget: str = "light"
    demos: int = 2
    reflection_lm: str | None = None
    reference_judge: str | None = None
    criteria: int = 6
    mode: str | None = None
    question_aware: bool = DEFAULTS["question_aware"]
    per_criterion: bool = DEFAULTS["per_criterion"]
    threads: int = 4
    out: str | None = None
    cache: str | None = None
    experiment: str = "cat-dspy-optimize"
    traces: bool = False
    equivalence: str = DEFAULTS["equivalence"]
    extraction: str = DEFAULTS["extraction"]
    seed: int | None = None
    api_base: str | None = None
    metric: str | None = None
    program: str | None = None
    module: str | None = None
    run_dir: str | None = None


POLICY_ONLY = ("metric", "program", "module", "run_dir")
"""Options of ``--target policy`` only (:mod:`cat_dspy.optimization.policy`)."""


class JsonlCache:
    """Values by item id (rollouts, references, labels), one crash-safe JSONL file per configuration.

    The file is a :class:`~cat_dspy.jsonl_store.JsonlStore` of ``{"id": key, "value": value}`` records: each value
    is fsync'd as it is computed, and a line torn by a crash is dropped when the next run opens the cache, so a
    rerun computes only what was not durably written. Folder None: memory only.
    """

    def __init__(self, folder: str | Path | None, kind: str, config: dict[str, Any]):
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.store = JsonlStore(Path(folder) / f"{kind}-{digest}.jsonl") if folder is not None else None
        self.path = self.store.path if self.store is not None else None
        self._data = {} if self.store is None else {k: r["value"] for k, r in self.store.load().items()}
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        return self._data.get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            if self.store is not None:
                self.store.append({"id": key, "value": value})


def cached(cache: JsonlCache, items: list[Any], make: Callable[[Any], Any | None], threads: int) -> dict[str, Any]:
    """``{item.id: value}``, computing missing values with ``make`` (None: failed, not cached) on ``threads``
    threads, each in a copy of the caller's context (DSPy settings, usage trackers)."""

    def fill(item: Any) -> None:
        if cache.get(item.id) is None and (value := make(item)) is not None:
            cache.put(item.id, value)

    thread_map(fill, items, max(1, threads))
    return {item.id: cache.get(item.id) for item in items if cache.get(item.id) is not None}


def split(args: OptimizeConfig, usable: Callable[[Any], bool]) -> tuple[list, list, list]:
    """Seeded, disjoint train/dev/test items of ``--dataset`` (only those ``usable`` for the target)."""
    from cat_dspy.datasets import DATASETS, DataError, load_dataset, split_items

    spec = DATASETS.get(str(args.dataset).lower())
    split_name = args.split or ("train" if spec is not None and "train" in spec.files else None)
    items = [i for i in load_dataset(args.dataset, split=split_name, data_dir=args.data_dir) if usable(i)]
    if len(items) < args.train + args.dev + args.test:
        raise DataError(f"{args.dataset}: {len(items)} usable items for --target {args.target}, need more")
    return split_items(items, train=args.train, dev=args.dev, test=args.test, seed=seed_of(args))


def seed_of(args: OptimizeConfig) -> int:
    return 0 if args.seed is None else args.seed


def ideal_completions(args: OptimizeConfig, items: list[Any]) -> dict[str, str]:
    """Physician-written ideal completions by item id (HealthBench's ``ideal_completions_data``).

    JSONL files keep the field in ``item.meta``; for named sets it is read from the source line of each item.
    """
    from cat_dspy.datasets import data_dirs

    found, lines = {}, {}
    for item in items:
        data = item.meta.get("ideal_completions_data")
        source = item.meta.get("source")
        if data is None and source and item.meta.get("line"):
            if source not in lines:
                files = [d / source for d in data_dirs(args.data_dir) if (d / source).is_file()]
                lines[source] = files[0].read_bytes().split(b"\n") if files else []
            if len(lines[source]) >= item.meta["line"]:
                data = json.loads(lines[source][item.meta["line"] - 1]).get("ideal_completions_data")
        if isinstance(data, dict) and data.get("ideal_completion"):
            found[item.id] = data["ideal_completion"]
    return found


def build_examples(args: OptimizeConfig, program: Any, items: list[Any], caches: dict[str, JsonlCache]) -> list:
    """The target's ``dspy.Example`` list for ``items`` (inputs marked; labels kept for the metric only)."""
    import dspy

    from cat_dspy.optimization.metrics import rubric_example

    if args.target == "judge":
        return judge_examples(args, items, caches)

    def sample(item: Any) -> list[str] | None:
        pred = program.rollout(question=item.question)
        return None if any(pred.failures) else list(pred.rollouts)

    rollouts = cached(caches["rollouts"], items, sample, args.threads)
    items = [i for i in items if i.id in rollouts]
    if args.target == "synthesize":
        inputs = ("rollouts", "question") if args.question_aware else ("rollouts",)
        return [
            dspy.Example(id=i.id, question=i.question, rollouts=rollouts[i.id], answer=i.answer).with_inputs(*inputs)
            for i in items
        ]

    def reference(item: Any) -> str | None:
        pred = program.synthesize(rollouts=rollouts[item.id], question=item.question)
        return pred.reference if not pred.error and pred.reference.strip() else None

    references = cached(caches["references"], items, reference, args.threads)
    return [
        rubric_example(i.id, references[i.id], rollouts[i.id], i.answer, program.equivalence, program.extraction)
        for i in items
        if i.id in references
    ]


def judge_examples(args: OptimizeConfig, items: list[Any], caches: dict[str, JsonlCache]) -> list:
    """Judge examples from items with rubrics and ideal completions (see ``optimization.metrics.judge_examples``)."""
    from cat_dspy.lm.models import make_lm
    from cat_dspy.modules import Judge
    from cat_dspy.optimization.metrics import judge_examples as build

    reference, model = None, args.reference_judge
    if model:
        api_base = None if model.startswith("local") else args.api_base
        reference = Judge(per_criterion=True, lm=make_lm(model, temperature=0.0, max_tokens=16, api_base=api_base))
    return build(items, ideal_completions(args, items), args.criteria, seed_of(args), reference, caches["labels"])


def make_optimizer(args: OptimizeConfig, metric: Any, proposer: Any, task_lm: Any) -> tuple[Any, dict[str, Any]]:
    """The optimizer named by ``--optimizer`` for ``metric``, and the extra ``compile`` arguments it needs."""
    import dspy

    from cat_dspy.adapters import FreeTextAdapter

    budget, seed = args.budget, seed_of(args)
    if budget not in AUTO and not budget.isdigit():
        raise OptimizeError(f"--budget must be one of {AUTO} or an integer, got {budget!r}")
    if args.optimizer == "simba":
        steps = int(budget) if budget.isdigit() else {"light": 4, "medium": 8, "heavy": 16}[budget]
        return dspy.SIMBA(
            metric=metric, bsize=max(1, min(32, args.train)), num_candidates=4, max_steps=steps,
            max_demos=args.demos, prompt_model=proposer, num_threads=args.threads,
        ), {"seed": seed}
    if args.optimizer == "bootstrap":
        rounds = int(budget) if budget.isdigit() else 1
        return dspy.BootstrapFewShot(
            metric=metric, metric_threshold=metric.threshold, max_bootstrapped_demos=args.demos,
            max_labeled_demos=0, max_rounds=rounds,
        ), {}
    if args.optimizer == "mipro":
        auto = budget if budget in AUTO else None
        optimizer = dspy.MIPROv2(
            metric=metric, prompt_model=proposer, task_model=task_lm, auto=auto,
            num_candidates=None if auto else 3, max_bootstrapped_demos=args.demos, max_labeled_demos=0,
            metric_threshold=metric.threshold, num_threads=args.threads, seed=seed,
        )
        extra = {"minibatch": False} if auto is None or args.dev <= 50 else {}
        return optimizer, extra | ({} if auto else {"num_trials": int(budget)})
    from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer

    local = getattr(proposer, "model", "").startswith("local")
    return dspy.GEPA(
        metric=metric, reflection_lm=proposer, num_threads=args.threads, seed=seed, track_stats=True,
        reflection_minibatch_size=min(3, args.train), auto=budget if budget in AUTO else None,
        max_metric_calls=None if budget in AUTO else int(budget),
        instruction_proposer=InstructionProposer(adapter=FreeTextAdapter()) if local else None,
    ), {}


def proposal_lm(args: OptimizeConfig, anchor_model: str) -> Any | None:
    """GEPA's reflection LM / MIPRO's proposal LM: ``--reflection-lm``, else a non-local anchor, else an error."""
    from cat_dspy.lm.models import make_lm

    if args.optimizer == "bootstrap":
        return None
    model = args.reflection_lm or anchor_model
    if args.reflection_lm is None and model.startswith("local"):
        raise OptimizeError(
            f"--optimizer {args.optimizer} needs a capable proposal LM: pass --reflection-lm MODEL (e.g. "
            "openai/gpt-4o-mini). --reflection-lm local forces the embedded model (expect junk instructions)."
        )
    local = model.startswith("local")
    return make_lm(model, temperature=1.0, max_tokens=256 if local else 4096, api_base=None if local else args.api_base)


def compile_target(program: Any, target: str, optimizer: Any, trainset: list, valset: list, **extra: Any) -> Any:
    """Compile ``program``'s target submodule in place and return it (ready to save: not frozen).

    The submodule's LM is lent through ``dspy.settings.lm`` for the compile (optimizers deep-copy the student), and
    a judge's unused predictor is hidden so optimizers tune only the prompt the program calls.
    """
    import dspy

    name = TARGETS[target]
    module = getattr(program, name)
    hidden = {}
    if target == "judge":  # hide the predictor this judge form never calls
        unused = "judge_all" if module.per_criterion else "judge_one"
        hidden[unused], module.__dict__[unused] = module.__dict__[unused], None
    role_lm, module.lm = module.lm, None
    with_valset = valset and not isinstance(optimizer, dspy.BootstrapFewShot | dspy.SIMBA)
    kwargs = dict(extra, trainset=trainset) | ({"valset": valset} if with_valset else {})
    try:
        with dspy.context(lm=role_lm or dspy.settings.lm):
            compiled = optimizer.compile(module, **kwargs)
    finally:
        module.lm = role_lm
        module.__dict__.update(hidden)
    compiled.lm = role_lm
    compiled.__dict__.update(hidden)
    compiled._compiled = False  # a frozen submodule would be left out of CaT.save
    setattr(program, name, compiled)
    return compiled


def make_metric(target: str, program: Any) -> Any:
    """The labelled metric of ``target`` (the rubric metric judges with the program's judge)."""
    from cat_dspy.optimization.metrics import JudgeMetric, RubricMetric, SynthesisMetric

    if target == "synthesize":
        return SynthesisMetric(equivalence=program.equivalence, extraction=program.extraction)
    if target == "rubric":
        return RubricMetric(program.judge, min_criteria=program.propose_rubric.min_criteria)
    return JudgeMetric()


def evaluate(module: Any, examples: list, metric: Any, threads: int, run_name: str) -> list[float]:
    """Per-example scores of ``module`` with ``dspy.Evaluate``, logged as a nested MLflow run."""
    import dspy
    import mlflow

    evaluator = dspy.Evaluate(devset=examples, metric=metric, num_threads=threads, max_errors=10 * len(examples))
    with mlflow.start_run(run_name=run_name, nested=True):
        result = evaluator(module)
    return [float(score) for _, _, score in result.results]


def lm_settings(lms: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each role's model string and sampling options as its LM holds them (the role's default temperature where the
    LM sets none): what is logged and keys the caches when the caller gives no parsed settings."""
    settings = {role: {"model": lm.model, **lm.kwargs} for role, lm in lms.items()}
    for role, options in settings.items():
        if options.get("temperature") is None:
            options["temperature"] = ROLE_TEMPERATURE[role]
    return settings


def optimize(
    config: OptimizeConfig, lms: dict[str, Any], settings: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Build the examples, compile the target, save the program and (``test`` > 0) compare base vs optimized.

    Args:
        config: What to compile, on which data, with which optimizer.
        lms: The ``dspy.LM`` of each role (``policy``, ``anchor``, ``judge``).
        settings: Each role's model string and sampling options, logged and used as cache keys (default: read
            from ``lms``).

    Returns:
        ``{"out": program path, "changes": per-predictor changes, "examples": n, "report": held-out comparison}``.

    Raises:
        OptimizeError: Options that cannot work together, or no usable training example.
    """
    import dspy
    import mlflow

    from cat_dspy import tracking
    from cat_dspy.adapters import FreeTextAdapter
    from cat_dspy.lm.hf import cache_dir
    from cat_dspy.modules import CaT
    from cat_dspy.optimization.metrics import compare, group_baselines
    from cat_dspy.scoring.stats import mean_stderr

    used = [f"--{name.replace('_', '-')}" for name in POLICY_ONLY if getattr(config, name) is not None]
    if config.target not in TARGETS or used:
        raise OptimizeError(f"optimize() compiles {', '.join(TARGETS)}; {', '.join(used) or config.target!r}: "
                            "--target policy is cat_dspy.optimization.policy.optimize_policy")
    mode = config.mode or ("verifiable" if config.target == "synthesize" else "rubric")
    if config.target == "synthesize" and mode != "verifiable":
        raise OptimizeError("--target synthesize is scored on gold answers: it needs --mode verifiable")
    seed = seed_of(config)
    random.seed(seed)
    settings = settings if settings is not None else lm_settings(lms)
    common = {"g": config.g, "question_aware": config.question_aware, "per_criterion": config.per_criterion,
              "equivalence": config.equivalence, "extraction": config.extraction,
              "temperature": settings["policy"]["temperature"], **{r: lms[r] for r in ("policy", "anchor", "judge")}}
    program = CaT(mode=mode, **common)
    data_cat = program if mode == "verifiable" else CaT(mode="verifiable", **common)
    folder = None if config.cache == "none" else Path(config.cache or cache_dir() / "optimize")
    key = {"dataset": str(config.dataset), "split": config.split, "g": config.g, "seed": config.seed}
    caches = {
        "rollouts": JsonlCache(folder, "rollouts", key | {"policy": settings["policy"]}),
        "references": JsonlCache(folder, "references", key | {"policy": settings["policy"], "anchor":
                                 settings["anchor"], "question_aware": config.question_aware}),
        "labels": JsonlCache(folder, "labels", {"judge": config.reference_judge}),
    }
    usable = (lambda i: bool(i.rubrics)) if config.target == "judge" else (lambda i: i.verifiable)
    train, dev, test = split(config, usable)
    metric, proposer = make_metric(config.target, program), proposal_lm(config, settings["anchor"]["model"])
    out = Path(config.out or f"{DEFAULT_OUT}/{config.target}-{config.optimizer}.json")
    meta = {"target": config.target, "optimizer": config.optimizer, "budget": config.budget, "mode": mode,
            "question_aware": config.question_aware, "per_criterion": config.per_criterion,
            "dataset": str(config.dataset), "train": config.train, "dev": config.dev, "test": config.test,
            "g": config.g, "seed": seed, "demos": config.demos, "reflection_lm": getattr(proposer, "model", None),
            "reference_judge": config.reference_judge,
            "equivalence": config.equivalence, "extraction": config.extraction}
    params = meta | {f"{role}.{k}": v for role, opts in settings.items() for k, v in opts.items()} | {"out": str(out)}
    with tracking.run(config.experiment, run_name=f"optimize-{config.target}-{config.optimizer}"):
        mlflow.dspy.autolog(log_traces=config.traces, log_compiles=True, log_evals=True, silent=True)
        try:
            tracking.log_params({f"cat.{k}": v for k, v in params.items()})
            dev = dev if config.optimizer != "bootstrap" else []  # BootstrapFewShot has no validation set
            trainset, devset, testset = (build_examples(config, data_cat, part, caches)
                                         for part in (train, dev, test))
            mlflow.log_metrics({"examples.train": len(trainset), "examples.dev": len(devset),
                                "examples.test": len(testset)})
            if not trainset:
                raise OptimizeError("no usable training examples (every rollout group failed?)")
            base = getattr(program, TARGETS[config.target])
            # Base on the trainset, concurrently: a baseline, and cached calls for the optimizer's sequential pass.
            base_scores = evaluate(base, trainset, metric, config.threads, "train-base")
            mlflow.log_metric("train.base", mean_stderr(base_scores)[0])
            optimizer, extra = make_optimizer(config, metric, proposer, base.lm)
            local_proposer = config.optimizer == "mipro" and proposer.model.startswith("local")
            with dspy.context(adapter=FreeTextAdapter()) if local_proposer else contextlib.nullcontext():
                compiled = compile_target(program, config.target, optimizer, trainset, devset, **extra)
            out.parent.mkdir(parents=True, exist_ok=True)
            program.provenance = meta
            program.save(str(out))
            mlflow.log_artifact(str(out), "program")
            before = dict(base.named_predictors())
            changes = {name: {"demos": len(p.demos), "instructions_changed":
                              p.signature.instructions != before[name].signature.instructions}
                       for name, p in compiled.named_predictors()}
            tracking.log_json(changes, "program_changes.json")
            result: dict[str, Any] = {"out": str(out), "changes": changes, "examples": len(trainset)}
            if testset:
                report = compare(evaluate(base, testset, metric, config.threads, "test-base"),
                                 evaluate(compiled, testset, metric, config.threads, "test-optimized"))
                report |= {"target": config.target, "optimizer": config.optimizer, "changes": changes}
                if config.target == "synthesize":
                    report["rollout_baselines"] = group_baselines(testset, program.equivalence, program.extraction)
                mlflow.log_metrics({f"test.{name}.{stat}": report[name][stat]
                                    for name in ("base", "optimized", "difference") for stat in ("mean", "se")})
                report_path = tracking.write_json(report, out.with_name(out.stem + ".report.json"))
                mlflow.log_artifact(str(report_path), "program")
                result["report"] = report
            return result
        finally:
            mlflow.dspy.autolog(disable=True, silent=True)
