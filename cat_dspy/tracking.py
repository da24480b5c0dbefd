"""MLflow set-up, artifact helpers and secret redaction.

Runs go to ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db`` in the working directory; MLflow's plain
file store now refuses writes). Everything logged passes through :func:`redact` first: API keys live only in
the environment and must never reach params, metrics, artifacts or traces.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHILD_TAG = "cat_dspy.eval"  # "parent" on an eval run, "child" on each of its (method, G) runs
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, evaluations), where our runs are
# hard to find; "custom_model_development" opens it on the runs table (the kinds are listed in the UI's bundle).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (``*_API_KEY``, ``*_TOKEN``, ...).

    Examples:
        >>> secret_values({"OPENAI_API_KEY": "sk-123456", "HOME": "/root", "HF_TOKEN": "x"})
        ['sk-123456']
    """
    env = os.environ if environ is None else environ
    # Very short values ("1", "x") would redact innocent text; real keys are long.
    return sorted({v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}, key=len, reverse=True)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """Replace every secret value inside ``obj`` (str, dict, list, tuple; recursively) with ``***``.

    Examples:
        >>> redact({"api_base": "http://h", "note": ["key=sk-123456"]}, ["sk-123456"])
        {'api_base': 'http://h', 'note': ['key=***']}
    """
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        for value in secrets:
            obj = obj.replace(value, "***")
        return obj
    if isinstance(obj, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    return obj


def setup(experiment: str, tracking_uri: str | None = None) -> str:
    """Point MLflow at the tracking store and select ``experiment``; returns the tracking URI.

    The experiment is tagged ``mlflow.experimentKind: custom_model_development`` (unless it has a kind already), so
    the MLflow 3 UI opens it on the runs table rather than the GenAI overview.

    Also installs :func:`redact_span` as an MLflow span processor (once per process), so every trace recorded
    afterwards (``solve --traces``, the training reward's sampled traces, ``optimize``) is redacted.
    """
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    found = mlflow.set_experiment(experiment)
    if EXPERIMENT_KIND_TAG not in found.tags:  # a kind chosen by the user (in the UI or by tag) is kept
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    install_trace_redaction()
    return uri


def install_trace_redaction() -> None:
    """Add :func:`redact_span` to MLflow's span processors, keeping any already configured (idempotent)."""
    import mlflow
    from mlflow.tracing.config import get_config

    current = list(get_config().span_processors)
    if redact_span not in current:
        mlflow.tracing.configure(span_processors=[*current, redact_span])


def redact_span(span: Any) -> None:
    """An MLflow span processor: :func:`redact` the span's attributes (inputs and outputs included), its events
    (recorded exceptions) and its status message before the span is exported.

    Model outputs and backend error messages can carry a key (an auth error that echoes it, a model that prints
    its environment); traces record both verbatim, so every trace goes through this.
    """
    secrets = secret_values()
    if not secrets:
        return
    for key, value in span.attributes.items():
        clean = redact(value, secrets)
        if clean != value:
            span.set_attribute(key, clean)
    otel = getattr(span, "_span", None)
    for event in list(getattr(otel, "_events", None) or ()):  # exception events: type, message, stack trace
        attributes = dict(event.attributes or {})
        clean = redact(attributes, secrets)
        if clean != attributes:
            event._attributes = clean  # OpenTelemetry events are read-only by API; the span is not exported yet
    status = getattr(otel, "_status", None)
    if status is not None and status.description and redact(status.description, secrets) != status.description:
        from opentelemetry.trace import Status

        otel._status = Status(status.status_code, redact(status.description, secrets))


@contextmanager
def run(experiment: str, run_name: str | None = None, traces: bool = False, **kwargs: Any) -> Iterator[Any]:
    """Start an MLflow run in ``experiment``; ``traces=True`` also records DSPy traces (``mlflow.dspy.autolog``)."""
    import mlflow

    setup(experiment)
    if traces:
        mlflow.dspy.autolog(log_traces=True, silent=True)
    try:
        with mlflow.start_run(run_name=run_name, **kwargs) as active:
            yield active
    finally:
        if traces:
            mlflow.flush_trace_async_logging()
            mlflow.dspy.autolog(disable=True, silent=True)


@contextmanager
def timed_run(run_name: str, start_time: float, end_time: float | None = None, *, nested: bool = False,
              tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run (in the current experiment) that shows the real span of the work it records.

    MLflow stamps a run with the time it is created and ended; a run logged after the work (an eval's per-(method,
    G) children, a study arm) would read ~100 ms. This one is created with ``start_time`` and, when the block
    ends, terminated with ``end_time`` (epoch seconds; None: now).

    Args:
        run_name: The run's name.
        start_time: When the work began (``time.time()``).
        end_time: When it ended (default: when the block exits).
        nested: A child of the active run.
        tags: Tags set at creation.
    """
    import time

    import mlflow
    from mlflow.tracking.context.registry import resolve_tags

    client = mlflow.MlflowClient()
    all_tags = resolve_tags(tags or {})  # user, source, git commit: as mlflow.start_run sets them
    parent = mlflow.active_run()
    if nested and parent is not None:
        all_tags["mlflow.parentRunId"] = parent.info.run_id
    experiment_id = parent.info.experiment_id if parent is not None else mlflow.tracking.fluent._get_experiment_id()
    created = client.create_run(experiment_id, start_time=int(start_time * 1000), tags=all_tags, run_name=run_name)
    status = "FAILED"
    try:
        with mlflow.start_run(run_id=created.info.run_id, nested=nested) as active:
            yield active
        status = "FINISHED"
    finally:
        end = time.time() if end_time is None else end_time
        client.set_terminated(created.info.run_id, status=status, end_time=int(end * 1000))


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI address (after ``http://host:port``) of an experiment's runs table or of one run, opened in the
    "Model training" view: MLflow 3.17 follows its workflow switch (default GenAI) over ``mlflow.experimentKind``.

    Examples:
        >>> ui_path("3", "abc")
        '/#/experiments/3/runs/abc?workflowType=machine_learning'
    """
    return f"/#/experiments/{experiment_id}/runs{'/' + run_id if run_id else ''}?workflowType=machine_learning"


def log_params(params: dict[str, Any]) -> None:
    """Log params (redacted, values stringified and truncated to MLflow's limit); a None value is left out (the
    UI would show the string "None" as if it were a setting)."""
    import mlflow

    mlflow.log_params({k: str(v)[:6000] for k, v in redact(params).items() if v is not None})


def log_json(obj: Any, artifact_file: str) -> None:
    """Log ``obj`` as a JSON artifact (redacted)."""
    import mlflow

    mlflow.log_dict(redact(obj), artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    """Log ``text`` as a text artifact (redacted)."""
    import mlflow

    mlflow.log_text(redact(text), artifact_file)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as redacted, indented JSON to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(redact(obj), indent=2, ensure_ascii=False, default=str))
    return path
