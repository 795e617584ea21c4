"""GPU smoke check: a short study of a ~110M-parameter Llama through the real `learnforget run` path.

    python bench/gpu_smoke.py              # on CUDA: hidden 768, 12 layers, vocab 32000 (≈110M), bf16-mixed
    python bench/gpu_smoke.py --cpu        # a tiny model on the CPU (also what happens without CUDA)
    python bench/gpu_smoke.py --out DIR    # keep the study directory (default: a temporary one)
    python bench/gpu_smoke.py --compile    # the same with `compile: true` (compiled decoder layers)

Builds the base locally (LlamaConfig + the built-in byte-level BPE tokenizer, saved to a directory),
writes a study config with `base_model: <that directory>`, `precision: bf16-mixed`,
`gradient_checkpointing: true`, one full arm and one LoRA arm, a few steps and one milestone, and runs
`learnforget run` on it in this process. Then, per arm, from the study's store: tokens/s, peak memory
(torch.cuda.max_memory_allocated, reset when the arm starts training; on the CPU the process's peak
RSS), the dry-run's estimate for comparison, and MFU. It fails (exit 1) when a stored metric is not
finite, an arm did not finish, or, with CUDA available, an arm trained anywhere but on the GPU (a hook
on `learnforget.train.loop.train_steps` records the device of the parameters it trains).

MFU = model FLOPs per token × tokens/s / the device's dense bf16 peak. Model FLOPs per token: 6N for
full finetuning (forward 2N, backward 4N: input and weight gradients), 4N for LoRA (the frozen weights
need input gradients only; the adapters' own FLOPs are negligible), N = all parameters. Recomputation
under gradient checkpointing and attention's score FLOPs are not counted (the usual convention), so MFU
is a lower bound on hardware utilisation. tokens/s includes the first steps' warm-up (kernel selection,
allocator growth): a short run understates steady-state throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peak (SXM parts), by a name fragment of torch.cuda.get_device_name()."""

