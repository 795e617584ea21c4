"""IFT padding: tokens computed when rows are padded to seq_len, to each batch's longest row, and with
rows grouped by length, on the built-in IFT studies (default settings, the built-in base's tokenizer).

    python bench/bench_ift_padding.py            # code and math IFT, 2000 examples, 4 epochs
"""

from __future__ import annotations

import sys
import time

from learnforget.config import StudyConfig
from learnforget.data.datasets import padding_stats, training_rows
from learnforget.model import build_tokenizer


def main(examples: int = 2000, epochs: int = 4) -> None:
    started = time.perf_counter()
    tokenizer = build_tokenizer(StudyConfig().base)
    print(f"tokenizer: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for domain in ("code", "math"):
        for grouped in (False, True):
            study = StudyConfig(
                domain=domain,
                regime="ift",
                epochs=epochs,
                data={"examples": examples, "group_by_length": grouped},
            )
            rows = training_rows(study, tokenizer)
            stats = padding_stats(rows["lengths"], study.batch_size, study.seq_len)
            real, full, trimmed = (
                stats["real_tokens"],
                stats["padded_to_seq_len"],
                stats["padded_to_batch_longest"],
            )
            print(
                f"{domain} IFT, {examples} examples x {epochs} epochs, batch {study.batch_size}, seq_len "
                f"{study.seq_len}, grouped={grouped}: real {real:,}; padded to seq_len {full:,} "
                f"(padding {full - real:,}); trimmed to batch longest {trimmed:,} (padding {trimmed - real:,}, "
                f"{full / trimmed:.2f}x fewer tokens computed); overlong {rows['stats']['overlong']}"
            )


if __name__ == "__main__":
    main()
