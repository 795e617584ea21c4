"""Multiple-choice scoring, batched generation and diversity on a tiny Llama and a byte-level BPE tokenizer."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

from learnforget.errors import UserError
from learnforget.evaluate import choice
from learnforget.evaluate.choice import build_choice_items, choice_loglikelihoods, encode_pair, score_choices
from learnforget.evaluate.diversity import (
    DIVERSITY_SAMPLES,
    DIVERSITY_TEMPERATURE,
    distinct_fraction,
    diversity_report,
)
from learnforget.evaluate.generate import generate, truncate_at_stop

torch.set_num_threads(1)

SONNETS = [
    """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;""",
    """When in disgrace with fortune and men's eyes,
I all alone beweep my outcast state,
And trouble deaf heaven with my bootless cries,
And look upon myself and curse my fate,
Wishing me like to one more rich in hope,
Featur'd like him, like him with friends possess'd,
Desiring this man's art and that man's scope,
With what I most enjoy contented least;""",
    """My mistress' eyes are nothing like the sun;
Coral is far more red than her lips' red;
If snow be white, why then her breasts are dun;
If hairs be wires, black wires grow on her head.
I have seen roses damask'd, red and white,
But no such roses see I in her cheeks;
And in some perfumes is there more delight
Than in the breath that from my mistress reeks.""",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (vocab 300) with one special token as BOS/EOS and no pad token."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(SONNETS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def tiny_llama(tokenizer, max_positions: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    return tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def trained_model(tokenizer) -> LlamaForCausalLM:
    return train_on_sonnets(tiny_llama(tokenizer), tokenizer)


def train_on_sonnets(model: LlamaForCausalLM, tokenizer, steps: int = 60) -> LlamaForCausalLM:
    """AdamW on random 32-token windows of the sonnets, as pretraining would: memorises them locally."""
    generator = torch.Generator().manual_seed(0)
    rows = [tokenizer(text)["input_ids"] for text in SONNETS]
    windows = torch.tensor([row[i : i + 32] for row in rows for i in range(len(row) - 31)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (16,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


# ---------------------------------------------------------------- building items


def test_items_are_deterministic_readable_and_true_continuations(tokenizer):
    items = build_choice_items(
        SONNETS, tokenizer, n_items=12, context_tokens=12, continuation_tokens=6, seed=3
    )
    assert items == build_choice_items(
        SONNETS, tokenizer, n_items=12, context_tokens=12, continuation_tokens=6, seed=3
    )
    assert items != build_choice_items(
        SONNETS, tokenizer, n_items=12, context_tokens=12, continuation_tokens=6, seed=4
    )
    flat = [" ".join(text.split()) for text in SONNETS]
    for item in items:
        assert len(item["choices"]) == 4 and len({*item["choices"]}) == 4
        context, true_choice = item["context"], item["choices"][item["label"]]
        assert context == context.strip() and all(c == c.strip() for c in item["choices"])
        # Context, a space and the true choice are a document's own text, cut at whitespace.
        assert any(context + " " + true_choice in text for text in SONNETS)
        assert all(" ".join(c.split()) in " ".join(flat) for c in item["choices"])
        # Each span holds at least its token budget; a continuation stops at the first word that reaches
        # it (+-1 for the joining space, which the document may tokenise differently).
        assert len(tokenizer(context)["input_ids"]) >= 12 - 1
        for c in item["choices"]:
            assert len(tokenizer(" " + c)["input_ids"]) >= 6 - 1
            assert " " not in c.strip() or len(tokenizer(" " + c.rsplit(maxsplit=1)[0])["input_ids"]) <= 6 + 1
    assert len({item["label"] for item in items}) > 1


def test_items_need_enough_text(tokenizer):
    with pytest.raises(UserError, match="fewer than n_items"):
        build_choice_items(["too short"], tokenizer, n_items=1, context_tokens=48, continuation_tokens=16)
    with pytest.raises(UserError, match="distinct distractors"):
        build_choice_items(["la " * 200], tokenizer, n_items=1, context_tokens=8, continuation_tokens=4)


# ---------------------------------------------------------------- scoring


def test_encode_pair_matches_lm_eval(tokenizer):
    context, continuation = "Shall I compare thee ", "to a summer's day?"
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    # The trailing space moves to the continuation; the split is at the context's own token length.
    assert context_ids == tokenizer("Shall I compare thee")["input_ids"]
    assert context_ids + continuation_ids == tokenizer(context + continuation)["input_ids"]
    # Several continuations of one context: the same ids as one encode_pair each, empty context too.
    continuations = [continuation, "and curse my fate", "\nThou art"]
    for text in (context, "", "  "):
        shared_ids, each = choice.encode_pairs(tokenizer, text, continuations)
        assert [(shared_ids, ids) for ids in each] == [encode_pair(tokenizer, text, c) for c in continuations]
    assert choice.encode_pairs(tokenizer, "", ["x"]) == (
        [tokenizer.bos_token_id],
        [tokenizer("x")["input_ids"]],
    )


def _unbatched_loglikelihood(model, tokenizer, context: str, choice_text: str) -> float:
    whole = tokenizer(context + " " + choice_text)["input_ids"]
    n_context = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(n_context, len(whole)))


def test_batched_loglikelihoods_match_unbatched(model, tokenizer):
    items = build_choice_items(
        SONNETS, tokenizer, n_items=5, context_tokens=10, continuation_tokens=5, seed=1
    )
    batched = choice_loglikelihoods(model, tokenizer, items, batch_size=3)
    for item, scores in zip(items, batched, strict=True):
        for choice_text, score in zip(item["choices"], scores, strict=True):
            assert score == pytest.approx(
                _unbatched_loglikelihood(model, tokenizer, item["context"], choice_text), abs=1e-4
            )
            assert score < 0


def test_long_contexts_are_truncated_from_the_left(tokenizer):
    short_model = tiny_llama(tokenizer, max_positions=16)
    item = {"context": SONNETS[0][:300], "choices": ["And summer's lease", "Rough winds"], "label": 0}
    [scores] = choice_loglikelihoods(short_model, tokenizer, [item])
    for choice_text, score in zip(item["choices"], scores, strict=True):
        whole = tokenizer(item["context"] + " " + choice_text)["input_ids"]
        n_continuation = len(whole) - len(tokenizer(item["context"])["input_ids"])
        window = whole[-17:]
        with torch.no_grad():
            logprobs = torch.log_softmax(short_model(torch.tensor([window[:-1]])).logits[0], dim=-1)
        expected = sum(logprobs[t - 1, window[t]].item() for t in range(17 - n_continuation, 17))
        assert score == pytest.approx(expected, abs=1e-4)


def test_acc_norm_divides_by_characters(model, tokenizer, monkeypatch):
    items = [
        {
            "context": "a",
            "choices": ["xx", "yyyyyyyy"],
            "label": 1,
        },  # -4 vs -6: acc wrong, acc_norm -2 vs -0.75 right
        {"context": "b", "choices": ["zz", "w"], "label": 0},  # -1 vs -2: both right
    ]
    monkeypatch.setattr(choice, "choice_loglikelihoods", lambda *args, **kwargs: [[-4.0, -6.0], [-1.0, -2.0]])
    assert score_choices(model, tokenizer, items) == {"acc": 0.5, "acc_norm": 1.0, "n": 2}


def test_trained_model_beats_chance_and_untrained_does_not(model, trained_model, tokenizer):
    items = build_choice_items(
        SONNETS, tokenizer, n_items=24, context_tokens=12, continuation_tokens=6, seed=0
    )
    trained = score_choices(trained_model, tokenizer, items, batch_size=8)
    untrained = score_choices(model, tokenizer, items, batch_size=8)
    # A model that returns no KV cache is scored one request per choice: the same accuracies.
    assert trained == score_choices(WithoutCache(trained_model), tokenizer, items, batch_size=8)
    without_cache = choice_loglikelihoods(WithoutCache(trained_model), tokenizer, items[:4], batch_size=8)
    assert without_cache == per_request(trained_model, tokenizer, items[:4], batch_size=8)
    assert trained["n"] == 24
    assert trained["acc"] >= 0.75 and trained["acc_norm"] >= 0.75  # chance is 0.25
    assert trained["acc"] > untrained["acc"]


def test_bad_items_are_user_errors(model, tokenizer):
    with pytest.raises(UserError, match="item 0"):
        score_choices(model, tokenizer, [{"context": "a", "choices": ["b", "c"], "label": 2}])


class WithoutCache(torch.nn.Module):
    """A causal LM whose forward returns no KV cache: its items are scored one request per choice."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutputWithPast(
            logits=self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        )