# model: LlamaConfig fields; study: the study's settings (config file fields).
GPU = dict(
    model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048,
               vocab_size=32000, max_position_embeddings=512),
    tokenizer_bytes=1_000_000,
    study=dict(seq_len=512, batch_size=16, micro_batch_size=8, budget_tokens=40 * 16 * 512, lora_rank=16,
               eval={"loss_tokens": 8192, "batch_size": 16, "spectra": False}),
)  # fmt: skip
CPU = dict(
    model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               vocab_size=512, max_position_embeddings=64),
    tokenizer_bytes=30_000,
    study=dict(seq_len=64, batch_size=4, micro_batch_size=2, budget_tokens=3 * 4 * 64, lora_rank=4,
               eval={"loss_tokens": 256, "batch_size": 8, "spectra": True}),
)  # fmt: skip


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a CUDA device by name, None when unknown."""
    return next((v for k, v in BF16_PEAK_FLOPS.items() if k in device_name), None)


def model_flops_per_token(method: str, total_params: int) -> int:
    """6N for full finetuning, 4N for LoRA (no weight gradients for the frozen weights)."""
    return (6 if method == "full" else 4) * total_params


def build_base(directory: Path, model: dict, tokenizer_bytes: int) -> Path:
    """A randomly initialised Llama with the built-in tokenizer, saved as a Hugging Face model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.base.load import build_tokenizer
    from learnforget.config.study import BaseRecipe

    tokenizer = build_tokenizer(BaseRecipe(vocab_size=model["vocab_size"], tokenizer_bytes=tokenizer_bytes))
    model = {**model, "vocab_size": max(model["vocab_size"], len(tokenizer))}
    config = LlamaConfig(**model, num_key_value_heads=model["num_attention_heads"],
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def study_config(base_dir: Path, settings: dict, compiled: bool = False) -> dict:
    """The smoke study: one full and one LoRA arm, one milestone, small evaluations."""
    return {
        "name": "gpu-smoke", "base_model": str(base_dir), "domain": "code", "regime": "cpt", "compile": compiled,
        "precision": "bf16-mixed", "gradient_checkpointing": True, "workers": 1, "milestones": 1,
        "seq_len": settings["seq_len"], "batch_size": settings["batch_size"],
        "micro_batch_size": settings["micro_batch_size"], "budget_tokens": settings["budget_tokens"],
        "warmup_fraction": 0.0,
        "arms": [{"method": "full", "learning_rate": 1e-4},
                 {"method": "lora", "rank": settings["lora_rank"], "learning_rate": 1e-3}],
        "eval": {"choice_items": 0, "generation_problems": 0, "reference_problems": 2, "diversity_prompts": 0,
                 **settings["eval"]},
    }  # fmt: skip


class TrainingProbe:
    """Wraps `train_steps` (as the arm recipe, study/arm.py, calls it) to record where (and how) each arm's model trains, and to
    reset CUDA's peak-memory counter when an arm starts training (the stored peak is then the arm's)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __enter__(self):
        import learnforget.study.arm as train

        self.train, self.original = train, train.train_steps

        def probed(model, *args, **kwargs):
            p = next(model.parameters())
            if args[4] == 0 and torch.cuda.is_available():  # start_step 0: the arm starts training
                torch.cuda.reset_peak_memory_stats()
            self.calls.append({"device": p.device.type, "dtype": str(p.dtype).removeprefix("torch."),
                               "checkpointing": bool(getattr(model, "is_gradient_checkpointing", False))})  # fmt: skip
            return self.original(model, *args, **kwargs)

        train.train_steps = probed
        return self

    def __exit__(self, *exc):
        self.train.train_steps = self.original


def run_smoke(out: Path, cpu: bool, compiled: bool = False) -> dict:
    """Build the base, run the study through the CLI, read the store; the per-arm results and failures."""
    from learnforget.cli import main as cli_main
    from learnforget.config.arms import expand_arms
    from learnforget.config.load import load_study
    from learnforget.study.dryrun import arm_memory, base_config
    from learnforget.study.store import open_store

    on_cuda = torch.cuda.is_available() and not cpu
    spec = GPU if on_cuda else CPU
    out.mkdir(parents=True, exist_ok=True)
    base = build_base(out / "base", spec["model"], spec["tokenizer_bytes"])
    config_path = out / "gpu-smoke.yaml"
    config_path.write_text(json.dumps(study_config(base, spec["study"], compiled), indent=1))  # JSON is YAML
    argv, sys.argv = sys.argv, ["learnforget", "run", str(config_path), "--out", str(out / "study")]
    try:
        with TrainingProbe() as probe:
            cli_main()
    except SystemExit as e:
        if e.code:
            raise
    finally:
        sys.argv = argv
    study = load_study(str(config_path))
    config = base_config(study)
    store = open_store(out / "study")
    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    peak = peak_flops(device_name) if on_cuda else None
    failures = []
    arms = []
    for arm in expand_arms(study):
        row = store.arm(arm.name) or {}
        if row.get("status") != "done":
            failures.append(f"{arm.name}: status {row.get('status')!r}")
            continue
        values = [m["value"] for m in store.metrics(arm.name)]
        if not values:
            failures.append(f"{arm.name}: no metrics stored")
        estimate = arm_memory(config, study, arm, row["trainable_params"], row["total_params"])
        flops = model_flops_per_token(arm.method, row["total_params"]) * row["tokens_per_s"]
        arms.append({
            "arm": arm.name, "trainable": row["trainable_params"], "total": row["total_params"],
            "tokens_per_s": row["tokens_per_s"], "peak_memory_mb": row["peak_memory_mb"],
            "estimate_mb": estimate.total / 2**20, "mfu": flops / peak if peak else None,
            "metrics": len(values),
        })  # fmt: skip
    bad = [f"{m['arm']}/{m['metric']}" for m in store.metrics() if not math.isfinite(m["value"])]
    if bad:  # the base's metrics too
        failures.append(f"metrics not finite: {bad}")
    devices = sorted({c["device"] for c in probe.calls})
    if on_cuda and devices != ["cuda"]:
        failures.append(f"trained on {devices}, expected cuda only")
    if not probe.calls:
        failures.append("no training step ran")
    return {"device": device_name, "trained": probe.calls, "arms": arms, "failures": failures}


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu", action="store_true", help="a tiny model on the CPU (the default without CUDA)"
    )
    parser.add_argument("--out", type=Path, help="study directory to keep (default: a temporary one)")
    parser.add_argument("--compile", action="store_true", help="train with compile: true")
    opts = parser.parse_args(args)
    if opts.cpu and not torch.cuda.is_initialized():  # hide a GPU from the study (before CUDA starts)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        result = run_smoke(opts.out or Path(tmp), opts.cpu, opts.compile)
    print(f"\ndevice: {result['device']}; trained as: {result['trained']}")
    print(
        f"{'arm':<24} {'params':>12} {'trainable':>12} {'tokens/s':>10} {'peak MB':>9} {'est. MB':>9} {'MFU':>6}"
    )
    for a in result["arms"]:
        mfu = f"{100 * a['mfu']:.1f}%" if a["mfu"] is not None else "n/a"
        print(f"{a['arm']:<24} {a['total']:>12,} {a['trainable']:>12,} {a['tokens_per_s']:>10,.0f} "
              f"{a['peak_memory_mb']:>9,.0f} {a['estimate_mb']:>9,.0f} {mfu:>6}")  # fmt: skip
    for failure in result["failures"]:
        print(f"FAILED: {failure}")
    if not result["failures"]:
        print("OK: every arm finished on the expected device with finite metrics")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
