"""ΔW spectrum analysis on tiny matrices and tiny Llama checkpoints (HF dirs, sharded, .bin, LoRA adapters)."""

import json

import numpy as np
import pytest
import torch
from rich.console import Console

from learnforget.analyse.spectrum import (
    compare_checkpoints,
    count_intruders,
    lora_singular_values,
    rank_for_variance,
    rank_random,
    spectrum_of_state_dicts,
)
from learnforget.analyse.spectrum_plots import plot_spectrum, run_spectrum, spectrum_table
from learnforget.arms.delta import LowRankDelta, adapter_updates
from learnforget.errors import UserError

torch.set_num_threads(1)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def numpy_rank(matrix: np.ndarray, variance: float) -> int:
    """The paper's statistic, computed independently with numpy."""
    s = np.linalg.svd(matrix, compute_uv=False)
    energy = np.cumsum(s**2)
    return int(np.argmax(energy >= variance * energy[-1])) + 1


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=128
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tiny_llama().save_pretrained(path)
    return path


def test_rank_for_variance_counts_components():
    assert rank_for_variance([3.0, 2.0, 1.0], 0.9) == 2  # 9 + 4 = 13 ≥ 0.9 · 14 = 12.6 > 9
    assert rank_for_variance(torch.tensor([1.0, 3.0, 2.0]), 0.5) == 1  # order does not matter
    assert rank_for_variance([3.0, 2.0, 1.0], 1.0) == 3
    assert rank_for_variance(np.zeros(5), 0.9) == 0


