"""Model cards: every model, adapter and GGUF artifact carries a Hugging Face README.md (parsed here by
huggingface_hub's own ModelCard) naming its base, data, license and figures with their n; after a chain the
run folder holds each card again with the held-out evaluations of it."""
import json
from pathlib import Path
from types import SimpleNamespace

from conftest import compose, merge_overrides

from pipeline.cards import model_card
from pipeline.engine.runner import run_chain


def test_lora_merge_cards_parse_and_name_base_data_and_figures(tiny_llama, tmp_path):
    from huggingface_hub import ModelCard

    overrides = [*merge_overrides(tiny_llama), "model.hub_id=tiny-org/tiny-llama", "model.license=mit",
                 f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "lora_merge", overrides, None)
    stages = {s["name"]: s for s in record["stages"]}

    stored = Path(stages["merge"]["artifact"])
    card = ModelCard.load(stored / "README.md")
    assert card.data.base_model == "tiny-org/tiny-llama" and card.data.license == "mit"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.datasets == ["embedded/data/sft_train.jsonl"] and {"tunechain", "sft", "merge"} <= set(card.data.tags)
    assert "1. base model `tiny-org/tiny-llama`\n2. `sft` (sft), data `embedded/data/sft_train.jsonl`, train_steps 4" \
        in card.text
    assert "recipe=lora_merge" in card.text and "model.license=mit" in card.text
    manifest = json.loads((stored / "artifact.json").read_text())
    assert "README.md" in manifest["files"]  # part of the integrity record

    adapter = ModelCard.load(Path(stages["sft"]["artifact"]) / "README.md")  # peft's template card replaced
    assert adapter.data.library_name == "peft" and "lora" in adapter.data.tags

    after = ModelCard.load(tmp_path / "run" / "cards" / "merge" / "README.md")
    accuracy = stages["eval"]["metrics"]["math_accuracy"]
    assert f"| eval: math_accuracy | {accuracy:.4g} | 8 |" in after.text  # the held-out figure with its n
    assert "eval:" not in card.text  # the stored card was written before the eval ran
    assert not (tmp_path / "run" / "cards" / "eval").exists()  # evals get no card


def test_the_base_is_named_by_its_hub_id_when_it_has_one(tmp_path, monkeypatch):
    def model(path, hub_id=None, source=None):
        return SimpleNamespace(path=path, hub_id=hub_id, source=source)

    assert model_card.hub_id(model("Qwen/Qwen3-8B")) == "Qwen/Qwen3-8B"
    assert model_card.hub_id(model("./embedded/model")) is None
    assert model_card.hub_id(model(str(tmp_path), hub_id="org/name")) == "org/name"
    (tmp_path / "org" / "local").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert model_card.hub_id(model("org/local")) is None  # a local folder that looks like a hub id
    assert model_card.hub_id(model("/cache/models/x", source="HuggingFaceTB/SmolLM2-135M")) == "HuggingFaceTB/SmolLM2-135M"


def test_the_command_names_recipe_and_model_once():
    chain = {"recipe": "quickstart", "model": "embedded", "overrides": ["recipe=quickstart", "stages.sft.max_steps=5"]}
    assert model_card.command(chain) == "python main.py model=embedded recipe=quickstart stages.sft.max_steps=5"
