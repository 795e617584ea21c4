"""The fused LM-head + cross-entropy loss: the same losses and gradients as transformers' own, within
float rounding, for full finetuning and LoRA, with ignored labels and micro-batches; other heads fall back."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from learnforget.arms.build import prepare_arm
from learnforget.config.arms import expand_arms
from learnforget.config.study import StudyConfig
from learnforget.train.fused_loss import causal_lm_loss, fused_loss_parts
from learnforget.train.loop import make_optimizer, train_steps

LOSS_TOLERANCE = 1e-5  # nats/token, over 6 steps: float rounding of a different summation order


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as study workers train; two threads on a busy machine only spin
    yield
    torch.set_num_threads(threads)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(config)


def arm(method: str):
    settings = {"method": method, "learning_rate": 1e-2}
    return expand_arms(StudyConfig(arms=[settings | ({"rank": 4} if method == "lora" else {})]))[0]


def rows_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 20, (24, 32), generator=gen)  # few distinct tokens: a few steps learn them
    labels = rows.clone()
    labels[::2, :10] = -100  # IFT-like: no loss on the prompt
    labels[1::4, 24:] = -100  # and right padding
    return rows, labels


def train(method: str, fused: bool, labels: torch.Tensor | None) -> tuple[list[float], dict]:
    rows, _ = rows_and_labels()
    torch.manual_seed(0)
    model = prepare_arm(tiny_llama(), arm(method))
    optimizer, scheduler = make_optimizer(model, 1e-2 if method == "full" else 5e-2, 0.0, 1, 6)
    losses: list[float] = []
    train_steps(model, optimizer, scheduler, rows, 4, 0, 6, labels=labels, micro_batch_size=2,
                on_step=lambda s, loss: losses.append(loss), fused_loss=fused)  # fmt: skip
    return losses, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("ift", [False, True])
def test_fused_training_matches_transformers_loss(method, ift):
    labels = rows_and_labels()[1] if ift else None
    plain, plain_weights = train(method, False, labels)
    fused, fused_weights = train(method, True, labels)
    assert plain[-1] < plain[0] - 1e-3  # it trains (LoRA from B = 0: slowly)
    assert max(abs(a - b) for a, b in zip(plain, fused, strict=True)) < LOSS_TOLERANCE
    assert fused == train(method, True, labels)[0]  # deterministic
    for name, weight in plain_weights.items():
        torch.testing.assert_close(fused_weights[name], weight, rtol=1e-4, atol=1e-5)


def test_loss_and_gradients_equal_the_unfused_ones():
    rows, labels = rows_and_labels()
    model = tiny_llama()
    expected = model(input_ids=rows[:4], labels=labels[:4]).loss
    expected.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = causal_lm_loss(fused_loss_parts(model), rows[:4], labels[:4])
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    for name, p in model.named_parameters():  # the tied embedding gets both the head's and the lookup's part
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-7)


def test_other_heads_fall_back_to_transformers_loss():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    assert fused_loss_parts(gpt2) is None
    assert fused_loss_parts(prepare_arm(tiny_llama(), arm("lora"))) is not None
    assert fused_loss_parts(tiny_llama().to(torch.bfloat16)) is None