@pytest.mark.parametrize("noise", [0.0, 1e-2])
@pytest.mark.parametrize("shape, rank", [((48, 40), 5), ((30, 72), 3)])
def test_known_rank_delta_matches_numpy(shape, rank, noise):
    gen = np.random.default_rng(rank)
    w_base = gen.normal(size=shape)
    delta = gen.normal(size=(shape[0], rank)) @ gen.normal(size=(rank, shape[1])) + noise * gen.normal(
        size=shape
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    base_sd, tuned_sd = {name: torch.tensor(w_base)}, {name: torch.tensor(w_base + delta)}
    for variance in (0.5, 0.9, 0.99):
        m = spectrum_of_state_dicts(base_sd, tuned_sd, variance=variance)["matrices"][0]
        assert m["rank_delta"] == numpy_rank(delta, variance)
        assert m["rank_base"] == numpy_rank(w_base, variance)
    assert m["shape"] == list(shape)
    assert m["delta_fro"] == pytest.approx(np.linalg.norm(delta), rel=1e-9)
    assert m["relative_delta"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(w_base), rel=1e-9)
    assert m["top_singular_values"] == pytest.approx(np.linalg.svd(delta, compute_uv=False)[:16], rel=1e-8)
    if noise == 0.0:  # exactly rank r: r components explain everything, r − 1 do not
        exact = spectrum_of_state_dicts(base_sd, tuned_sd, variance=0.999999)["matrices"][0]
        assert exact["rank_delta"] == rank


def test_factored_lora_singular_values_match_dense():
    gen = torch.Generator().manual_seed(1)
    delta = LowRankDelta(torch.randn(96, 8, generator=gen), torch.randn(8, 80, generator=gen), scale=0.25)
    factored = lora_singular_values(delta)
    dense = torch.linalg.svdvals(delta.dense(torch.float64))[:8]
    assert factored.shape == (8,)
    torch.testing.assert_close(factored, dense, rtol=1e-4, atol=0)


def test_intruder_dimension_appears_only_for_a_new_direction():
    gen = np.random.default_rng(0)
    w_base = gen.normal(size=(64, 64))
    u_base = torch.tensor(np.linalg.svd(w_base)[0])
    x = gen.normal(size=64)
    x /= np.linalg.norm(x)
    expected = int(np.abs(np.linalg.svd(w_base)[0].T @ x).max() < 0.5)  # a random direction: |cos| ≈ 0.3
    w_intruded = w_base + 100 * np.outer(x, gen.normal(size=64))  # dominates the top singular vector
    u_tuned = torch.tensor(np.linalg.svd(w_intruded)[0][:, :10])
    assert expected == 1
    assert count_intruders(u_tuned, u_base, 0.5) == 1
    name = "model.layers.0.mlp.up_proj.weight"
    base_sd = {name: torch.tensor(w_base)}
    small = spectrum_of_state_dicts(base_sd, {name: torch.tensor(w_base + 1e-4 * gen.normal(size=(64, 64)))})
    big = spectrum_of_state_dicts(base_sd, {name: torch.tensor(w_intruded)})
    assert small["matrices"][0]["intruders"] == 0
    assert big["matrices"][0]["intruders"] == 1


def test_rank_random_is_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    value = rank_random((64, 64), 0.9, seed=3, cache_dir=tmp_path)
    assert 0.4 * 64 < value < 0.6 * 64  # ≈ 0.51 n for a square Gaussian matrix
    assert (tmp_path / "gaussian_64x64_seed3.npy").is_file()
    import learnforget.analyse.spectrum as spectrum

    spectrum._RANDOM_SPECTRA.clear()
    monkeypatch.setattr(torch.linalg, "svdvals", lambda *a, **k: pytest.fail("recomputed a cached spectrum"))
    assert rank_random((64, 64), 0.9, seed=3, cache_dir=tmp_path) == value  # from disk
    assert rank_random((64, 64), 0.9, seed=3) == value  # from memory


@pytest.mark.parametrize(
    "lora_kwargs",
    [
        dict(r=4, lora_alpha=8),
        dict(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 3}),
    ],
)
def test_adapter_and_merged_model_agree(base_dir, tmp_path, lora_kwargs):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()  # the same weights as base_dir
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    config = LoraConfig(target_modules=ALL_LINEAR[:3] + ["down_proj"], init_lora_weights=False, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    in_memory = spectrum_of_state_dicts(base_sd, updates=adapter_updates(peft_model))  # peft's own modules
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")

    from_adapter = compare_checkpoints(str(base_dir), str(tmp_path / "adapter"), progress=False)
    from_merged = compare_checkpoints(str(base_dir), str(tmp_path / "merged"), progress=False)
    assert from_adapter["adapter"]["r"] == 4
    assert [m["name"] for m in from_adapter["matrices"]] == [m["name"] for m in from_merged["matrices"]]
    assert [m["name"] for m in in_memory["matrices"]] == [m["name"] for m in from_merged["matrices"]]
    assert len(from_merged["matrices"]) == 14  # 7 linear layers × 2, no embeddings, no norms
    for a, b, c in zip(from_adapter["matrices"], from_merged["matrices"], in_memory["matrices"], strict=True):
        assert a["rank_delta"] == b["rank_delta"] == c["rank_delta"], a["name"]
        assert a["delta_fro"] == pytest.approx(b["delta_fro"], rel=1e-4, abs=1e-9)
        assert a["delta_fro"] == pytest.approx(c["delta_fro"], rel=1e-12, abs=1e-12)
        assert a["top_singular_values"] == pytest.approx(b["top_singular_values"], rel=1e-4, abs=1e-6)
        assert (a["rank_base"], a["intruders"]) == (b["rank_base"], b["intruders"])
    by_name = {m["name"]: m for m in from_adapter["matrices"]}
    assert by_name["model.layers.0.self_attn.o_proj.weight"]["delta_fro"] == 0.0  # not a target module
    assert 0 < by_name["model.layers.1.self_attn.q_proj.weight"]["rank_delta"] <= 4
    assert (
        0
        < by_name["model.layers.1.mlp.down_proj.weight"]["rank_delta"]
        <= lora_kwargs.get("rank_pattern", {}).get("down_proj", 4)
    )


def test_adapter_on_embeddings_and_modules_to_save(base_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"],
        init_lora_weights=False,
    )  # fmt: skip
    peft_model = get_peft_model(tiny_llama(), config)
    with torch.no_grad():  # a trained lm_head copy
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    kwargs = dict(include_embeddings=True, progress=False)
    from_adapter = compare_checkpoints(str(base_dir), str(tmp_path / "adapter"), **kwargs)
    from_merged = {
        m["name"]: m
        for m in compare_checkpoints(str(base_dir), str(tmp_path / "merged"), **kwargs)["matrices"]
    }
    assert len(from_adapter["matrices"]) == len(from_merged) == 16
    for a in from_adapter["matrices"]:
        b = from_merged[a["name"]]
        assert (a["rank_delta"], a["intruders"]) == (b["rank_delta"], b["intruders"]), a["name"]
        assert a["delta_fro"] == pytest.approx(b["delta_fro"], rel=1e-4, abs=1e-9)
    embed = next(m for m in from_adapter["matrices"] if m["name"] == "model.embed_tokens.weight")
    head = next(m for m in from_adapter["matrices"] if m["name"] == "lm_head.weight")
    assert 0 < embed["rank_delta"] <= 4
    assert head["relative_delta"] == pytest.approx(0.5, rel=1e-6)  # ΔW = 0.5 W: rank_delta == rank_base
    assert head["rank_delta"] == head["rank_base"]


def perturbed_state_dict(model, rank: int = 3) -> tuple[dict, dict]:
    """A 'full finetune': q_proj gets a rank-`rank` update, every other linear weight dense noise."""
    gen = torch.Generator().manual_seed(7)
    tuned, deltas = {}, {}
    for name, weight in model.state_dict().items():
        if weight.ndim == 2 and "q_proj" in name:
            delta = torch.randn(weight.shape[0], rank, generator=gen) @ torch.randn(
                rank, weight.shape[1], generator=gen
            )
        else:
            delta = 0.01 * torch.randn(weight.shape, generator=gen)
        tuned[name] = weight + 0.05 * delta
        deltas[name] = (tuned[name] - weight).double().numpy()
    return tuned, deltas


def test_hf_dirs_sharded_and_bin_checkpoints(base_dir, tmp_path):
    base = tiny_llama()
    tuned_sd, deltas = perturbed_state_dict(base)
    tuned = tiny_llama()
    tuned.load_state_dict(tuned_sd)
    tuned.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    torch.save(tuned.state_dict(), tmp_path / "bin" / "pytorch_model.bin")

    result = compare_checkpoints(str(base_dir), str(tmp_path / "sharded"), progress=False)
    from_bin = compare_checkpoints(str(base_dir), str(tmp_path / "bin"), progress=False)
    in_memory = spectrum_of_state_dicts(base.state_dict(), tuned.state_dict())
    assert len(result["matrices"]) == 14
    assert [m["name"] for m in in_memory["matrices"]] == [m["name"] for m in result["matrices"]]
    assert result["matrices"][0]["name"] == "model.layers.0.self_attn.q_proj.weight"  # layer, then q..down
    assert json.loads(json.dumps(result)) == result  # JSON-ready as it is
    for m, b, c in zip(result["matrices"], from_bin["matrices"], in_memory["matrices"], strict=True):
        assert m["rank_delta"] == numpy_rank(deltas[m["name"]], 0.9), m["name"]
        assert m["rank_delta"] == b["rank_delta"] == c["rank_delta"]
        assert m["delta_fro"] == pytest.approx(np.linalg.norm(deltas[m["name"]]), rel=1e-4)
        assert m["rank_random"] == rank_random(tuple(m["shape"]), 0.9)
    q = [m for m in result["matrices"] if "q_proj" in m["name"]]
    assert all(m["rank_delta"] <= 3 for m in q)
    summary = result["summary"]
    assert list(summary["by_module"]) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert summary["by_module"]["q"]["median_rank_delta"] <= 3
    assert summary["by_module"]["gate"]["median_rank_delta_fraction"] > 0.3  # dense noise is high rank
    assert summary["overall"]["matrices"] == 14

    with_embeddings = compare_checkpoints(
        str(base_dir), str(tmp_path / "sharded"), include_embeddings=True, progress=False
    )
    names = {m["name"] for m in with_embeddings["matrices"]}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= names
    assert "model.embed_tokens.weight" not in {m["name"] for m in result["matrices"]}


def test_run_spectrum_writes_json_plot_and_table(base_dir, tmp_path):
    tuned = tiny_llama()
    tuned.load_state_dict(perturbed_state_dict(tuned)[0])
    tuned.save_pretrained(tmp_path / "tuned")
    console = Console(record=True, width=160)
    result = run_spectrum(
        str(base_dir), str(tmp_path / "tuned"), json_path=tmp_path / "out" / "s.json",
        plot_path=tmp_path / "out" / "s.png", console=console,
    )  # fmt: skip
    saved = json.loads((tmp_path / "out" / "s.json").read_text())
    assert saved["matrices"] == result["matrices"] and saved["variance"] == 0.9
    assert (tmp_path / "out" / "s.png").read_bytes()[:4] == b"\x89PNG"
    text = console.export_text()
    assert "gate" in text and "median ΔW" in text
    plot_spectrum(saved, tmp_path / "again.png", matrices=["model.layers.1.mlp.down_proj.weight"])
    assert (tmp_path / "again.png").stat().st_size > 1000
    assert spectrum_table(saved).row_count == 2 + 4  # two layers, four footer rows


def test_user_errors(base_dir, tmp_path, monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kwargs):
        assert kwargs["allow_patterns"] == ["*.safetensors", "*.json"]
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="some-org/some-model"):
        compare_checkpoints("some-org/some-model", str(base_dir), progress=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(base_dir))
    same = compare_checkpoints(
        "some-org/base", str(base_dir), progress=False
    )  # a hub id resolved to a snapshot
    assert all(m["rank_delta"] == 0 and m["intruders"] == 0 for m in same["matrices"])
    with pytest.raises(UserError, match="does not exist"):
        compare_checkpoints(str(base_dir), "./no/such/dir", progress=False)
    with pytest.raises(UserError, match="variance"):
        compare_checkpoints(str(base_dir), str(base_dir), variance=90, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no weights"):
        compare_checkpoints(str(base_dir), str(tmp_path / "empty"), progress=False)

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, vocab_size=128))  # fmt: skip
    get_peft_model(
        other, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    ).save_pretrained(tmp_path / "wrong_adapter")
    with pytest.raises(UserError, match="shape"):
        compare_checkpoints(str(base_dir), str(tmp_path / "wrong_adapter"), progress=False)


