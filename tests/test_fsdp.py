"""Sharded arms (FSDP2): the sharding module in this process (fast), and a micro study under
`torchrun --nproc_per_node 2 ... --set sharding=fsdp` (gloo on the CPU) against one process (slow)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import yaml

from learnforget.study.store import Store
from tests.conftest import MICRO_STUDY, cli_exit_code, launch_env, loss_metrics

LLAMA = dict(
    vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    intermediate_size=32, max_position_embeddings=32, tie_word_embeddings=True,
)  # fmt: skip


def tiny_llama(lora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    if lora:
        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
        for name, p in model.named_parameters():  # B starts at zero: make ΔW nonzero before training
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    return model


def test_decoder_layers_found_by_structure_in_llama_gpt2_and_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from learnforget.runtime.sharding import decoder_layers

    llama = tiny_llama(lora=False)
    assert decoder_layers(llama) is llama.model.layers
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    assert decoder_layers(gpt2) is gpt2.transformer.h
    wrapped = get_peft_model(tiny_llama(lora=False), LoraConfig(r=2, target_modules=["q_proj"]))
    assert decoder_layers(wrapped) is wrapped.get_base_model().model.layers
    with pytest.raises(ValueError, match="no ModuleList"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_fp16_mixed_under_fsdp_is_a_user_error(micro_config, capsys):
    code = cli_exit_code(
        ["run", str(micro_config), "--set", "sharding=fsdp", "--set", "precision=fp16-mixed"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "use 'bf16-mixed'" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group: FSDP2 shards over it (every collective is real, the shard is whole)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sharded_arm_trains_gathers_checkpoints_and_saves_like_a_plain_one(process_group, lora, tmp_path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers.distributed.fsdp import is_fsdp_managed_module

    from learnforget.arms.delta import merged_weights
    from learnforget.runtime import sharding
    from learnforget.study.checkpoints import checkpoint_state, restore_checkpoint
    from learnforget.study.saving import save_final
    from learnforget.train.loop import make_optimizer, train_steps

    rows = torch.randint(0, LLAMA["vocab_size"], (16, 16), generator=torch.Generator().manual_seed(1))
    plain, sharded = tiny_llama(lora), sharding.shard_model(tiny_llama(lora))
    plain_opt, plain_sched = make_optimizer(plain, 1e-2, 0.1, 1, 4)
    opt, sched = make_optimizer(sharded, 1e-2, 0.1, 1, 4)
    plain_loss = train_steps(plain, plain_opt, plain_sched, rows, 4, 0, 2)
    loss = train_steps(sharded, opt, sched, rows, 4, 0, 2, accelerator=sharding.Collective())
    assert loss == pytest.approx(plain_loss, abs=1e-6)

    gathered = sharding.gather(sharded, opt)
    assert gathered["model"].keys() == plain.state_dict().keys()
    expected = merged_weights(plain)
    merged = merged_weights(sharded, gathered["model"])
    assert merged.keys() == expected.keys()
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)
    if lora:  # ΔW folded in: the merged q_proj is not the base weight
        base = gathered["model"]["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
        assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base)

    # Checkpoint, then resume in a freshly sharded arm: two more steps give the same numbers.
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint_state(sharded, opt, sched, 2, gathered=gathered), path)
    resumed = sharding.shard_model(tiny_llama(lora))
    resumed_opt, resumed_sched = make_optimizer(resumed, 1e-2, 0.1, 1, 4)
    assert restore_checkpoint(path, resumed, resumed_opt, resumed_sched) == 2
    collective = sharding.Collective()
    after = train_steps(sharded, opt, sched, rows, 4, 2, 4, accelerator=collective)
    assert train_steps(resumed, resumed_opt, resumed_sched, rows, 4, 2, 4, accelerator=collective) == after

    if lora:
        return
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), eos_token="[EOS]")
    sharded.config.save_pretrained(tmp_path / "base")  # save_final reads the base's dtype from its config
    save_final(sharded, tokenizer, tmp_path, str(tmp_path / "base"), sharding.full_state_dict(sharded))
    assert type(sharded).__name__ == "FSDPLlamaForCausalLM"  # the class is put back after saving
    assert is_fsdp_managed_module(sharded)  # generate() keeps processes in step (synced_gpus)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.config.architectures == ["LlamaForCausalLM"]
    with torch.no_grad(), sharding.evaluating(sharded):
        assert torch.allclose(loaded(rows).logits, sharded(rows).logits, atol=1e-5)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sharded_model_scores_choices_from_shared_contexts_like_a_plain_one(process_group, lora):
    """Choice scoring runs each context once and its continuations on the KV cache: under FSDP2 too."""
    import copy

    from learnforget.evaluate.choice import build_choice_items, choice_loglikelihoods
    from learnforget.runtime import sharding
    from tests.test_choice_generate import SONNETS, lora_llama, make_tokenizer
    from tests.test_choice_generate import tiny_llama as sonnet_llama

    tokenizer = make_tokenizer()
    plain = lora_llama(tokenizer) if lora else sonnet_llama(tokenizer)
    items = build_choice_items(SONNETS, tokenizer, n_items=4, context_tokens=10, continuation_tokens=5)
    expected = choice_loglikelihoods(plain, tokenizer, items, batch_size=8)
    sharded = sharding.shard_model(copy.deepcopy(plain))
    with sharding.evaluating(sharded):
        with (
            torch.no_grad()
        ):  # FSDP's lazy init must not run under inference mode; in a study, training did it
            sharded(input_ids=torch.tensor([[1, 2]]))
        scores = choice_loglikelihoods(sharded, tokenizer, items, batch_size=8)
    for got, want in zip(scores, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


class Stack(torch.nn.Module):
    """Two repeated blocks and a head: the smallest model with decoder layers to shard."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def _clipping_worker(rank: int, init_file: str) -> None:
    import copy

    from learnforget.runtime import sharding

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        plain = Stack()
        sharded = sharding.shard_model(copy.deepcopy(plain))
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        (10 * plain(x).square().sum()).backward()
        (10 * sharded(x).square().sum()).backward()  # same rows on both: the averaged gradient is the same
        expected = torch.nn.utils.clip_grad_norm_(list(plain.parameters()), 1.0)
        collective = sharding.Collective()
        norm = collective.clip_grad_norm_(list(sharded.parameters()), 1.0)
        assert expected > 2  # clipping is active
        assert torch.allclose(norm.full_tensor(), expected, rtol=1e-5)  # the norm of the whole gradient
        for p, q in zip(sharded.parameters(), plain.parameters(), strict=True):
            assert p.grad.to_local().numel() < q.numel()  # really sharded
            assert torch.allclose(p.grad.full_tensor(), q.grad, atol=1e-6)
        assert collective.reduce(torch.tensor(float(rank))).item() == 0.5
        dist.barrier()  # both ranks done with gloo before either tears it down (else a rare SIGABRT at exit)
    finally:
        dist.destroy_process_group()


