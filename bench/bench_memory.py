"""Estimated vs measured peak training memory on the CPU, for tiny Llamas of three sizes.

    python bench/bench_memory.py                   # 3 sizes × full/LoRA × fp32/bf16/bf16-mixed
    python bench/bench_memory.py --only s256,lora  # configurations whose name contains 's256' or 'lora'
    python bench/bench_memory.py --measure JSON    # one configuration in this process (prints JSON)

Each configuration runs in a fresh process: it reads its resident set size (VmRSS), builds the model,
resets the resident high-water mark (`echo 5 > /proc/self/clear_refs`), trains a few real steps with
`learnforget.train.loop` (AdamW, the arm set up as `load_arm_model` does) and reads VmHWM. 'bf16' trains a
bfloat16 model; 'bf16-mixed' a float32 one whose forward pass runs under bf16 autocast (backward and
optimizer step outside it). Measured = VmHWM − the RSS before the model was built: weights, gradients,
optimizer states and the training peak. The estimate is the dry-run's (`learnforget.study.dryrun.arm_memory`),
its training part (`MemoryEstimate.training`: without what a study's process holds besides).
glibc is told to serve allocations over 64 KiB by mmap (`MALLOC_MMAP_THRESHOLD_`), so that freed
tensors leave the resident set, as they leave a GPU allocator's allocated bytes; `--default-malloc`
measures with glibc's own threshold instead, which may keep freed blocks resident.

Where SmolLM2-135M is at $LEARNFORGET_SMOL (default /root/smol), three more configurations (full, LoRA r16
on paper-all, LoRA r1) run one arm of a micro study the way a study runs it (`study.run_arm`: math CPT,
batch 4 × 256, fp32, one thread, 2 milestones of one step, every evaluation suite at small sizes (the
loss on 8 rows, more than one pass's `likelihood.LOGITS_BYTES`), ΔW spectra, checkpoints) with glibc's
default allocator,
and compare the estimate for a CPU (`arm_memory(..., device='cpu')`) with the peak the study records
(`study.peak_memory_mb`: ru_maxrss, the whole process). The peak after training and after evaluation
are printed apart (VmHWM, MiB). Minutes per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STEPS = 3
SIZES = {  # name: hidden, layers, heads, intermediate, vocab
    "s128": (128, 2, 4, 344, 4096),
    "s256": (256, 4, 4, 688, 8192),
    "s512": (512, 4, 8, 1376, 32000),
}
CONFIGS = [
    dict(name=f"{size}-{method}-{precision}", size=size, method=method, precision=precision,
         batch_size=4, seq_len=256, rank=8)
    for precision in ("fp32", "bf16", "bf16-mixed") for size in SIZES for method in ("full", "lora")
]  # fmt: skip
REAL_MODEL = os.environ.get("LEARNFORGET_SMOL", "/root/smol")
REAL_CONFIGS = [
    dict(name="smol-full", arm={"method": "full", "learning_rate": 2e-4}),
    dict(name="smol-lora-r16", arm={"method": "lora", "rank": 16, "target_modules": "paper-all", "learning_rate": 2e-3}),
    dict(name="smol-lora-r1", arm={"method": "lora", "rank": 1, "target_modules": "paper-all", "learning_rate": 2e-3}),
]  # fmt: skip
REAL_STUDY = dict(
    name="memory", base_model=REAL_MODEL, domain="math", regime="cpt", batch_size=4, seq_len=256,
    budget_tokens=2 * 4 * 256, milestones=2, workers=1,
    eval={"loss_tokens": 2048, "choice_items": 2, "generation_problems": 1, "reference_problems": 1,
          "max_new_tokens": 8, "diversity_prompts": 1, "diversity_samples": 2},
)  # fmt: skip


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def study_and_arm(cfg: dict):
    """The StudyConfig and Arm the configuration stands for (built-in architecture at the given size)."""
    from learnforget.config.arms import expand_arms
    from learnforget.config.study import StudyConfig

    hidden, layers, heads, intermediate, vocab = SIZES[cfg["size"]]
    study = StudyConfig(
        base={"hidden_size": hidden, "num_layers": layers, "num_heads": heads, "intermediate_size": intermediate,
              "vocab_size": vocab, "seq_len": cfg["seq_len"]},
        batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], precision=cfg["precision"],
        arms=[{"method": cfg["method"], "rank": cfg["rank"], "learning_rate": 1e-4}],
    )  # fmt: skip
    return study, expand_arms(study)[0]


def measure(cfg: dict) -> dict:
    """Train `STEPS` steps of one configuration in this process; estimated and measured peak bytes."""
    from transformers import AutoModelForCausalLM

    from learnforget.arms.build import count_parameters, prepare_arm
    from learnforget.study.dryrun import arm_memory, arm_size, base_config
    from learnforget.train.loop import make_optimizer, train_steps

    torch.set_num_threads(cfg.get("threads", 1))
    torch.manual_seed(0)
    study, arm = study_and_arm(cfg)
    config = base_config(study)
    dtype = torch.bfloat16 if study.precision == "bf16" else torch.float32
    rows = torch.randint(0, config.vocab_size, (STEPS * study.batch_size, study.seq_len))
    baseline = status_kib("VmRSS") * 1024
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = prepare_arm(model, arm)  # as learnforget.arms.build.load_arm_model sets an arm up
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the build's temporaries don't count
    optimizer, scheduler = make_optimizer(model, 1e-4, 0.0, 0, STEPS, arm.optimizer)
    started = time.perf_counter()
    train_steps(model, optimizer, scheduler, rows, study.batch_size, 0, STEPS, precision=study.precision)
    seconds = time.perf_counter() - started
    measured = status_kib("VmHWM") * 1024 - baseline
    trainable, total = arm_size(config, arm)
    assert (trainable, total) == count_parameters(model)
    estimate = arm_memory(config, study, arm, trainable, total)
    # Training alone: this process holds no base weights or evaluation copy, and its runtime is left out.
    return {**cfg, "trainable": trainable, "total": total, "estimate": estimate.as_dict(), "measured": measured,
            "ratio": estimate.training / measured, "seconds": seconds}  # fmt: skip


def measure_arm(cfg: dict) -> dict:
    """One arm of the REAL_STUDY micro study through `study.run_arm` in this process (its directory:
    cfg['dir']); the CPU estimate, the peak the study records, and VmHWM after each training and
    evaluation (MiB)."""
    import learnforget.evaluate.arm_model as eval_model
    import learnforget.study.arm as train  # the arm recipe's own reference to train_steps
    from learnforget.config.arms import expand_arms
    from learnforget.config.study import StudyConfig
    from learnforget.runtime.peak_memory import peak_memory_mb
    from learnforget.study.arm import run_arm
    from learnforget.study.dryrun import arm_memory, arm_size, base_config

    study = StudyConfig(**REAL_STUDY, arms=[cfg["arm"]])
    arm = expand_arms(study)[0]
    stages: list[tuple[str, float]] = []

    def after(name, fn):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            stages.append((name, status_kib("VmHWM") / 1024))
            return result

        return wrapped

    train.train_steps = after("train", train.train_steps)
    eval_model.ArmEvaluator.evaluate = after("eval", eval_model.ArmEvaluator.evaluate)
    run_arm(study, arm, cfg["dir"], REAL_MODEL)
    config = base_config(study)
    trainable, total = arm_size(config, arm)
    estimate = arm_memory(config, study, arm, trainable, total, device="cpu")
    measured = peak_memory_mb() * 2**20
    return {**cfg, "trainable": trainable, "total": total, "estimate": estimate.as_dict(), "measured": measured,
            "ratio": estimate.total / measured, "stages": stages}  # fmt: skip


def measure_in_fresh_process(cfg: dict, default_malloc: bool = False) -> dict:
    """`measure` in a new Python process (a clean heap and resident set)."""
    env = dict(os.environ) if default_malloc else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    mode = "--measure-arm" if "arm" in cfg else "--measure"
    done = subprocess.run(
        [sys.executable, __file__, mode, json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise RuntimeError(f"{cfg['name']}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="run the configurations whose name contains this (or one of a,b,...)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per measurement")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's mmap threshold")
    parser.add_argument("--measure", help="JSON of one configuration: measure it in this process")
    parser.add_argument("--measure-arm", help="JSON of one SmolLM2 configuration: measure it in this process")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.measure_arm:
        torch.set_num_threads(1)
        print(json.dumps(measure_arm(json.loads(args.measure_arm))))
        return
    mb = 2**20
    print(f"{'configuration':<22} {'trainable':>11} {'weights':>8} {'grad+opt':>8} {'activ.':>8} "
          f"{'estimate':>9} {'measured':>9} {'ratio':>6}   (MiB; {STEPS} steps of 4×256 tokens)")  # fmt: skip
    for cfg in CONFIGS:
        if not any(part in cfg["name"] for part in args.only.split(",")):
            continue
        r = measure_in_fresh_process({**cfg, "threads": args.threads}, args.default_malloc)
        e = r["estimate"]
        print(f"{r['name']:<22} {r['trainable']:>11,} {e['weights'] / mb:>8.1f} "
              f"{(e['gradients'] + e['optimizer']) / mb:>8.1f} {e['activations'] / mb:>8.1f} "
              f"{(e['total'] - e['held']) / mb:>9.1f} {r['measured'] / mb:>9.1f} {r['ratio']:>6.2f}", flush=True)  # fmt: skip
    real = [c for c in REAL_CONFIGS if any(part in c["name"] for part in args.only.split(","))]
    if real and not (Path(REAL_MODEL) / "config.json").exists():
        print(f"SmolLM2-135M skipped: no model at {REAL_MODEL} (set LEARNFORGET_SMOL)")
        return
    if real:
        print(f"\n{'SmolLM2-135M arm':<22} {'trainable':>11} {'weights':>8} {'grads+opt':>9} {'activ.':>8} {'held':>8} "
              f"{'estimate':>9} {'measured':>9} {'ratio':>6}   after each train / eval (VmHWM)")  # fmt: skip
    with tempfile.TemporaryDirectory() as study_dir:
        for cfg in real:  # one study directory: its data are prepared once
            r = measure_in_fresh_process({**cfg, "dir": study_dir}, default_malloc=True)
            e = r["estimate"]
            stages = " ".join(f"{name} {peak:.0f}" for name, peak in r["stages"])
            print(f"{r['name']:<22} {r['trainable']:>11,} {e['weights'] / mb:>8.1f} "
                  f"{(e['gradients'] + e['optimizer']) / mb:>9.1f} {e['activations'] / mb:>8.1f} {e['held'] / mb:>8.1f} "
                  f"{e['total'] / mb:>9.1f} {r['measured'] / mb:>9.1f} {r['ratio']:>6.2f}   {stages}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
