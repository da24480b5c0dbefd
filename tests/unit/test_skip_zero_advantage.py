"""``skip_zero_advantage`` (:class:`cat_dspy.rl.trainer.CaTGRPOTrainer`): the loss without the completions of
advantage 0 has the same value and gradients as TRL's loss over all of them, for each normalization TRL has; a
micro-batch of advantage 0 only still gives every parameter a gradient (0); options under which those completions
move the loss are refused. A tiny random policy, real TRL."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def make_trainer(tiny_llama: Path, tmp_path: Path, **options: object):
    from datasets import Dataset

    from cat_dspy.rl.train import CaTGRPOConfig
    from cat_dspy.rl.trainer import CaTGRPOTrainer

    options = {"beta": 0.0, **options}
    args = CaTGRPOConfig(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=6,
                         max_completion_length=8, max_steps=1, use_cpu=True, bf16=False, report_to="none",
                         save_strategy="no", seed=0, dataloader_num_workers=0, **options)
    return CaTGRPOTrainer(model=str(tiny_llama), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["a", "b", "c"]}))


def loss_inputs(advantages: list[float]) -> dict:
    generator = torch.Generator().manual_seed(0)
    rows = len(advantages)
    completion_mask = torch.ones(rows, 7, dtype=torch.long)
    completion_mask[1, 5:] = 0  # completions of different lengths
    completion_mask[4, 3:] = 0
    return {"prompt_ids": torch.randint(3, 250, (rows, 5), generator=generator),
            "prompt_mask": torch.ones(rows, 5, dtype=torch.long),
            "completion_ids": torch.randint(3, 250, (rows, 7), generator=generator),
            "completion_mask": completion_mask,
            "advantages": torch.tensor(advantages),
            "num_items_in_batch": completion_mask.sum()}


def loss_and_grads(trainer, inputs: dict, skip: bool) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.args.skip_zero_advantage = skip
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() for each step
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_the_loss_without_zero_advantage_completions_has_the_same_value_and_gradients(tiny_llama, tmp_path,
                                                                                       loss_type):
    trainer = make_trainer(tiny_llama, tmp_path, loss_type=loss_type)
    inputs = loss_inputs([0.7, -0.3, 0.0, 0.0, 1.2, -0.5])  # group 2 has equal rewards: advantage 0
    full_loss, full = loss_and_grads(trainer, inputs, skip=False)
    cut_loss, cut = loss_and_grads(trainer, inputs, skip=True)
    assert cut_loss == pytest.approx(full_loss, rel=1e-6, abs=1e-9)
    assert cut.keys() == full.keys() and len(full) > 10
    for name, grad in full.items():
        torch.testing.assert_close(cut[name], grad, rtol=1e-5, atol=1e-8, msg=name)
    assert trainer._metrics["train"]["frac_zero_advantage_skipped"][-1] == pytest.approx(2 / 6)
    assert any(g.abs().max() > 0 for g in full.values())  # the gradients compared are not all zero


def test_a_micro_batch_of_zero_advantages_still_gives_every_parameter_a_zero_gradient(tiny_llama, tmp_path):
    trainer = make_trainer(tiny_llama, tmp_path)
    inputs = loss_inputs([0.0] * 6)
    full_loss, full = loss_and_grads(trainer, inputs, skip=False)
    cut_loss, cut = loss_and_grads(trainer, inputs, skip=True)
    assert cut_loss == full_loss == 0.0 and cut.keys() == full.keys()
    assert all(torch.count_nonzero(g) == 0 for g in cut.values())  # Adam still steps every parameter, as TRL's
    assert trainer._metrics["train"]["frac_zero_advantage_skipped"][-1] == 1.0


@pytest.mark.parametrize(("options", "named"), [({"beta": 0.04}, "beta=0.04"),
                                                ({"top_entropy_quantile": 0.2}, "top_entropy_quantile=0.2")])
def test_options_under_which_zero_advantage_completions_move_the_loss_are_refused(tiny_llama, tmp_path, options,
                                                                                   named):
    with pytest.raises(ValueError, match=named):
        make_trainer(tiny_llama, tmp_path, skip_zero_advantage=True, **options)
