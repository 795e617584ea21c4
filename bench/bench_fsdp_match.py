"""One process vs `torchrun --nproc_per_node N ... --set sharding=fsdp` on the same study: how close are they?

    python bench/bench_fsdp_match.py                       # the micro study of tests/test_fsdp.py, 2 processes
    python bench/bench_fsdp_match.py --config my.yaml --processes 4 --out /tmp/match

Runs both (CPU, gloo, one thread per process), then prints the largest |Δ| of every loss metric over all
arms and milestones, the largest |Δ| of the saved arms' logits, and whether the saved sharded full model
reproduces the study's recorded final code/loss.
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from tests.conftest import loss_metrics
from tests.test_fsdp import FSDP_STUDY

# ---- flags ----
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", help="study YAML (default: the micro study of tests/test_fsdp.py)")
parser.add_argument("--processes", type=int, default=2, help="processes of the sharded run")
parser.add_argument("--out", help="directory for both studies (default: a temporary one)")
args = parser.parse_args()

out = Path(args.out or tempfile.mkdtemp(prefix="fsdp-match-"))
out.mkdir(parents=True, exist_ok=True)
config = Path(args.config) if args.config else out / "study.yaml"
if not args.config:
    config.write_text(yaml.safe_dump(FSDP_STUDY))
env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
one, two = out / "one", out / "sharded"

# ---- the two runs ----
run = [sys.executable, "-m", "learnforget", "run", str(config)]
subprocess.run([*run, "--out", str(one)], env=env, check=True, capture_output=True)
torchrun = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    str(args.processes),
]
sharded = [*torchrun, "-m", "learnforget", "run", str(config), "--set", "sharding=fsdp", "--out", str(two)]
subprocess.run(sharded, env=env, check=True, capture_output=True)

# ---- metrics ----
a, b = loss_metrics(one), loss_metrics(two)
assert a.keys() == b.keys(), "the two studies recorded different metrics"
worst = defaultdict(float)
for key in a:
    worst[key[2]] = max(worst[key[2]], abs(a[key] - b[key]))
for metric, delta in sorted(worst.items()):
    print(f"max |Δ| {metric:16s} {delta:.2e}  over {sum(1 for k in a if k[2] == metric)} values")

# ---- saved arms ----
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from learnforget.evaluate.likelihood import mean_token_loss  # noqa: E402

rows = torch.load(two / "data.pt", weights_only=False)["eval"]["loss"]["code"]
with sqlite3.connect(two / "results.db") as conn:
    base_path = json.loads(conn.execute("SELECT value FROM study WHERE key = 'base_path'").fetchone()[0])
    last = "SELECT arm, value FROM metrics WHERE metric = 'code/loss' AND tokens = (SELECT MAX(tokens) FROM metrics)"
    recorded = dict(conn.execute(last))
for arm in sorted(p.name for p in (two / "arms").iterdir()):
    models = []
    for study_dir in (one, two):
        directory = study_dir / "arms" / arm
        if (directory / "model").exists():
            models.append(AutoModelForCausalLM.from_pretrained(directory / "model").eval())
        else:
            base = AutoModelForCausalLM.from_pretrained(base_path)
            models.append(PeftModel.from_pretrained(base, directory / "adapter").eval())
    with torch.no_grad():
        delta = (models[0](rows[:4]).logits - models[1](rows[:4]).logits).abs().max().item()
        loss = mean_token_loss(models[1], rows, 32)
    print(
        f"{arm}: max |Δ logits| {delta:.2e}; saved sharded arm's code/loss {loss:.9f}, "
        f"recorded {recorded[arm]:.9f} (Δ {abs(loss - recorded[arm]):.1e})"
    )
print(f"studies in {out}")
