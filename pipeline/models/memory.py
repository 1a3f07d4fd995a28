"""Memory planning: what a stage will need, estimated before anything loads (what it took is
measured by pipeline/models/peak_memory.py).

The estimate is built from the model's shape (config.json) and the stage's workload, the terms
memory actually follows from (the usual per-parameter rules of thumb are the weights and
optimizer lines; the rest is what they leave out). A mixture of experts counts every expert's
weights, and as its intermediate width the routed experts one token passes through:

    runtime      the Python process with torch and transformers imported (CPU RSS only)
    weights      parameters x bytes of the compute dtype (NF4 + scales for QLoRA's frozen base)
    optimizer    trainable parameters x (gradient + two AdamW moments [+ fp32 master copy])
    activations  tokens x layers x (4 hidden + 1.5 intermediate + a x heads x length) values, kept
                 for the backward pass (training only; gradient checkpointing keeps ~1 layer's);
                 a = 8.6 on CPU, where SDPA's math path keeps the attention scores (measured on
                 SmolLM2-135M, batch 8 x 96 and 192 tokens), 1 on GPUs (memory-efficient kernels)
    logits       tokens x vocabulary x 4 bytes x 3 (fp32 logits, log-softmax, their gradient)
    kv cache     prompts x (prompt + new tokens) x layers x 2 x kv heads x head dim (generation); a
                 linear-attention layer keeps a fixed state per prompt instead (architecture.py)

Several processes (pipeline.engine.launch) divide by the world size what their sharding shards:
ZeRO-1 the optimizer states, ZeRO-2 also the gradients, ZeRO-3 and FSDP also the weights (plus
about two layers gathered at a time); offload_optimizer / offload_param move those to CPU RAM.
The estimate is then per process (per GPU), and the plan shows it as "<bytes> x<processes>".

Training peaks in the backward pass at about 1.25x the saved activations. Tokens per step are the
batch times the padded length of a long batch, measured on a sample of the stage's data
(pipeline.engine.plan), not max_length, since chats are usually much shorter. Measured against it: pipeline.engine.runner
records each stage's `peak_memory_mb` beside `planned_memory_mb`.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from pipeline.models.architecture import linear_attention_layers, linear_state_values
from pipeline.models.experts import active_mlp_width

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "nf4": 0.5}
NF4_OVERHEAD = 1.15              # scales and zero points beside the 4-bit values
RUNTIME_CPU_BYTES = 650 * 2**20  # measured: RSS with torch, transformers, peft, trl, datasets imported (330-750 MB)
# A stage in its own process (pipeline.engine.launch: eval and the exports) starts at ~230 MB and imports
# only what it uses: measured on SmolLM2, eval of a merged model peaked at 1205 MB with 513 MB of weights.
RUNTIME_CHILD_CPU_BYTES = 330 * 2**20
BACKWARD_FACTOR = 1.25           # peak / saved activations: the backward pass's transient gradients
ATTENTION_COPIES = {"cpu": 8.6, "cuda": 1.0}  # attention-score values kept per head and key position
LOGIT_COPIES = 3
GENERATION_TRANSIENT = 1.2       # prefill attention and sampling buffers over the KV cache
LOGITS_CHUNK_BYTES = 256 * 2**20  # pipeline.backends.perplexity's bound on live logits
# llama.cpp: bytes per weight of each GGUF type (block scales included), its KV cache (f16, the backend's
# 2048-token context) and the per-batch compute buffers; perplexity opens a second model that keeps the
# logits of every position of its window (logits_all), in llama.cpp and in the bindings' copy.
GGUF_BYTES_PER_PARAM = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 1.0625, "q6_k": 0.82, "q5_k_m": 0.69,
                        "q5_k_s": 0.69, "q5_0": 0.69, "q4_k_m": 0.6, "q4_k_s": 0.57, "q4_0": 0.5625, "q3_k_m": 0.49,
                        "q2_k": 0.33, "iq4_nl": 0.56}
LLAMA_CPP_CONTEXT = 2048
LLAMA_CPP_BATCH = 512

REMEDIES = ("batch size 1 with gradient accumulation, gradient checkpointing (~30% slower), "
            "bf16, a shorter max_length, LoRA/QLoRA instead of full tuning, or hardware=deepspeed_zero3")


@dataclass
class ModelShape:
    """The dimensions memory depends on, from a config.json (or guessed from a parameter count)."""

    n_params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    kv_layers: int = 0          # layers with a KV cache (0: every layer); linear-attention layers have none
    state_values: int = 0       # a sequence's fixed recurrent state (linear-attention layers), fp32

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelShape | None":
        path = Path(folder) / "config.json"
        n_params = count_parameters(folder)
        if not path.is_file() or not n_params:
            return None
        return cls.from_config(json.loads(path.read_text()), n_params)

    @classmethod
    def from_config(cls, config: dict, n_params: int = 0) -> "ModelShape":
        config = config.get("text_config", config)  # multimodal configs nest the language model's
        hidden = int(config.get("hidden_size", 0)) or 1
        heads = int(config.get("num_attention_heads", 1))
        return cls(n_params=n_params, layers=int(config.get("num_hidden_layers", 1)), hidden=hidden,
                   intermediate=active_mlp_width(config) or int(config.get("intermediate_size", 4 * hidden)),
                   heads=heads,
                   kv_heads=int(config.get("num_key_value_heads", heads)),
                   head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config.get("vocab_size", 32000)),
                   kv_layers=int(config.get("num_hidden_layers", 1)) - linear_attention_layers(config),
                   state_values=linear_state_values(config))

    @classmethod
    def guess(cls, n_params: int, active_params: int | None = None) -> "ModelShape":
        """A Llama-like shape of that size (hub models not downloaded yet); a mixture of experts is shaped by the
        parameters one token uses (`active_params`) and weighs all of them."""
        hidden = max(256, int(((active_params or n_params) / 12 / 32) ** 0.5 / 128) * 128)
        return cls(n_params=n_params, layers=32, hidden=hidden, intermediate=int(hidden * 3.5), heads=hidden // 128,
                   kv_heads=max(1, hidden // 512), head_dim=128, vocab=128_000)


@dataclass
class Workload:
    """What a stage does with the model, in the terms its memory follows from."""

    kind: str = "inference"         # train | generate | inference (load, convert, save: weights only)
    method: str = "lora"            # train: full | lora | qlora
    batch: int = 1                  # train: sequences per step; generate: prompts per call
    length: int = 512               # train: tokens per sequence (the plan lowers it to the data's)
    new_tokens: int = 0             # generate: tokens generated per prompt
    prompt_length: int = 128        # generate: prompt tokens (the plan measures it on the data)
    lora_rank: int = 16
    gradient_checkpointing: bool | None = False  # None: checkpointing_by_default
    extra_weights: float = 0.0      # further models held, in units of this model (distill's teacher, a reference)
    generate_batch: int = 0         # train stages that also generate (GRPO): completions per call
    generate_tokens: int = 0
    gguf: str | None = None         # generate: the GGUF type llama.cpp runs (None: transformers)
    scores_window: int = 0          # generate: perplexity window (llama.cpp keeps its logits in full)


@dataclass
class Sharding:
    """How a training stage spreads over its processes (from the hardware profile)."""

    world: int = 1                  # processes in the job, all nodes
    zero_stage: int = 0             # 0: plain DDP (every process holds everything); 1-3: ZeRO; FSDP counts as 3
    offload_optimizer: bool = False
    offload_param: bool = False

    @classmethod
    def from_hardware(cls, hardware: dict) -> "Sharding":
        processes, nodes = int(hardware.get("num_processes") or 1), int(hardware.get("num_nodes") or 1)
        zero = (hardware.get("deepspeed") or {}).get("zero_optimization") or {}
        stage = 3 if hardware.get("fsdp") else int(zero.get("stage", 0))
        offloaded = lambda key: bool(hardware.get(key)) or (zero.get(key) or {}).get("device") in ("cpu", "nvme")  # noqa: E731
        return cls(world=processes * nodes, zero_stage=stage,
                   offload_optimizer=offloaded("offload_optimizer"), offload_param=offloaded("offload_param"))

    def describe(self) -> str:
        kind = {0: "DDP: every process holds the whole model", 1: "ZeRO-1: optimizer states sharded",
                2: "ZeRO-2: optimizer states and gradients sharded",
                3: "ZeRO-3/FSDP: weights, gradients and optimizer states sharded"}[min(self.zero_stage, 3)]
        offload = [name for name, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_param)) if on]
        return f"{kind} over {self.world}" + (f"; {' and '.join(offload)} offloaded to CPU" if offload else "")


def count_parameters(folder: Path) -> int | None:
    """Sum tensor sizes from safetensors headers, without loading weights or torch."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total or None


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """A LoRA of this rank on every attention and MLP projection: r x (in + out) per matrix."""
    attention = 2 * (shape.hidden + shape.heads * shape.head_dim) + 2 * (shape.hidden + shape.kv_heads * shape.head_dim)
    mlp = 3 * (shape.hidden + shape.intermediate)
    return shape.layers * rank * (attention + mlp)