def test_gradient_clipping_sees_the_whole_gradient_across_two_shards(tmp_path):
    """Two processes (gloo): clipping a sharded model's DTensor gradients uses the norm of the full gradient."""
    import torch.multiprocessing as mp

    mp.spawn(_clipping_worker, args=(str(tmp_path / "init"),), nprocs=2)


def test_a_short_batch_split_unevenly_over_two_shards_trains_with_micro_batches(tmp_path):
    """Two processes (gloo): an epoch of 11 rows at batch 4 ends with 3 rows, 2 on one process and 1 on
    the other; with micro-batches of 1 both still run the same passes (their collectives meet) and the
    loss is the mean of the processes' losses."""
    import torch.multiprocessing as mp

    mp.spawn(_short_batch_worker, args=(str(tmp_path / "init"),), nprocs=2)


def _short_batch_worker(rank: int, init_file: str) -> None:
    from learnforget.runtime import sharding
    from learnforget.train.loop import make_optimizer, train_steps

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = torch.randint(0, LLAMA["vocab_size"], (22, 16), generator=torch.Generator().manual_seed(1))
        plain = tiny_llama(False)
        with torch.no_grad():
            short = rows[8:11]
            expected = sum(float(plain(input_ids=short[r::2], labels=short[r::2]).loss) for r in (0, 1)) / 2
        sharded = sharding.shard_model(tiny_llama(False))
        opt, sched = make_optimizer(sharded, 1e-2, 0.1, 0, 6)
        collective = sharding.Collective()
        loss = train_steps(sharded, opt, sched, rows, 4, 2, 3, accelerator=collective, micro_batch_size=1,
                           epoch_rows=11)  # fmt: skip
        assert loss == pytest.approx(expected, abs=1e-5)
        after = train_steps(sharded, opt, sched, rows, 4, 3, 6, accelerator=collective, micro_batch_size=1,
                            epoch_rows=11)  # fmt: skip
        assert after < loss  # the next epoch, short batch included, trains on
        dist.barrier()  # both ranks done with gloo before either tears it down (else a rare SIGABRT at exit)
    finally:
        dist.destroy_process_group()


