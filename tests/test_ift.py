"""IFT: loss only on response tokens, templates, BOS, multi-turn, overlong rows, padding trimmed from batches,
and a micro math IFT study through the CLI."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learnforget.data.datasets import encode_pair, padding_stats
from learnforget.data.examples import row_order
from learnforget.data.templates import (
    CHAT,
    DEFAULT_TEMPLATE,
    IGNORE_INDEX,
    PLAIN,
    encode_conversation,
    render_prompt,
    render_response,
    resolve_template,
    special_prefix,
)  # fmt: skip
from learnforget.data.tokens import train_tokenizer
from tests.test_examples import reference_rows as ift_rows
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
    rows = ift_rows(
        tokenizer, [encode_pair(tokenizer, p, r, 48) for p, r in pairs], seq_len=48, n_rows=4, seed=0
    )
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
    template = resolve_template(None, tokenizer, builtin_data=True)  # a chat template wins when there is one
    assert template == CHAT and render_prompt(tokenizer, "hi", template) == "<user>hi</user><bot>"


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
    # Token counts are real tokens: the rows' lengths, not rows x seq_len.
    lengths = torch.load(out / "data.pt", weights_only=False)["train"]["rows"].lengths()
    with sqlite3.connect(out / "results.db") as conn:
        tokens = conn.execute("SELECT MAX(tokens) FROM metrics WHERE arm LIKE 'lora%'").fetchone()[0]
    assert tokens == int(lengths.sum()) and len(lengths) == 8 * 4
    assert "IFT data: 16 examples, " in (out / "summary.md").read_text()
    # The header counts those real tokens and one milestone per epoch; the ETA line follows the epochs.
    assert f"1 arm × {tokens:,} tokens (2 epochs × 16 examples), 2 milestones → {out}" in err
    assert "study: 1/2 milestones, ETA " in err and "study: 2/2 milestones, all milestones done" in err
    assert "after the first milestone" not in err.split("study: 1/2 milestones")[1]


def test_default_template_separates_prompt_and_response_and_adds_bos_as_configured():
    tokenizer = tiny_tokenizer()
    plain_has_chat = resolve_template(None, tokenizer, builtin_data=False)
    assert (
        plain_has_chat == DEFAULT_TEMPLATE
        and resolve_template(None, tokenizer, builtin_data=True) == "{prompt}"
    )
    ids, labels, cut = encode_conversation(
        tokenizer,
        [("user", "Write a function that returns 4."), ("assistant", "def f():")],
        DEFAULT_TEMPLATE,
        64,
    )
    prompt_len = labels.count(IGNORE_INDEX)
    assert (
        tokenizer.decode(ids[:prompt_len])
        == "### Instruction:\nWrite a function that returns 4.\n\n### Response:\n"
    )
    assert tokenizer.decode(ids[prompt_len:]) == "def f():" + tokenizer.eos_token and not cut
    assert special_prefix(tokenizer) == []  # the built-in tokenizer adds no BOS: built-in rows are unchanged
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    from tokenizers.processors import TemplateProcessing

    # A Llama-style tokenizer: its configuration puts BOS before every text.
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    assert special_prefix(tokenizer) == [bos]
    with_bos, with_bos_labels, _ = encode_conversation(
        tokenizer, [("user", "hi"), ("assistant", "yo")], "{prompt}", 64
    )
    assert with_bos[0] == bos and with_bos_labels[0] == IGNORE_INDEX and with_bos.count(bos) == 2  # BOS, EOS
    cut, cut_labels, was_cut = encode_conversation(
        tokenizer, [("user", "Question: " * 40), ("assistant", " 5")], "{prompt}", 16
    )
    assert was_cut and len(cut) == 16 and cut[0] == bos and cut_labels[-1] == bos  # BOS kept, EOS learned


def test_multi_turn_chat_has_loss_on_every_assistant_turn_and_keeps_the_system_prompt():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    turns = [
        ("system", "be brief"),
        ("user", "1+1?"),
        ("assistant", "2"),
        ("user", "2+2?"),
        ("assistant", "4"),
    ]
    ids, labels, _ = encode_conversation(tokenizer, turns, CHAT, 128)
    text = tokenizer.decode(ids)
    assert (
        text
        == "<system>be brief</system><user>1+1?</user><assistant>2</assistant><user>2+2?</user><assistant>4</assistant>"
    )
    learned = tokenizer.decode([i for i, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX])
    assert learned == "2</assistant>4</assistant>"
    assert render_prompt(tokenizer, "hi", CHAT) == "<user>hi</user><assistant>"
    # Without the chat template, the same conversation goes through a text template, turn by turn.
    ids, labels, _ = encode_conversation(tokenizer, turns, "Q: {prompt}\nA: ", 128)
    eos = tokenizer.eos_token
    assert tokenizer.decode(ids) == f"be brief\n\nQ: 1+1?\nA: 2{eos}Q: 2+2?\nA: 4{eos}"
    assert (
        tokenizer.decode([i for i, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX])
        == f"2{eos}4{eos}"
    )


def test_length_grouping_keeps_epochs_exact_and_cuts_padding():
    lengths = [5 + (i * 37) % 200 for i in range(96)]
    plain = row_order(lengths, 2 * 96 + 8, batch_size=8, seed=3, group_by_length=False)
    grouped = row_order(lengths, 2 * 96 + 8, batch_size=8, seed=3, group_by_length=True)
    assert (
        grouped == row_order(lengths, 2 * 96 + 8, batch_size=8, seed=3, group_by_length=True)
    ).all()  # seeded
    grouped, plain = grouped.tolist(), plain.tolist()
    for epoch in range(2):  # every epoch is one pass over every example, in either order
        assert (
            sorted(grouped[epoch * 96 : (epoch + 1) * 96])
            == list(range(96))
            == sorted(plain[epoch * 96 : (epoch + 1) * 96])
        )
    import torch

    def computed(order):
        return padding_stats(torch.tensor([lengths[i] for i in order]), 8, 256)["padded_to_batch_longest"]

    assert computed(grouped) < 0.7 * computed(plain)


def test_trimmed_batches_give_the_loss_and_gradients_of_full_padded_rows():
    import torch

    from learnforget.train.loop import trim_padding

    tokenizer = tiny_tokenizer()
    pairs = [("Question: What is 2 plus 3?\nAnswer:", " 5"), ("def add(a, b):\n", "    return a + b\n")]
    rows = ift_rows(
        tokenizer, [encode_pair(tokenizer, p, r, 64) for p, r in pairs], seq_len=64, n_rows=2, seed=0
    )
    ids, labels = trim_padding(rows["input_ids"], rows["labels"])
    assert ids.shape[1] == int(rows["lengths"].max()) < 64
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))  # fmt: skip
    full = model(input_ids=rows["input_ids"], labels=rows["labels"]).loss
    full.backward()
    full_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    trimmed = model(input_ids=ids, labels=labels).loss
    trimmed.backward()
    assert torch.allclose(full, trimmed, atol=1e-6)
    assert torch.allclose(full_grad, model.model.embed_tokens.weight.grad, atol=1e-6)


def test_overlong_user_examples_are_truncated_or_dropped_and_counted(tmp_path):
    import json

    from learnforget.config.study import StudyConfig
    from learnforget.data.datasets import training_examples
    from learnforget.errors import UserError

    tokenizer = tiny_tokenizer()
    records = [{"prompt": "Question: " * (60 if i % 3 == 0 else 1), "response": " 5"} for i in range(9)]
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    def study(**data):
        return StudyConfig(regime="ift", domain="math", seq_len=64, data={"train": str(source), **data})

    counts: dict = {}
    kept = list(training_examples(study(examples=4), tokenizer, counts))
    assert (
        counts["overlong"] == 2 and len(kept) == 4 and max(len(ids) for ids, _ in kept) == 64
    )  # records 1, 4
    kept = list(training_examples(study(examples=4, overlong="drop"), tokenizer, counts))
    assert (
        counts["overlong"] == 2 and len(kept) == 4 and max(len(ids) for ids, _ in kept) < 64
    )  # read to record 6
    with pytest.raises(
        UserError, match=r"data\.jsonl: has 6 conversations after dropping 3 longer than seq_len=64"
    ):
        list(training_examples(study(examples=7, overlong="drop"), tokenizer))


# SmolLM2-Instruct's template, shortened: ChatML with a system prompt put into every conversation without one.
CHATML = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chatml_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHATML
    return tokenizer


def learned_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX])


def test_chat_template_responses_lose_the_separating_space_and_the_plain_template_keeps_it():
    from learnforget.data.datasets import builtin_pairs
    from learnforget.data.formats import pair

    tokenizer = chatml_tokenizer()
    ((math_prompt, math_response),) = builtin_pairs("math", "train", 1, 0)
    ((code_prompt, code_response),) = builtin_pairs("code", "train", 1, 0)
    assert math_prompt.endswith("\nAnswer:") and math_response.startswith(" T")  # "Answer:" + " The …"
    ids, labels, _ = encode_conversation(tokenizer, pair(math_prompt, math_response), CHAT, 2048)
    assert f"<|im_start|>assistant\n{math_response[1:]}<|im_end|>" in tokenizer.decode(ids)
    assert learned_text(tokenizer, ids, labels) == math_response[1:] + "<|im_end|>\n"
    # A code body keeps its indentation: the completion is run after the prompt.
    ids, labels, _ = encode_conversation(tokenizer, pair(code_prompt, code_response), CHAT, 2048)
    assert learned_text(tokenizer, ids, labels) == code_response + "<|im_end|>\n"
    # The plain template continues the prompt: the response's tokens, space included, as before.
    ids, labels, _ = encode_conversation(tokenizer, pair(math_prompt, math_response), PLAIN, 2048)
    prompt_ids = tokenizer(math_prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(math_response, add_special_tokens=False)["input_ids"]
    assert ids == prompt_ids + response_ids + [tokenizer.eos_token_id]
    # Reference solutions (ref_nll) follow the same rule as training responses.
    assert render_response(math_response, CHAT) == math_response[1:]
    assert render_response(math_response, PLAIN) == math_response
    assert render_response(code_response, CHAT) == code_response


def test_built_in_ift_examples_under_a_chat_template_learn_no_leading_space():
    from learnforget.config.study import StudyConfig
    from learnforget.data.datasets import training_examples

    study = StudyConfig(regime="ift", domain="math", seq_len=512, data={"examples": 8})
    tokenizer = chatml_tokenizer()
    for ids, labels in training_examples(study, tokenizer):
        text = tokenizer.decode(ids)
        learned = learned_text(tokenizer, ids, labels)
        assert text.startswith(
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n"
        )
        assert not learned[0].isspace() and text.endswith("<|im_start|>assistant\n" + learned)


def cpt_and_ift(**data):
    from learnforget.config.study import StudyConfig

    return StudyConfig(regime="cpt", domain="math", data=data), StudyConfig(
        regime="ift", domain="math", data=data
    )


def test_cpt_scores_plain_prompts_unless_prompt_template_names_one_and_the_dry_run_says_which():
    from learnforget.data import corpora
    from learnforget.data.datasets import study_template
    from learnforget.errors import UserError
    from learnforget.evaluate.sets import generation_problems
    from learnforget.study.dryrun import data_plan

    chat, plain = chatml_tokenizer(), tiny_tokenizer()
    cpt, ift = cpt_and_ift()
    # CPT trains on "Question: …\nAnswer: …" documents: its evaluation prompts are that text, untemplated.
    document = next(iter(corpora.documents("math", "finetune"))).text
    prompt = generation_problems(cpt, 1)[0]["prompt"]
    assert (
        document.startswith("Question: ") and prompt.startswith("Question: ") and prompt.endswith("\nAnswer:")
    )
    assert study_template(cpt, chat) == PLAIN and study_template(ift, chat) == CHAT
    assert study_template(ift, plain) == PLAIN  # built-in tasks without a chat template: as before
    # data.prompt_template is honoured by CPT's evaluation prompts (its training text is documents).
    for setting, template in (
        ("chat", CHAT),
        ("none", PLAIN),
        ("default", DEFAULT_TEMPLATE),
        ("Q: {prompt}", "Q: {prompt}"),
    ):
        cpt_set, ift_set = cpt_and_ift(prompt_template=setting)
        assert study_template(cpt_set, chat) == template == study_template(ift_set, chat)
    with pytest.raises(
        UserError, match=r"^data\.prompt_template: 'chat' needs a tokenizer with a chat template"
    ):
        study_template(cpt_and_ift(prompt_template="chat")[0], plain)
    # The dry run names the template it will use, with an example.
    assert "Evaluation prompts (reference NLL, generation, diversity): none, the prompt as is: " in data_plan(
        cpt, tokenizer=chat
    )
    assert (
        "Template: chat template of the built-in base (ChatML, default system prompt 'You are a helpful "
        "assistant'): '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n<|im_start|>user\\n<prompt>"
        "<|im_end|>\\n<|im_start|>assistant\\n<response><|im_end|>\\n'; " in data_plan(ift, tokenizer=chat)
    )
    assert "Template: none, the prompt as is: '<prompt><response><eos>'; " in data_plan(ift, tokenizer=plain)
    assert (
        "Template: the chat template of the built-in base if its tokenizer has one, else none"
        in data_plan(ift)
    )


def test_prompt_template_in_cpt_reaches_the_study(micro_config, tmp_path, capsys):
    """The built-in base has no chat template: asking CPT to score chat prompts is refused in one line."""
    code, _, err = run_cli(
        ["run", str(micro_config), "--out", str(tmp_path / "s"), "--set", "data.prompt_template=chat"], capsys
    )
    assert code == 2 and "error: data.prompt_template: 'chat' needs a tokenizer with a chat template" in err