def activation_bytes_per_token(shape: ModelShape, length: int, value_bytes: int, device: str = "cpu") -> int:
    attention = ATTENTION_COPIES.get(device, 1.0) * shape.heads * length
    return int(shape.layers * (4 * shape.hidden + 1.5 * shape.intermediate + attention) * value_bytes)


def kv_cache_bytes(shape: ModelShape, sequences: int, tokens: int, value_bytes: int) -> int:
    """Keys and values of the attention layers, plus the fixed state of linear-attention layers."""
    kv = sequences * tokens * (shape.kv_layers or shape.layers) * 2 * shape.kv_heads * shape.head_dim * value_bytes
    return kv + sequences * shape.state_values * 4


CHECKPOINTING_FROM_PARAMS = 1_000_000_000


def checkpointing_by_default(device: str, n_params: int | None) -> bool:
    """Gradient checkpointing where a training stage leaves it null: on GPUs for models of 1B parameters and
    more, where activations outgrow the weights; off on CPUs, where recomputing made tiny models' steps 2-10x
    slower (ENVIRONMENT.md) and RAM is rarely what runs out first."""
    return device == "cuda" and (n_params or 0) >= CHECKPOINTING_FROM_PARAMS


def estimate(work: Workload, shape: ModelShape, dtype: str, device: str, sharding: Sharding | None = None,
             own_process: bool = False) -> int:
    """Peak bytes of a stage: the process's RSS on CPU, the CUDA allocator's peak on a GPU; per
    process under `sharding` (training stages on several processes); `own_process`: a stage run in
    a child process of its own."""
    value_bytes = BYTES_PER_PARAM.get(dtype, 4)
    runtime = (RUNTIME_CHILD_CPU_BYTES if own_process else RUNTIME_CPU_BYTES) if device != "cuda" else 0
    if work.kind == "train" and work.method == "qlora":
        weights = shape.n_params * BYTES_PER_PARAM["nf4"] * NF4_OVERHEAD
    else:
        weights = shape.n_params * value_bytes
    weights *= 1 + work.extra_weights
    if work.kind == "inference":
        return int(runtime + weights * GENERATION_TRANSIENT)
    if work.gguf is not None:
        return int(runtime + llama_cpp_bytes(work, shape))
    generation = 0
    if work.kind == "generate" or work.generate_batch:
        batch, new = (work.batch, work.new_tokens) if work.kind == "generate" else (work.generate_batch,
                                                                                   work.generate_tokens)
        kv = kv_cache_bytes(shape, batch, work.prompt_length + new, value_bytes)
        generation = int(kv * GENERATION_TRANSIENT + batch * shape.vocab * 4)
    if work.kind == "generate":
        return int(runtime + weights + max(generation, LOGITS_CHUNK_BYTES))
    trainable = shape.n_params if work.method == "full" else lora_parameters(shape, work.lora_rank)
    gradients, states = trainable * 4, trainable * (8 + (4 if value_bytes < 4 else 0))  # AdamW moments, fp32 master
    if sharding is not None and sharding.world > 1:
        weights, gradients, states = _shard(sharding, shape, weights, gradients, states, device)
    optimizer = gradients + states
    tokens = work.batch * work.length
    per_token = activation_bytes_per_token(shape, work.length, value_bytes, device)
    checkpointing = work.gradient_checkpointing
    if checkpointing is None:
        checkpointing = checkpointing_by_default(device, shape.n_params)
    if checkpointing:  # layer inputs only, plus one layer recomputed at a time
        per_token = per_token // shape.layers * 2 + shape.layers * shape.hidden * value_bytes
    saved = tokens * (per_token + LOGIT_COPIES * shape.vocab * 4)
    return int(runtime + weights + optimizer + max(BACKWARD_FACTOR * saved, generation))