def _word_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"[EOS]": 0, "[UNK]": 1}, unk_token="[UNK]"))


# ---------------------------------------------------------------------------------------------------
# A micro study in 1 process and in 2 FSDP processes (torchrun, gloo)

FSDP_STUDY = dict(
    MICRO_STUDY,
    eval={"loss_tokens": 1024, "choice_items": 4, "generation_problems": 2, "reference_problems": 2,
          "diversity_prompts": 1, "diversity_samples": 2, "max_new_tokens": 8},
)  # fmt: skip
FULL, LORA = "full-lr1e-3-s0", "lora-r2-all-lr1e-2-s0"


def torchrun(config, out) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "learnforget", "run", str(config), "--set", "sharding=fsdp", "--out", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The micro study (one full arm, one LoRA arm, a local lm-eval task) run in one process and sharded
    over two."""
    from tests.test_harness import DOCS, TASK_YAML

    root = tmp_path_factory.mktemp("fsdp")
    tasks = root / "tasks"
    tasks.mkdir()
    (root / "tiny_mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tasks / "tiny_mc.yaml").write_text(
        TASK_YAML.format(data=root / "tiny_mc.jsonl", cache=root / "datasets")
    )
    study = dict(
        FSDP_STUDY, eval=dict(FSDP_STUDY["eval"], harness_tasks=["tiny_mc"], harness_include_path=str(tasks))
    )
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    (root / "no-harness.yaml").write_text(yaml.safe_dump(FSDP_STUDY))
    env = launch_env(root)
    single = [sys.executable, "-m", "learnforget", "run", str(config), "--out", str(root / "one")]
    subprocess.run(single, env=env, check=True, capture_output=True, timeout=600)
    done = subprocess.run(
        torchrun(config, root / "two"), env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, config, env


def query(study_dir, sql: str) -> list[tuple]:
    with sqlite3.connect(study_dir / "results.db") as conn:
        return sorted(conn.execute(sql))


@pytest.mark.slow
def test_fsdp_study_matches_single_process(studies):
    root = studies[0]
    one, two = loss_metrics(root / "one"), loss_metrics(root / "two")
    assert query(root / "two", "SELECT value FROM study WHERE key = 'processes'") == [("2",)]
    assert one.keys() == two.keys()
    assert {m for _, _, m in one} == {"code/loss", "english/loss", "code/ref_nll"}
    assert {(a, t) for a, t, _ in one if a != "base"} == {
        (a, t) for a in (FULL, LORA) for t in (2048, 4096, 6144)
    }
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-4), key
    assert one[(FULL, 6144, "code/loss")] < one[("base", 0, "code/loss")] - 0.05  # the arm really trained
    # Generation, sampling, sandbox scoring and lm-eval ran on the sharded model: same metrics as one process.
    others = "SELECT arm, tokens, metric, value FROM metrics WHERE metric NOT LIKE '%loss' AND metric NOT LIKE '%nll'"
    expected = query(root / "one", others)
    assert {m for _, _, m, _ in expected} >= {"code/pass@1", "code/sampled_pass@1", "code/distinct_fraction",
                                               "english/mc_acc", "harness/tiny_mc/acc", "spectrum/rank_delta_fraction"}  # fmt: skip
    assert query(root / "two", others) == expected
    spectra = "SELECT arm, tokens, COUNT(*) FROM matrices GROUP BY arm, tokens"
    assert query(root / "two", spectra) == query(root / "one", spectra)
    assert {(a, t) for a, t, n in query(root / "two", spectra) if n > 0} == {
        (a, t) for a in (FULL, LORA) for t in (2048, 4096, 6144)
    }
    assert query(root / "two", "SELECT name, status FROM arms") == [
        ("base", "done"),
        (FULL, "done"),
        (LORA, "done"),
    ]


@pytest.mark.slow
def test_fsdp_saved_arms_load_in_plain_transformers(studies):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from learnforget.evaluate.likelihood import mean_token_loss

    root = studies[0]
    rows = torch.load(root / "two" / "data.pt", weights_only=False)["eval"]["loss"]["code"]
    (recorded,) = query(
        root / "two",
        f"SELECT value FROM metrics WHERE arm = '{FULL}' AND tokens = 6144 AND metric = 'code/loss'",
    )
    models = {}
    for run in ("one", "two"):
        full = AutoModelForCausalLM.from_pretrained(root / run / "arms" / FULL / "model")
        base_path = json.loads(query(root / run, "SELECT value FROM study WHERE key = 'base_path'")[0][0])
        base = AutoModelForCausalLM.from_pretrained(base_path)
        models[run] = (
            full.eval(),
            PeftModel.from_pretrained(base, root / run / "arms" / LORA / "adapter").eval(),
        )
    assert models["two"][0].config.architectures == ["LlamaForCausalLM"]
    with torch.no_grad():
        for one, two in zip(models["one"], models["two"], strict=True):
            # One process trains with the chunked LM head + loss (fused_loss.py), two sharded processes with
            # transformers' loss: the same sums in another order, so the trained weights differ by rounding.
            assert torch.allclose(two(rows[:4]).logits, one(rows[:4]).logits, atol=1e-4)
    assert mean_token_loss(models["two"][0], rows, 32) == recorded[0]  # exactly what the study recorded


@pytest.mark.slow
def test_killed_fsdp_study_resumes_with_the_same_numbers(studies):
    """Killed (every process) once the full arm's first checkpoint is written; the rerun resumes from it.
    (Without the lm-eval task, for time: it does not touch training.)"""
    root, _, env = studies
    config = root / "no-harness.yaml"
    out = root / "resumed"
    checkpoint = out / "arms" / FULL / "checkpoint.pt"
    process = subprocess.Popen(
        torchrun(config, out),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, "run ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert {row["tokens"] for row in Store(out).metrics(FULL)} == {2048}  # the parts, merged on read
    assert torch.load(checkpoint, weights_only=False)["sharded"]
    done = subprocess.run(torchrun(config, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    everything = "SELECT arm, tokens, metric, value FROM metrics WHERE metric NOT LIKE 'harness/%'"
    assert query(out, everything) == query(root / "two", everything)


@pytest.mark.slow
def test_fsdp_study_with_compiled_layers_matches_single_process(studies):
    """`compile: true` on sharded arms: layers compiled after `fully_shard` train to the eager
    single-process numbers within float rounding. (Without the lm-eval task, for time.)"""
    root, _, env = studies
    out = root / "compiled"
    command = torchrun(root / "no-harness.yaml", out) + ["--set", "compile=true"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, compiled = loss_metrics(root / "one"), loss_metrics(out)
    assert compiled.keys() == one.keys()
    for key in one:
        assert compiled[key] == pytest.approx(one[key], abs=1e-4), key
