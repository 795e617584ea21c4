"""Peak training memory of one arm on one device, from the model's shape and the study's settings.

The estimate is the sum of what lives at the start of the backward pass of a micro-batch (every saved
activation, the logits and their gradients) and what lives all the time (weights, gradients, optimizer
states). Gradients are counted in full although they appear while activations are freed: with gradient
accumulation (micro_batch_size < batch_size) the first micro-batch's gradients do live through the next
ones, so the sum is what a planner needs. Added to it is what the arm's process holds besides training
(`held`: the base weights kept for ΔW spectra, LoRA's merged evaluation copy and, on a CPU, the runtime
itself), since the study records the process's peak. Evaluation's own forward passes hold at most
3 × `likelihood.LOGITS_BYTES` beyond the model (logits, their copy and log-softmax) and are not added:
below training's activations for batches of a few thousand tokens on a 100M-parameter model.
It is checked against measured peaks by `bench/bench_memory.py` (tiny Llamas, training only; and
SmolLM2-135M through the study's own arm path, where it is available).

Assumptions about training (`learnforget/train/loop.py`), by precision (STORAGE_BYTES):
- 'fp32': everything in float32.
- 'bf16-mixed' / 'fp16-mixed': every weight, frozen or not, is stored in float32 (the model is loaded in
  float32 and the forward pass runs under autocast), gradients and optimizer states in float32. LoRA's
  frozen base is therefore counted at 4 bytes per parameter too (training that stores it in 16 bits
  under *-mixed needs 2 here); 'bf16' gives a 2-byte frozen base. Autocast's 16-bit copies of the
  matmul weights (≈ 2 bytes per parameter) are counted with the activations: they are transient.
- 'bf16': weights, gradients and optimizer states in bfloat16, except LoRA adapters, which peft keeps
  in float32 (with their gradients and optimizer states).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from learnforget.train.fused_loss import CHUNK_TOKENS

STORAGE_BYTES = {"fp32": 4, "bf16-mixed": 4, "fp16-mixed": 4, "bf16": 2}
"""Bytes per stored weight, gradient and optimizer state."""

OPTIMIZER_STATES = {"adamw": 2, "lion": 1}
"""Optimizer states per trainable parameter: AdamW's two moments, Lion's one momentum."""

LAYER_BYTES_PER_TOKEN = {"fp32": (44, 16), "mixed": (36, 8), "bf16": (26, 8)}
"""(bytes × hidden, bytes × intermediate) of activations one Llama decoder layer saves for backward per
token, counted from what autograd keeps. Each of the two RMSNorms: its float32 input, its float32
normalised value, and its output as the next matmul's input (16-bit under autocast). Attention (sdpa):
q, k, v, its output and the output's contiguous copy (o_proj's input): 5h. SwiGLU MLP: gate, up,
silu(gate) and their product: 4I.
- fp32: norms 2 × 3h × 4, attention 5h × 4, MLP 4I × 4 → 44h + 16I.
- mixed: norms 2 × 2h × 4, and autocast's bf16 cast of their output once per matmul reading it
  (q, k, v; gate, up): 5h × 2; attention 5h × 2, MLP 4I × 2 → 36h + 8I.
- bf16: norms 2 × (h × 4 for the float32 upcast + 2h × 2), attention 5h × 2, MLP 4I × 2 → 26h + 8I."""

LOGITS_BYTES_PER_TOKEN = {"fp32": 16, "mixed": 14, "bf16": 14}
"""Bytes per token and vocabulary entry at the loss: the logits (held by the model's output), their
float32 log-softmax (saved by cross-entropy) and, in backward, the gradients of both (float32). 16-bit
logits: 2 + 4 + 4 + 4."""

LORA_INPUT_BYTES = {"fp32": 0, "mixed": 2, "bf16": 4}
"""Extra bytes per element of an adapted linear's input, per adapter: peft casts the input to the
adapter's dtype (float32: peft keeps adapters in float32 on a bf16 model) and autocast casts it for
the adapter's matmul, a copy per adapter that lora_A saves. None in fp32 (lora_A saves the input itself)."""

LINEAR_INPUT = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "h", "gate_proj": "h", "up_proj": "h",
                "down_proj": "i"}  # fmt: skip
"""Width of each Llama linear layer's input: hidden or intermediate."""

PROCESS_BYTES = 400 * 2**20
"""Resident set of an arm's process before its model is built (CPU only: a GPU's peak counts device
memory): Python with torch, transformers, peft and learnforget imported, its tokenizer and data.pt;
measured 395-465 MiB (torch 2.x, transformers 4.5x/5.x, Linux)."""