def _shard(sharding: Sharding, shape: ModelShape, weights: float, gradients: float, states: float,
           device: str) -> tuple[float, float, float]:
    """One process's share of weights, gradients and optimizer states. Offloading moves a share off
    the GPU; on a CPU device it stays in the same RAM, so it only counts there."""
    world, stage = sharding.world, sharding.zero_stage
    if stage >= 1:
        states /= world
    if stage >= 2:
        gradients /= world
    if stage >= 3:
        weights = weights / world + 2 * weights / max(1, shape.layers)  # ~2 layers gathered for compute
    if device == "cuda":
        states = 0 if sharding.offload_optimizer else states
        weights = 2 * weights / max(1, shape.layers) if sharding.offload_param and stage >= 3 else weights
    return weights, gradients, states


GENERATION_SHARE = 0.5  # of the memory available when a generation batch starts


def generation_batch(shape: ModelShape, tokens_per_sequence: int, requested: int, device: str,
                     value_bytes: int) -> int:
    """The largest batch up to `requested` whose KV cache and logits fit in half the available memory."""
    per_sequence = (kv_cache_bytes(shape, 1, tokens_per_sequence, value_bytes) * GENERATION_TRANSIENT
                    + shape.vocab * 4)
    return max(1, min(requested, int(available_bytes(device) * GENERATION_SHARE // per_sequence)))


def llama_cpp_bytes(work: Workload, shape: ModelShape) -> int:
    """A GGUF evaluated by llama.cpp: its weights, f16 KV cache and compute buffers, and for perplexity a
    second model whose every-position logits are kept twice (llama.cpp's output buffer, the bindings' scores)."""
    weights = shape.n_params * GGUF_BYTES_PER_PARAM.get(work.gguf, 2.0)
    kv = kv_cache_bytes(shape, 1, LLAMA_CPP_CONTEXT, 2)
    compute = LLAMA_CPP_BATCH * (shape.hidden * 4 * 8 + shape.vocab * 4)
    scores = weights + 2 * (work.scores_window + 8) * shape.vocab * 4 if work.scores_window else 0
    return int(weights + kv + compute + scores)


def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    import psutil

    return psutil.virtual_memory().available


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