def per_request(model, tokenizer, items, batch_size: int = 5) -> list[list[float]]:
    """The per-request scores (context + continuation each time), the reference for the shared contexts."""
    return choice_loglikelihoods(model, tokenizer, items, batch_size=batch_size, share_contexts=False)


class ForwardLog:
    """Input ids of every forward of a model, split by whether it continued from a KV cache."""

    def __init__(self, model) -> None:
        self.fresh: list[torch.Tensor] = []
        self.cached: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # renamed `cache` in transformers 5.24
        (self.cached if cache is not None else self.fresh).append(kwargs["input_ids"])


def tiny_gpt2(tokenizer) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, vocab_size=len(tokenizer), **special)
    return GPT2LMHeadModel(config).eval()


def lora_llama(tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    # init_lora_weights=False draws B at random too: the adapter changes the scores.
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(tiny_llama(tokenizer), config).eval()


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "lora"])
def test_shared_contexts_score_as_one_request_per_choice(architecture, model, tokenizer):
    scorer = {
        "llama": lambda: model,
        "gpt2": lambda: tiny_gpt2(tokenizer),
        "lora": lambda: lora_llama(tokenizer),
    }
    scored = scorer[architecture]()
    items = build_choice_items(
        SONNETS, tokenizer, n_items=8, context_tokens=10, continuation_tokens=5, seed=1
    )
    items.append(dict(items[0], choices=items[0]["choices"][:3]))  # same context, 3 choices: its own group
    contexts = [encode_pair(tokenizer, item["context"], " " + item["choices"][0])[0] for item in items]
    assert len({len(ids) for ids in contexts}) > 1  # several context lengths: several groups
    reference = per_request(scored, tokenizer, items)
    # batch_size 8: two items (8 rows) per forward; 3: one item, 4 choices over two forwards (3 + 1).
    for batch_size in (8, 3):
        log = ForwardLog(scored)
        try:
            shared = choice_loglikelihoods(scored, tokenizer, items, batch_size=batch_size)
        finally:
            log.handle.remove()
        for got, want in zip(shared, reference, strict=True):
            assert got == pytest.approx(want, abs=1e-4)
        # Each context ran once, alone; the continuations ran on its cache, at most batch_size rows at a time.
        assert sorted(row.tolist() for batch in log.fresh for row in batch) == sorted(contexts)
        assert sum(len(batch) for batch in log.cached) == sum(len(item["choices"]) for item in items)
        assert max(len(batch) for batch in log.fresh + log.cached) <= batch_size
    if architecture == "lora":
        assert reference != per_request(model, tokenizer, items)  # the adapter is active


