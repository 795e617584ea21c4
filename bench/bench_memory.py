"""Estimated vs measured peak training memory on the CPU, for tiny Llamas of three sizes.

    python bench/bench_memory.py                   # 3 sizes × full/LoRA × fp32/bf16/bf16-mixed
    python bench/bench_memory.py --only s256,lora  # configurations whose name contains 's256' or 'lora'
    python bench/bench_memory.py --measure JSON    # one configuration in this process (prints JSON)

Each configuration runs in a fresh process: it reads its resident set size (VmRSS), builds the model,
resets the resident high-water mark (`echo 5 > /proc/self/clear_refs`), trains a few real steps with
`learnforget.train` (AdamW, the arm set up as `load_arm_model` does) and reads VmHWM. 'bf16' trains a
bfloat16 model; 'bf16-mixed' a float32 one whose forward pass runs under bf16 autocast (backward and
optimizer step outside it). Measured = VmHWM − the RSS before the model was built: weights, gradients,
optimizer states and the training peak. The estimate is the dry-run's (`learnforget.dryrun.arm_memory`).
glibc is told to serve allocations over 64 KiB by mmap (`MALLOC_MMAP_THRESHOLD_`), so that freed
tensors leave the resident set, as they leave a GPU allocator's allocated bytes; `--default-malloc`
measures with glibc's own threshold instead, which may keep freed blocks resident.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def study_and_arm(cfg: dict):
    """The StudyConfig and Arm the configuration stands for (built-in architecture at the given size)."""
    from learnforget.config import StudyConfig, expand_arms

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

    from learnforget.dryrun import arm_memory, arm_size, base_config
    from learnforget.train import count_parameters, make_optimizer, prepare_arm, train_steps

    torch.set_num_threads(cfg.get("threads", 1))
    torch.manual_seed(0)
    study, arm = study_and_arm(cfg)
    config = base_config(study)
    dtype = torch.bfloat16 if study.precision == "bf16" else torch.float32
    rows = torch.randint(0, config.vocab_size, (STEPS * study.batch_size, study.seq_len))
    baseline = status_kib("VmRSS") * 1024
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = prepare_arm(model, arm)  # as learnforget.train.load_arm_model sets an arm up
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the build's temporaries don't count
    optimizer, scheduler = make_optimizer(model, 1e-4, 0.0, 0, STEPS, arm.optimizer)
    started = time.perf_counter()
    train_steps(model, optimizer, scheduler, rows, study.batch_size, 0, STEPS, precision=study.precision)
    seconds = time.perf_counter() - started
    measured = status_kib("VmHWM") * 1024 - baseline
    trainable, total = arm_size(config, arm)
    assert (trainable, total) == count_parameters(model)
    estimate = arm_memory(config, study, arm, trainable, total)
    return {**cfg, "trainable": trainable, "total": total, "estimate": estimate.as_dict(), "measured": measured,
            "ratio": estimate.total / measured, "seconds": seconds}  # fmt: skip


def measure_in_fresh_process(cfg: dict, default_malloc: bool = False) -> dict:
    """`measure` in a new Python process (a clean heap and resident set)."""
    env = dict(os.environ) if default_malloc else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(cfg)], capture_output=True, text=True, env=env
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
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
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
              f"{e['total'] / mb:>9.1f} {r['measured'] / mb:>9.1f} {r['ratio']:>6.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