# ---- the milestone path: cached base factors, factored LoRA, progress ------------------------------------


def test_cached_base_factors_give_the_same_spectra_and_are_reused(tmp_path, monkeypatch):
    from learnforget.analyse import spectrum_cache

    base_sd = tiny_llama().state_dict()
    tuned_sd = perturbed_state_dict(tiny_llama())[0]
    computed = []
    factorise = spectrum_cache.factorise
    monkeypatch.setattr(spectrum_cache, "factorise", lambda *a: computed.append(a[0].shape) or factorise(*a))

    fresh = spectrum_of_state_dicts(base_sd, tuned_sd)  # no cache_dir: factorised every call
    assert len(computed) == 14
    cold = spectrum_of_state_dicts(base_sd, tuned_sd, cache_dir=tmp_path)
    assert len(computed) == 28 and len(list((tmp_path / "base_factors").glob("*.safetensors"))) == 14
    warm = spectrum_of_state_dicts(base_sd, tuned_sd, cache_dir=tmp_path)
    assert len(computed) == 28  # every base factor read from disk, in this process or any other
    assert fresh["matrices"] == cold["matrices"] == warm["matrices"]
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically

    other_base = dict(base_sd)
    name = "model.layers.1.mlp.up_proj.weight"
    other_base[name] = base_sd[name] + 1e-3
    changed = spectrum_of_state_dicts(other_base, tuned_sd, cache_dir=tmp_path)
    assert computed[28:] == [base_sd[name].shape]  # only the matrix whose weights differ is factorised again
    by_name = {m["name"]: m for m in changed["matrices"]}
    assert by_name[name]["delta_fro"] != {m["name"]: m for m in warm["matrices"]}[name]["delta_fro"]
    other_base[name].mul_(2)  # changed in place: the same tensor object, other weights
    spectrum_of_state_dicts(other_base, tuned_sd, cache_dir=tmp_path)
    assert len(computed) == 30