CPU_HEAP_SLACK = 0.3
"""Share of the activations glibc's heap keeps resident beyond the live peak on a CPU: freed activation
blocks (under its mmap threshold, which rises to 32 MiB after the first large free) stay in the heap,
fragmented by the small tensors saved between them. Measured on SmolLM2-135M, 4 × 256 tokens, training
alone: 0.25 of the activations for full finetuning, 0.55 for LoRA (whose rank-wide saved tensors
fragment more); 0.3 here, as full finetuning's gradients are already counted in full although they
partly take the place of freed activations."""

EAGER_SCORE_BYTES = {"fp32": 4, "mixed": 6, "bf16": 6}
"""Bytes per attention score saved by eager attention (heads × seq_len per token): the float32 softmax,
plus its 16-bit cast for the value matmul when computing in 16 bits. sdpa / flash kernels keep none."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes per device of one arm's training, by term."""

    weights: int
    """Stored weights (sharded under FSDP) plus, under FSDP, the all-gathered layers being computed."""
    gradients: int
    """Gradients of the trainable parameters, in their dtype (sharded under FSDP)."""
    optimizer: int
    """Optimizer states of the trainable parameters, in their dtype (sharded under FSDP)."""
    activations: int
    """Saved activations of one micro-batch, the logits and their gradients, and autocast copies."""
    held: int = 0
    """Held by the arm's process besides training: see `held_bytes`."""

    @property
    def training(self) -> int:
        """What training itself needs: weights, gradients, optimizer states and activations."""
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def total(self) -> int:
        return self.training + self.held

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _compute_kind(precision: str) -> str:
    return "mixed" if precision.endswith("-mixed") else precision


def activation_bytes(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    vocab: int,
    tokens: int,
    seq_len: int,
    precision: str,
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    adapted: Sequence[str] = (),
    fused_loss: bool = False,
) -> int:
    """Bytes of activations one micro-batch of `tokens` tokens keeps for backward, logits included.

    Without checkpointing every layer keeps LAYER_BYTES_PER_TOKEN (plus eager attention's scores); with
    it, each layer keeps only its input (the residual stream: float32 unless 'bf16') and one layer at a
    time is recomputed in full. The final norm keeps one norm's share; the loss LOGITS_BYTES_PER_TOKEN.
    `adapted`: the LoRA-adapted linear layers (q_proj, ...), each adding LORA_INPUT_BYTES per input
    element (under autocast only for inputs that are not already bf16: o_proj's and down_proj's are).
    `fused_loss` (fused_loss.py): no logits for every token; instead the gradient of the last hidden state,
    the head's weight gradient and one chunk's logits (twice: they and a temporary).
    """
    kind = _compute_kind(precision)
    per_h, per_i = LAYER_BYTES_PER_TOKEN[kind]
    layer = per_h * hidden + per_i * intermediate
    for name in adapted:
        if kind != "mixed" or name not in ("o_proj", "down_proj"):
            # Layers other architectures name differently read the residual stream's width.
            width = intermediate if LINEAR_INPUT.get(name) == "i" else hidden
            layer += LORA_INPUT_BYTES[kind] * width
    if attn_implementation == "eager":
        layer += EAGER_SCORE_BYTES[kind] * heads * seq_len
    residual = 2 if kind == "bf16" else 4
    kept_layers = layer + layers * hidden * residual if gradient_checkpointing else layers * layer
    final_norm = 3 * hidden * residual
    if fused_loss:
        fused = 4 * (tokens * hidden + vocab * hidden + 2 * min(tokens, CHUNK_TOKENS) * vocab)
        return tokens * (kept_layers + final_norm) + fused
    logits = LOGITS_BYTES_PER_TOKEN[kind] * vocab
    return tokens * (kept_layers + final_norm + logits)


