"""Padding-free batches and packing keep their sequences apart: each sequence of a packed row gets the logits
it gets alone, for the families tunechain ships (llama, qwen3), through trl's own collator; and the sft stage
trains the same with padding_free on or off."""
import pytest
import torch

from conftest import compose, tiny_overrides


def test_a_padding_free_row_keeps_its_sequences_apart(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model).train()  # as trained: dropout 0, no cache
    torch.manual_seed(0)
    examples = [{"input_ids": torch.randint(10, 400, (n,)).tolist()} for n in (7, 5, 11)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert batch["input_ids"].shape == (1, 23) and "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
            end = start + len(example["input_ids"])
            assert torch.allclose(packed[start:end], alone, atol=1e-4), f"sequence at {start} sees its neighbours"
            start = end


def _sft(tiny_llama, tmp_path, *switches):
    """The sft stage alone (recipe bench_sft) on the tiny Llama; its metrics."""
    from pipeline.engine.runner import run_chain

    overrides = [o for o in tiny_overrides(tiny_llama) if not o.startswith("stages.eval")]
    overrides += ["recipe=bench_sft", "stages.sft.max_steps=6", "data.sft.limit=64", *switches]
    run = tmp_path / "_".join(s.replace("stages.sft.", "") for s in switches)
    record = run_chain(compose(overrides + [f"paths.store={tmp_path / 'store'}"]), run, "bench_sft", overrides, None)
    (sft,) = record["stages"]
    assert sft["status"] == "done"
    return sft["metrics"]


def test_padding_free_batches_train_as_padded_ones(tiny_llama, tmp_path):
    padded = _sft(tiny_llama, tmp_path, "stages.sft.padding_free=false")
    padding_free = _sft(tiny_llama, tmp_path, "stages.sft.padding_free=true")
    assert (padded["batching"], padding_free["batching"]) == ("padded", "padding-free")
    assert padded["train_steps"] == padding_free["train_steps"] == 6
    assert padding_free["train_loss"] == pytest.approx(padded["train_loss"], abs=1e-4)  # the same tokens, apart
    assert padding_free["loss_last"] < padding_free["loss_first"]


def test_packed_rows_train(tiny_llama, tmp_path):
    packed = _sft(tiny_llama, tmp_path, "stages.sft.packing=true")
    assert packed["batching"] == "packed" and packed["train_steps"] == 6 and packed["loss_last"] < packed["loss_first"]


def test_speed_defaults_follow_the_device_and_the_model():
    from pipeline.artifact import Artifact
    from pipeline.errors import PlanError
    from pipeline.models.memory import checkpointing_by_default
    from pipeline.stages.train.sft import SFTConfig
    from pipeline.training.common import speed_args

    assert checkpointing_by_default("cuda", 1_500_000_000) and not checkpointing_by_default("cuda", 500_000_000)
    assert not checkpointing_by_default("cpu", 8_000_000_000)  # recomputing costs CPUs more than RAM does
    embedded = Artifact(kind="model", path="embedded/model", fingerprint="")
    cfg = SFTConfig()
    assert speed_args(cfg, "cpu", embedded) == {"packing": False, "padding_free": True, "use_liger_kernel": False,
                                                "torch_compile": False}
    cfg.padding_free, cfg.packing = None, True  # bfd packing is padding-free itself
    assert speed_args(cfg, "cpu", embedded)["padding_free"] is False
    cfg.liger = True
    with pytest.raises(PlanError, match=r"^stages\.sft\.liger: true, but Liger's Triton kernels need a CUDA GPU"):
        cfg.check_device("stages.sft", "cpu")


def test_checkpointing_left_null_follows_the_model_size():
    from pipeline.artifact import Artifact
    from pipeline.training.common import resolved_checkpointing

    embedded = Artifact(kind="model", path="embedded/model", fingerprint="")
    hub = Artifact(kind="model", path="Qwen/Qwen3-8B", fingerprint="")
    assert not resolved_checkpointing(None, "cuda", embedded)           # 4M parameters, counted from the folder
    assert resolved_checkpointing(None, "cuda", hub, params_b=8.2)      # a hub id: model.params_b
    assert not resolved_checkpointing(None, "cpu", hub, params_b=8.2)
    assert resolved_checkpointing(True, "cpu", embedded)                # a setting wins