def test_items_that_need_truncation_take_the_per_request_path(tokenizer):
    short_model = tiny_llama(tokenizer, max_positions=16)
    # Context + continuation tokens: 17 and 12 (16 inputs: just fits), 18 (one too many), 60+ (far too many).
    fits = {"context": "Shall", "choices": ["When in disgrace", "compare thee"], "label": 0}
    over = {"context": "Shall", "choices": ["all alone beweep", "compare thee"], "label": 0}
    long = {"context": SONNETS[0][:300], "choices": ["And summer's lease", "Rough winds"], "label": 0}
    totals = [
        sum(map(len, encode_pair(tokenizer, i["context"], " " + c)))
        for i in (fits, over)
        for c in i["choices"]
    ]
    assert totals == [17, 12, 18, 12]
    items = [long, over, fits]
    log = ForwardLog(short_model)
    try:
        scores = choice_loglikelihoods(short_model, tokenizer, items)
    finally:
        log.handle.remove()
    for got, want in zip(scores, per_request(short_model, tokenizer, items), strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    # Only `fits` shared its context (2 continuations on its cache); the others ran 4 requests of 16 inputs.
    assert [batch.shape for batch in log.fresh] == [(1, len(tokenizer("Shall")["input_ids"])), (4, 16)]
    assert [batch.shape[0] for batch in log.cached] == [2]


# ---------------------------------------------------------------- generation

PROMPTS = ["Shall I compare", "When in disgrace with fortune and men's eyes,\nI all", "My mistress' eyes"]


def test_batched_greedy_equals_unbatched(trained_model, tokenizer):
    batched = generate(trained_model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3)
    one_by_one = [
        generate(trained_model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS
    ]
    assert batched == one_by_one
    assert all(len(texts) == 1 and texts[0] for texts in batched)
    # The tokenizer had no pad token and right padding: generate must leave both as they were.
    assert tokenizer.pad_token is None and tokenizer.padding_side == "right"


def test_completion_is_the_new_tokens_only(trained_model, tokenizer):
    [[completion]] = generate(trained_model, tokenizer, ["Shall I compare thee"], max_new_tokens=8)
    prompt_ids = torch.tensor([tokenizer("Shall I compare thee")["input_ids"]])
    output = trained_model.generate(prompt_ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert completion == tokenizer.decode(output[0, prompt_ids.shape[1] :]) != ""


def test_stop_strings_truncate(trained_model, tokenizer):
    [[full]] = generate(trained_model, tokenizer, ["Shall I"], max_new_tokens=20)
    stop = full[6:9]
    [[cut]] = generate(trained_model, tokenizer, ["Shall I"], max_new_tokens=20, stop=[stop, "never seen"])
    assert cut == full[: full.index(stop)]
    assert truncate_at_stop("a;b\nc", ["\n", ";"]) == "a"


def test_sampling_is_reproducible_and_varied(model, tokenizer):
    run = dict(max_new_tokens=6, temperature=1.0, num_samples=5, batch_size=4)
    first = generate(model, tokenizer, PROMPTS[:2], seed=7, **run)
    assert first == generate(model, tokenizer, PROMPTS[:2], seed=7, **run)
    assert first != generate(model, tokenizer, PROMPTS[:2], seed=8, **run)
    assert [len(samples) for samples in first] == [5, 5]
    assert all(len(set(samples)) > 1 for samples in first)
    greedy = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, num_samples=3)
    assert len(greedy[0]) == 3 and len(set(greedy[0])) == 1


def test_greedy_rows_ride_along_with_sampled_ones(trained_model, tokenizer):
    """Greedy prompts decoded in the same batches as sampled ones give exactly greedy decoding's text."""
    greedy_alone = generate(trained_model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=1)
    prompts = PROMPTS + PROMPTS[:2]
    run = dict(max_new_tokens=12, temperature=1.5, num_samples=4, batch_size=5, seed=3)
    mixed = generate(trained_model, tokenizer, prompts, greedy=[True, True, True, False, False], **run)
    assert mixed[:3] == [texts * 4 for texts in greedy_alone]
    assert [len(samples) for samples in mixed[3:]] == [4, 4]
    assert all(len(set(samples)) > 1 for samples in mixed[3:])  # sampled rows still sample
    assert mixed[3][0] != greedy_alone[0][0] or mixed[4][0] != greedy_alone[1][0]
    assert mixed == generate(trained_model, tokenizer, prompts, greedy=[True] * 3 + [False] * 2, **run)
    with pytest.raises(UserError, match="2 greedy flags for 5 prompts"):
        generate(trained_model, tokenizer, prompts, greedy=[True, False], **run)


def test_works_with_a_peft_wrapped_model(model, tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(tokenizer)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    # LoRA's B starts at zero, so the wrapped model scores and generates exactly like the base.
    items = [{"context": "Shall I", "choices": ["compare thee", "curse my fate"], "label": 0}]
    [wrapped_scores] = choice_loglikelihoods(peft_model, tokenizer, items)
    [base_scores] = choice_loglikelihoods(model, tokenizer, items)
    assert wrapped_scores == pytest.approx(base_scores, abs=1e-5)
    assert generate(peft_model, tokenizer, PROMPTS, max_new_tokens=5) == generate(
        model, tokenizer, PROMPTS, max_new_tokens=5
    )


# ---------------------------------------------------------------- diversity


def test_distinct_fraction_normalises_whitespace():
    assert distinct_fraction(["a b", "a  b\n", " a b", "a c"]) == 0.5
    assert distinct_fraction(["x", "y", "z"]) == 1.0
    assert distinct_fraction(["same"] * 4) == 0.25
    with pytest.raises(UserError):
        distinct_fraction([])


def test_diversity_report():
    report = diversity_report([["a", "a", "b", "c"], ["x", "x", "x", "x"]])
    assert report == {
        "distinct_fraction": 0.5,
        "distinct_outputs": 2.0,
        "n_prompts": 2,
        "samples_per_prompt": 4,
    }
    assert math.isclose(diversity_report([["a"], ["b", "c"]])["samples_per_prompt"], 1.5)
    assert (DIVERSITY_SAMPLES, DIVERSITY_TEMPERATURE) == (50, 0.8)
