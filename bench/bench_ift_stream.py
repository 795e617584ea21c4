"""IFT data at scale: encode a large instruction file into an example file, then train a few steps reading
it; peak resident memory per process, for several sizes to show it does not grow with the data.

    python bench/bench_ift_stream.py 50000 300000 1200000   # examples; one fresh process per size

Measured on 2 shared CPU cores: 8.4M, 50.8M and 203.7M tokens; peak resident memory 624, 607 and 607 MB.

The file is synthetic: the built-in code tasks (prompt, solution) as JSON lines, each prompt numbered so
that no two records are alike, written in a streaming way. The tokenizer is byte-level BPE trained on
the built-in code corpus; the study is code IFT of one epoch, seq_len 256, batch 8, rows grouped by length.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN, BATCH, STEPS = 256, 8, 5  # seq_len: the built-in base's


def write_jsonl(path: Path, n: int) -> None:
    from learnforget.data.code_tasks import code_tasks

    tasks = code_tasks("train", 2000, 0)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            task = tasks[i % len(tasks)]
            record = {"prompt": f"# exercise {i}\n{task['prompt']}", "response": task["canonical_solution"]}
            out.write(json.dumps(record) + "\n")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(n: int, source: str) -> None:
    """Encode ``n`` examples of ``source`` into an example file, then train STEPS steps of a tiny Llama on
    the last rows of the epoch (as a late step would read them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.bench_cpt_stream import bench_tokenizer
    from learnforget.config.study import StudyConfig
    from learnforget.data.datasets import training_rows
    from learnforget.train.loop import make_optimizer, train_steps

    tokenizer = bench_tokenizer()
    study = StudyConfig(regime="ift", domain="code", epochs=1, seq_len=SEQ_LEN, batch_size=BATCH,
                        data={"train": source, "examples": n})  # fmt: skip
    before = peak_mb()
    started = time.perf_counter()
    train = training_rows(study, tokenizer)
    seconds = time.perf_counter() - started
    after_encoding = peak_mb()
    rows, stats = train["rows"], train["stats"]
    size_mb = sum(f.stat().st_size for f in Path(rows.path).iterdir()) / 2**20
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ_LEN)  # fmt: skip
    model = LlamaForCausalLM(config)
    optimizer, scheduler = make_optimizer(model, 1e-3, 0.0, 0, study.steps, "adamw")
    last = study.steps - STEPS
    loss = train_steps(
        model, optimizer, scheduler, train["input_ids"], BATCH, last, study.steps, labels=train["labels"],
        epoch_rows=rows.epoch_rows,
    )  # fmt: skip
    print(
        f"{n:>9,} examples, {stats['real_tokens']:>12,} tokens ({stats['overlong']:,} overlong), "
        f"{stats['real_tokens'] / seconds:,.0f} tokens/s encoded, example file {size_mb:,.0f} MB; peak RSS: "
        f"{peak_mb():,.0f} MB (before encoding {before:,.0f}, after {after_encoding:,.0f}); {STEPS} steps "
        f"at the end of the epoch, loss {loss:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] == "one":
        one(int(sys.argv[2]), sys.argv[3])
    else:  # one fresh process per size, so each peak is its own
        for n in [int(a) for a in sys.argv[1:]]:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                source = Path(tmp) / "ift.jsonl"
                write_jsonl(source, n)
                env = {**os.environ, "LEARNFORGET_CACHE": str(Path(tmp) / "cache")}
                subprocess.run([sys.executable, __file__, "one", str(n), str(source)], check=True, env=env)
