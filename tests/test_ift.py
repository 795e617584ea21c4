"""IFT: loss only on response tokens, chat templates, and a micro math IFT study through the CLI."""

from __future__ import annotations

import sqlite3

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learnforget.data.datasets import IGNORE_INDEX, encode_pair, ift_rows, render_prompt
from learnforget.data.tokens import train_tokenizer
from tests.test_study import run_cli

TEXT = ["Question: What is 2 plus 3?\nAnswer: 2+3 = 5\n#### 5", "def add(a, b):\n    return a + b\n"] * 40


def tiny_tokenizer():
    return train_tokenizer(TEXT, 300)


def test_prompt_tokens_carry_no_loss():
    tokenizer = tiny_tokenizer()
    pairs = [
        ("Question: What is 2 plus 3?\nAnswer:", " 2+3 = 5\n#### 5"),
        ("def add(a, b):\n", "    return a + b\n"),
    ]
    rows = ift_rows(tokenizer, pairs, seq_len=48, n_rows=4, seed=0)
    for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True):
        prompt_len = next(i for i, y in enumerate(labels) if y != IGNORE_INDEX)
        prompt = tokenizer.decode(ids[:prompt_len])
        assert prompt in {p for p, _ in pairs}
        response_len = int((labels != IGNORE_INDEX).sum())
        assert labels[prompt_len + response_len - 1] == tokenizer.eos_token_id
        assert (labels[prompt_len + response_len :] == IGNORE_INDEX).all()  # padding carries no loss either
    # The model's loss equals the cross-entropy of response tokens alone, whatever the prompt tokens are.
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))  # fmt: skip
    ids, labels = rows["input_ids"][:1], rows["labels"][:1]
    logits = model(input_ids=ids).logits[0, :-1]
    keep = labels[0, 1:] != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[0, 1:][keep])
    assert torch.allclose(model(input_ids=ids, labels=labels).loss, manual, atol=1e-6)


def test_long_prompts_are_cut_from_the_left_and_chat_template_is_used():
    tokenizer = tiny_tokenizer()
    ids, labels = encode_pair(tokenizer, "Question: " * 40, " 5", seq_len=16)
    assert len(ids) == 16 and labels[-1] == tokenizer.eos_token_id
    tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    assert render_prompt(tokenizer, "hi") == "<user>hi</user><bot>"


def test_micro_math_ift_study_has_a_milestone_per_epoch_and_strict_match(micro_config, tmp_path, capsys):
    out = tmp_path / "ift"
    code, _, err = run_cli(
        ["run", str(micro_config), "--out", str(out), "--set", "domain=math", "--set", "regime=ift",
         "--set", "epochs=2", "--set", "data.examples=16", "--set", "arms=[{method: lora, rank: 2, learning_rate: 0.01}]"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    with sqlite3.connect(out / "results.db") as conn:
        rows = dict(conn.execute("SELECT metric || '@' || step, value FROM metrics WHERE arm LIKE 'lora%'"))
    assert {"math/strict_match@4", "math/strict_match@8", "math/ref_nll@8", "math/loss@8"} <= set(rows)
    assert 0 <= rows["math/strict_match@8"] <= 1
