"""`compile: true` (compiling.py): decoder layers compiled for training give eager training's losses and
weights within float rounding, the same numbers on every run, and evaluation stays exactly eager."""

from __future__ import annotations

import pytest
import torch

from learnforget.arms.build import prepare_arm
from learnforget.runtime.compiling import compile_layers
from learnforget.train.loop import make_optimizer, train_steps
from tests.test_fused_loss import arm, rows_and_labels, tiny_llama

TOLERANCE = 1e-5  # nats/token and weights after 4 steps: a fused kernel sums in another order


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(method: str, compiled: bool, labels: torch.Tensor | None, checkpointing: bool = False):
    """(losses, trained weights, logits of an evaluation forward pass) after 4 steps."""
    rows, _ = rows_and_labels()
    torch.manual_seed(0)
    model = tiny_llama()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = prepare_arm(model, arm(method))
    if compiled:
        compile_layers(model)
    optimizer, scheduler = make_optimizer(model, 1e-2 if method == "full" else 5e-2, 0.0, 1, 4)
    losses: list[float] = []
    train_steps(model, optimizer, scheduler, rows, 4, 0, 4, labels=labels,
                on_step=lambda s, loss: losses.append(loss))  # fmt: skip
    model.eval()
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # as study.evaluate_model
        logits = model(input_ids=rows[:3]).logits
    return losses, {n: p.detach().clone() for n, p in model.state_dict().items()}, logits


@pytest.mark.parametrize("method", ["full", "lora"])
def test_compiled_training_matches_eager_and_repeats_exactly(method):
    _, labels = rows_and_labels()
    eager_losses, eager_weights, _ = train(method, False, None)
    losses, weights, logits = train(method, True, None)
    assert losses == pytest.approx(eager_losses, abs=TOLERANCE)
    assert eager_losses[-1] < eager_losses[0] - 0.03  # it learned: the comparison is not of untrained models
    for name, value in eager_weights.items():
        torch.testing.assert_close(weights[name], value, atol=TOLERANCE, rtol=0, msg=name)
    again, weights_again, _ = train(method, True, None)
    assert again == losses  # deterministic: the same kernels every run
    assert all(torch.equal(weights_again[n], w) for n, w in weights.items())
    # Evaluation ran eagerly: exactly the logits of an uncompiled model holding the trained weights.
    plain = prepare_arm(tiny_llama(), arm(method))
    plain.load_state_dict(weights)
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=rows_and_labels()[0][:3]).logits, logits)
    # IFT rows of another width (trimmed padding) recompile and still match.
    ift_eager, _, _ = train(method, False, labels)
    ift, _, _ = train(method, True, labels)
    assert ift == pytest.approx(ift_eager, abs=TOLERANCE)
    # Compiled layers under (non-reentrant) gradient checkpointing.
    assert train(method, True, None, checkpointing=True)[0] == pytest.approx(eager_losses, abs=TOLERANCE)