def test_save_atomic_keeps_the_first_writer(tmp_path):
    from learnforget.analyse.spectrum_cache import save_atomic

    path = tmp_path / "deep" / "file.bin"
    save_atomic(lambda p: p.write_bytes(b"first"), path)
    save_atomic(lambda p: p.write_bytes(b"second"), path)  # a racing worker, which computed the same
    assert path.read_bytes() == b"first" and [p.name for p in path.parent.iterdir()] == ["file.bin"]
    save_atomic(lambda p: p.write_bytes(b"x"), path / "below a file")  # unwritable: a cache keeps nothing
    assert path.read_bytes() == b"first"


@pytest.mark.parametrize("r", [1, 4])
def test_lora_milestone_spectra_are_factored_and_match_the_dense_path(tmp_path, r):
    from peft import LoraConfig, get_peft_model

    from learnforget.analyse.spectrum import spectrum_of_model
    from learnforget.arms.delta import merged_weights

    base_sd = {k: v.clone() for k, v in tiny_llama().state_dict().items()}
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]  # the paper's "All"
    model = get_peft_model(tiny_llama(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    gen = torch.Generator().manual_seed(3)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # as after training: B ≠ 0, so ΔW ≠ 0
            parameter.data = 0.3 * torch.randn(parameter.shape, generator=gen)
    calls = []
    done = lambda *a: calls.append(a)  # noqa: E731
    factored = spectrum_of_model(
        base_sd, model, lambda: pytest.fail("merged a LoRA"), progress=done, cache_dir=tmp_path
    )
    dense = spectrum_of_state_dicts(base_sd, merged_weights(model))  # the old milestone path
    assert [c[:2] for c in calls] == [(i, 14) for i in range(15)]  # (done, total) before each and at the end
    assert len(factored["matrices"]) == len(dense["matrices"]) == 14
    for a, b in zip(factored["matrices"], dense["matrices"], strict=True):
        assert a["name"] == b["name"]
        assert (a["rank_delta"], a["rank_base"], a["rank_random"], a["intruders"]) == (
            b["rank_delta"], b["rank_base"], b["rank_random"], b["intruders"],
        ), a["name"]  # fmt: skip
        assert a["delta_fro"] == pytest.approx(b["delta_fro"], rel=1e-5, abs=1e-9)
        assert a["top_singular_values"] == pytest.approx(b["top_singular_values"], rel=1e-4, abs=1e-6)
    assert sum(m["intruders"] for m in factored["matrices"]) > 0  # the comparison covers intruders
    gate = next(m for m in factored["matrices"] if "gate_proj" in m["name"])
    assert gate["delta_fro"] == 0 and gate["intruders"] == 0  # not a target: unchanged

    full = tiny_llama(seed=1)  # a plain model (full finetuning): its merged weights, densely
    result = spectrum_of_model(base_sd, full, lambda: full.state_dict(), cache_dir=tmp_path)
    assert all(m["delta_fro"] > 0 for m in result["matrices"])
