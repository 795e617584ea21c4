"""Evaluate an adapter arm through a plain copy of its base that holds the merged weights.

A peft model runs every adapted layer as its base matmul plus the adapter's own (dropout, A, B and
Python overhead); the same function as one plain matmul per layer costs less. At each milestone the arm's
effective weights (`arms.delta.merged_weights`, which the ΔW spectra need anyway) are loaded into a plain
model of the base architecture, built once per arm, and that copy is evaluated; the training model is
only read. Where this is not cheap or not exact, the training model is evaluated as is (`unmerged_reason`).

The weights are those peft's `merge_and_unload()` makes, bit for bit, so a saved adapter reloaded and
merged reproduces the recorded metrics exactly (the arm's model card says which way it was measured, and
`learnforget eval --adapter` merges by the same rule).
"""

from __future__ import annotations

import time

import torch

from learnforget.arms.delta import merged_weights
from learnforget.base.load import load_causal_lm
from learnforget.config.arms import Arm
from learnforget.config.study import StudyConfig
from learnforget.errors import warn
from learnforget.evaluate.suites import evaluate_suites
from learnforget.runtime.device import forked_rng, model_device
from learnforget.runtime.precision import autocast
from learnforget.runtime.sharding import evaluating

# Above this many bytes of weights the second copy is not worth its memory (large models on a GPU).
MAX_MERGED_BYTES = 2 * 2**30


def unmerged_reason(model: torch.nn.Module, arm: Arm, study: StudyConfig, sharded: bool) -> str | None:
    """Why an arm is evaluated through its training model rather than a merged copy; None when merged."""
    return merge_refusal(model, study.precision, bool(arm.quantization), sharded)


def merge_refusal(model: torch.nn.Module, precision: str, quantized: bool, sharded: bool) -> str | None:
    """Why a peft model is evaluated as it is rather than through its merged weights; None when merged."""
    if not hasattr(model, "get_base_model"):
        return "a plain model already"
    if sharded:
        return "sharded"
    if quantized:
        return "quantized base"
    if precision != "fp32":
        # W + ΔW rounded to 16 bits (stored, or under autocast) loses a small update that the adapter's
        # separate path keeps: the copy would measure another model.
        return f"precision {precision}"
    size = sum(p.numel() * p.element_size() for p in model.get_base_model().parameters())
    if size > MAX_MERGED_BYTES:
        return f"{size / 2**30:.1f} GiB of weights"
    return None


class ArmEvaluator:
    """Evaluates one arm at its milestones and hands its merged weights on to the spectra."""

    def __init__(self, model, arm: Arm, study: StudyConfig, base_path: str, sharded: bool):
        self.model, self.study, self.base_path = model, study, base_path
        self.merge = unmerged_reason(model, arm, study, sharded) is None
        self.plain = None
        self.weights_now: dict[str, torch.Tensor] | None = None

    def evaluate(self, tokenizer, data: dict, timings: dict[str, float]) -> dict[str, float]:
        """Every milestone metric of the arm as it is now (see study.evaluate_model)."""
        self.weights_now = None
        target = self.model
        if self.merge:
            started = time.perf_counter()
            target = self._merged_copy()
            timings["merge"] = time.perf_counter() - started
        metrics = evaluate_model(target, tokenizer, self.study, data, timings)
        if not self.study.eval.spectra:
            self.weights_now = None  # nothing else needs them
        return metrics

    def weights(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The arm's merged weights at this milestone: those the evaluation used, else merged now.
        `state`: a sharded arm's gathered state dict (arms.delta.merged_weights)."""
        weights, self.weights_now = self.weights_now, None
        return weights if weights is not None else merged_weights(self.model, state)

    def drop_weights(self) -> None:
        """Forget the merged weights kept for the spectra (the factored LoRA path does not read them)."""
        self.weights_now = None

    def _merged_copy(self):
        """The plain copy holding the current merged weights, or the training model where they do not
        fit it (a method peft cannot merge, names or shapes that differ): then for the rest of the arm."""
        device = model_device(self.model)
        try:
            weights = merged_weights(self.model)
            with forked_rng(device), torch.no_grad():  # building the copy must not draw from the training RNG
                if self.plain is None:
                    study = self.study
                    self.plain = load_causal_lm(self.base_path, study.precision, study.attn_implementation)
                    self.plain.to(device).requires_grad_(False)
                check_tied(self.plain, weights)
                self.plain.load_state_dict(weights, strict=True)
        except (RuntimeError, ValueError, KeyError, NotImplementedError) as e:
            detail = " ".join(str(e).split())[:300]
            warn(f"evaluating through the adapter model: its merged weights do not fit {self.base_path} "
                 f"({type(e).__name__}: {detail})")  # fmt: skip
            self.merge, self.plain = False, None
            return self.model
        self.weights_now = weights
        return self.plain


def check_tied(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """A ValueError where tensors the plain model ties (one parameter under several names) differ in the
    arm: peft's modules_to_save of a tied LM head trains it apart from the embeddings."""
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        names.setdefault(tensor.data_ptr(), []).append(name)
    for tied in names.values():
        if any(
            k in weights and tied[0] in weights and not torch.equal(weights[k], weights[tied[0]])
            for k in tied[1:]
        ):
            raise ValueError(f"{', '.join(tied)} are tied in the base but differ in the arm")


def evaluate_model(
    model, tokenizer, study: StudyConfig, data: dict, timings: dict[str, float] | None = None,
    directions: dict[str, bool] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Every milestone metric of one model (deterministic; does not touch the training RNG), under the
    study's precision, so a milestone measures the model as it trains. A sharded model is evaluated by
    every process together, in lockstep on identical inputs. `timings` receives seconds per suite;
    `directions`, lm-eval's own higher_is_better of each harness metric."""
    device = model_device(model)
    # Layers compiled for training (compiling.py) run eagerly here: exact eager numbers, no recompiles.
    with forked_rng(device), evaluating(model), torch.compiler.set_stance("force_eager"):
        with autocast(study.precision, device):
            return evaluate_suites(model, tokenizer, study, data["eval"], timings, directions=directions)