def estimate_memory(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    vocab: int,
    trainable: int,
    total: int,
    embedding_params: int,
    sequences: int,
    seq_len: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    sharding: str = "none",
    world_size: int = 1,
    adapted: Sequence[str] = (),
    fused_loss: bool = False,
    device: str = "cuda",
    spectra: bool = False,
    merged_copy: bool = False,
) -> MemoryEstimate:
    """Peak training memory per device of one arm.

    `sequences` is what one device runs through one forward pass (micro_batch_size, or its share of
    batch_size). `embedding_params` are the input embedding's (no matmul, so no autocast copy).
    `adapted` names the linear layers LoRA adapts (empty for full finetuning). `fused_loss`: the training
    loop's loss without full-vocabulary logits applies (see `activation_bytes`). Under sharding 'fsdp',
    stored weights, gradients and optimizer states are divided by `world_size`.

    - weights, gradients, optimizer: `stored_bytes`, plus under FSDP `compute_copies`' gathered layers.
    - activations: `activation_bytes`, plus under *-mixed `compute_copies`' autocast copies.
    - held: `held_bytes` (`device`: 'cpu' counts the host's memory, as the study's CPU peak does).
    """
    shards = world_size if sharding == "fsdp" else 1
    weights, gradients, states = stored_bytes(
        total=total, trainable=trainable, precision=precision, optimizer=optimizer, lora=bool(adapted),
        shards=shards,
    )  # fmt: skip
    activations = activation_bytes(
        hidden=hidden, intermediate=intermediate, layers=layers, heads=heads, vocab=vocab,
        tokens=sequences * seq_len, seq_len=seq_len, precision=precision,
        gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation,
        adapted=adapted, fused_loss=fused_loss,
    )  # fmt: skip
    gathered, autocast_copies = compute_copies(
        total=total, embedding_params=embedding_params, layers=layers, precision=precision, shards=shards
    )
    weights += gathered
    activations += autocast_copies
    held = held_bytes(
        total=total, precision=precision, activations=activations, device=device, spectra=spectra,
        merged_copy=merged_copy,
    )  # fmt: skip
    return MemoryEstimate(weights, gradients, states, activations, held)


def stored_bytes(
    *, total: int, trainable: int, precision: str, optimizer: str, lora: bool, shards: int
) -> tuple[int, int, int]:
    """(weights, gradients, optimizer states) stored per device, each divided by `shards` (FSDP shards
    every parameter, frozen or not: it shards modules, not trainability).

    - weights: frozen × STORAGE_BYTES + trainable × the trainable's bytes: STORAGE_BYTES, but 4 for LoRA
      adapters (`lora`) under 'bf16' (peft keeps adapter weights in float32 on a bf16 model).
    - gradients: `trainable` × the trainable's bytes (frozen weights have none).
    - optimizer: `trainable` × OPTIMIZER_STATES × the trainable's bytes.
    """
    storage = STORAGE_BYTES[precision]
    trained = 4 if lora else storage
    weights = ((total - trainable) * storage + trainable * trained) // shards
    gradients = trainable * trained // shards
    states = trainable * OPTIMIZER_STATES[optimizer] * trained // shards
    return weights, gradients, states


def compute_copies(
    *, total: int, embedding_params: int, layers: int, precision: str, shards: int
) -> tuple[int, int]:
    """(bytes added to the weights, bytes added to the activations) by the copies of weights made to
    compute with (2 bytes each, 4 in fp32).

    - sharded over `shards` > 1 processes (FSDP): the all-gathered copies of two decoder layers (the one
      computing, the one prefetched), which replace autocast's copies; added to the weights.
    - otherwise, under *-mixed: autocast's copies of the matmul weights (every weight but the input
      embedding): autocast caches the cast of each trainable weight for the whole forward pass and
      autograd saves the casts of frozen ones for the input gradients, so all of them are alive when
      backward starts (with checkpointing, trainable ones still are; frozen ones for one layer only:
      counted as all, a small overestimate for LoRA); added to the activations, as they are transient.
    """
    compute_bytes = 4 if precision == "fp32" else 2
    if shards > 1:
        layer_params = (total - embedding_params) // max(1, layers)
        return 2 * layer_params * compute_bytes, 0
    if precision.endswith("-mixed"):
        return 0, (total - embedding_params) * compute_bytes
    return 0, 0


def held_bytes(
    *, total: int, precision: str, activations: int, device: str, spectra: bool, merged_copy: bool
) -> int:
    """What the arm's process holds besides training, one term a line:

    - `merged_copy`: the plain model LoRA is evaluated through (evaluate/arm_model.py), fp32, on the device;
    - on a CPU, `spectra`: the base weights kept for ΔW spectra from the first milestone on
      (study.base_model.load_base_weights: host memory, so not a GPU's);
    - on a CPU, PROCESS_BYTES: the runtime itself;
    - on a CPU, CPU_HEAP_SLACK × `activations`: what the allocator keeps resident beyond the live peak.
    """
    held = total * 4 if merged_copy else 0
    held += total * STORAGE_BYTES[precision] if device == "cpu" and spectra else 0
    held += PROCESS_BYTES if device == "cpu" else 0
    held += int(CPU_HEAP_SLACK * activations) if device == "cpu" else 0
    return held
