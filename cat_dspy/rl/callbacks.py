"""The TRL reward's MLflow side and trainer hook: sampled DSPy traces, and the callback binding it to the model."""

from __future__ import annotations

import sys
from typing import Any


def mlflow_run_active() -> bool:
    mlflow = sys.modules.get("mlflow")  # MLflow never imported: no run can be active
    return mlflow is not None and mlflow.active_run() is not None


class sampled_traces:
    """Record the DSPy traces of the calls inside the block under one MLflow span, without enabling autolog."""

    def __enter__(self) -> None:
        import dspy
        import mlflow

        self._span = mlflow.start_span(name="cat_reward")
        self._span.__enter__()
        self._context = dspy.context(callbacks=[*dspy.settings.callbacks, _sampled_trace_callback()])
        self._context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)
        self._span.__exit__(*exc)


def _sampled_trace_callback() -> Any:
    """MLflow's DSPy tracing callback, active wherever it is passed (its hooks normally wait for ``autolog()``)."""
    from mlflow.dspy.callback import MlflowCallback

    class SampledMlflowCallback(MlflowCallback):
        pass

    for name, member in vars(MlflowCallback).items():
        if name.startswith("on_") and hasattr(member, "__wrapped__"):  # unwrap @skip_if_trace_disabled
            setattr(SampledMlflowCallback, name, member.__wrapped__)
    return SampledMlflowCallback()


def reward_callback(reward: Any) -> Any:
    from transformers import TrainerCallback

    class CaTRewardCallback(TrainerCallback):
        """Binds the CaT reward to the trainer's model, so it knows when TRL evaluates, and to its G."""

        def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                reward.bind(model, args)

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                reward.bind(model, args)

    return CaTRewardCallback()


