"""A finished arm as users load it: a peft adapter or a full model directory, and its model card."""

from __future__ import annotations

from pathlib import Path

from learnforget.base.gguf import named_base_label
from learnforget.config.arms import Arm
from learnforget.config.peft import rewrites_base
from learnforget.config.study import StudyConfig
from learnforget.runtime.precision import base_dtype
from learnforget.runtime.sharding import saved_as_unsharded
from learnforget.study.store import Store


def save_initial_adapter(model, arm: Arm, directory: Path) -> Path | None:
    """The adapter as initialised, for methods that rewrite the base weights (PiSSA, OLoRA): peft turns
    the final adapter into a plain LoRA on the *original* base from it (`save_final`). The initialisation
    is deterministic (seeded), so a resumed arm writes the same one again."""
    if not rewrites_base(arm.peft):
        return None
    path = directory / "initial-adapter"
    model.save_pretrained(path)
    return path


def save_final(
    model, tokenizer, directory: Path, base_path: str, state_dict: dict | None = None,
    initial_adapter: Path | None = None,
) -> None:  # fmt: skip
    """The trained arm as users load it: a peft adapter directory or a full model directory.

    A full model is saved in the base's own dtype. An adapter names its base by absolute path or hub id,
    and carries the embeddings / LM head when the arm trained them (peft's `save_embedding_layers`), so
    the saved arm is the model that was measured. `state_dict`: a sharded arm's full weights, gathered
    (`sharding.full_state_dict`). `initial_adapter`: a PiSSA/OLoRA arm's adapter at initialisation; the
    saved adapter is then peft's conversion to a plain LoRA (rank 2r) on the original base.
    """
    if hasattr(model, "get_base_model"):
        target = directory / "adapter"
        inner = model.get_base_model()
        trained_embeddings = inner.get_input_embeddings().weight.requires_grad
        with saved_as_unsharded(model):
            model.save_pretrained(
                target, save_embedding_layers=trained_embeddings, state_dict=state_dict,
                path_initial_model_for_weight_conversion=str(initial_adapter) if initial_adapter else None,
            )  # fmt: skip
    else:
        target = directory / "model"
        dtype = base_dtype(base_path)
        if state_dict is not None:
            state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        elif any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
            model.to(dtype)  # the arm's last use: nothing is measured after saving
        with saved_as_unsharded(model):
            model.save_pretrained(target, state_dict=state_dict)
    tokenizer.save_pretrained(target)


def write_model_card(
    directory: Path, study: StudyConfig, arm: Arm, base_path: str, store: Store, merged: bool = False
) -> None:
    """`README.md` in the arm directory: base, settings, budget and final metrics, for whoever finds it.
    `merged`: the metrics were measured on the adapter's merged weights (evaluate/arm_model.py)."""
    rows = store.metrics(arm.name)
    final_tokens = max((r["tokens"] for r in rows), default=0)
    final = {r["metric"]: r["value"] for r in rows if r["tokens"] == final_tokens}
    artifact = "adapter" if arm.adapted else "model"
    settings = "\n".join(f"| {k} | {v} |" for k, v in arm.model_dump().items())
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final.items()))
    load = (
        f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained('{directory / artifact}')"
        if artifact == "adapter"
        else f"from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained('{directory / artifact}')"
    )  # fmt: skip
    if merged:
        load += ".merge_and_unload()  # the metrics below were measured on the merged weights"
    text = f"""# {arm.name}

One arm of the learnforget study `{study.name}`: {study.domain} {study.regime.upper()}, finetuned from
`{base_path}`{named_base_label(study.base_model)} with {arm.method} finetuning.

- Budget: {study.steps} steps × {study.tokens_per_step:,} tokens = {study.steps * study.tokens_per_step:,} tokens
  (batch {study.batch_size} × sequence length {study.seq_len}), precision {study.precision}, data seed {study.seed}.
- Weights: `{artifact}/`. Load it with:

```python
{load}
```

## Settings

| setting | value |
|---|---|
{settings}

## Final metrics ({final_tokens:,} tokens)

| metric | value |
|---|---|
{metrics}
"""
    (directory / "README.md").write_text(text)
