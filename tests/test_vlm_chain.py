"""Vision-language models through the chain, as a user runs it (main.py in a subprocess): tiny random copies
of Idefics3 (SmolVLM), LLaVA, Qwen3-VL, Qwen3.5 and Gemma 3 (tests/vlm_models.py) are planned, LoRA-tuned on
image chats, merged and reloaded as the same VLM and evaluated on image questions; the Idefics3 one also
becomes a GGUF + mmproj pair whose greedy answers on image prompts are compared with the HF model's, and is
served with a base64 image request. Architectures this llama.cpp cannot convert are refused at plan time."""
import json
import random

import pytest
from conftest import read_chain, run_main

from tests.vlm_models import build_tiny_vlm

COLOURS = ("red", "blue", "green", "yellow")


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    """64-px circles in four colours: 24 training chats, 8 held-out questions, 16 POPE-style yes/no ones."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("image-data")
    (folder / "images").mkdir()
    rows = {"sft": [], "vqa": [], "pope": []}
    rng = random.Random(0)
    for i in range(32):
        colour = COLOURS[i % 4]
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((rng.randrange(4, 16), rng.randrange(4, 16), 52, 52), fill=colour)
        path = f"images/circle_{i:02d}.png"
        image.save(folder / path)
        question = [{"type": "image", "image": path}, {"type": "text", "text": "What colour is the circle?"}]
        if i < 24:
            rows["sft"].append({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": colour}]})
            continue
        rows["vqa"].append({"prompt": [{"role": "user", "content": question}], "answer": colour, "type": "color"})
        absent = COLOURS[(i + 1) % 4]
        for shown, answer in ((colour, "yes"), (absent, "no")):
            rows["pope"].append({"prompt": [{"role": "user", "content": [
                {"type": "image", "image": path}, {"type": "text", "text": f"Is there a {shown} circle?"}]}],
                "answer": answer, "setting": "random", "object": f"{shown} circle"})
    for name, records in rows.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory):
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = build_tiny_vlm(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return made[arch]

    return get


def vlm_overrides(model, data) -> list[str]:
    return [f"model.path={model}", "model.name=tiny-vlm", "model.vision=true", "logger=none",
            "hardware.num_threads=1", "data=embedded-vlm", f"data.sft.path={data / 'sft.jsonl'}",
            f"data.test_vqa.path={data / 'vqa.jsonl'}", f"data.test_pope.path={data / 'pope.jsonl'}",
            "stages.sft.max_steps=3", "stages.sft.per_device_train_batch_size=4", "stages.sft.logging_steps=1",
            "stages.sft.learning_rate=1e-3", "stages.sft.max_length=256"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["idefics3", "llava", "qwen3_vl", "qwen3_5", "gemma3"])
def test_image_sft_merge_reload_and_image_eval(arch, tiny_vlms, image_data, tmp_path):
    """sft (LoRA on the language model) -> merge -> eval on vqa + hallucination, for each architecture."""
    from transformers import AutoModelForImageTextToText

    from pipeline.models.vision import module_groups

    model = tiny_vlms(arch)
    args = ["recipe=lora_merge", *vlm_overrides(model, image_data), "stages.eval.tasks=[vqa,hallucination]"]
    result = run_main(args, tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    assert [s["status"] for s in stages.values()] == ["done", "done", "done"]
    assert stages["sft"]["metrics"]["train_steps"] == 3
    adapter = json.loads((tmp_path / "store" / "adapter" / stages["sft"]["fingerprint"] / "adapter_config.json")
                         .read_text())
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "store" / "model" / stages["merge"]["fingerprint"])
    groups = module_groups(merged)
    assert groups["vision"] and groups["language"]  # the merged folder reloads as the same VLM
    assert not any(name.split(".")[-1] in ("q_proj", "fc1") and name in groups["vision"]
                   for name in adapter["target_modules"] if isinstance(adapter["target_modules"], list))
    metrics = stages["eval"]["metrics"]
    assert metrics["vqa_n"] == 8 and metrics["pope_n"] == 16 and 0 <= metrics["hallucination_rate"] <= 1
    assert (tmp_path / "run" / "report.md").read_text().count("## Image answers") == 1


@pytest.mark.slow
def test_idefics3_to_gguf_and_mmproj_agrees_with_hf_and_serves_an_image(tiny_vlms, image_data, tmp_path):
    """Idefics3 (SmolVLM's architecture) only: the tiny Qwen3-VL converts too, but its borrowed SentencePiece
    vocabulary is not what llama.cpp's Qwen converter expects, so even its text answers differ there."""
    model = tiny_vlms("idefics3")
    args = ["recipe=sft_to_gguf", *vlm_overrides(model, image_data), "~stages.gguf_q4", "~stages.eval_gguf_q4",
            "stages.eval_merged.tasks=[vqa]", "stages.eval_gguf.tasks=[vqa]", "stages.gguf.parity_limit=8",
            "stages.gguf.quant=f32",  # a random model's flat logits: any rounding flips its greedy tokens
            "stages.serve.concurrency=2"]
    result = run_main(args, tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    gguf = stages["gguf"]
    folder = tmp_path / "store" / "gguf" / gguf["fingerprint"]
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["meta"]["mmproj"] == "mmproj-f32.gguf" and (folder / "mmproj-f32.gguf").is_file()
    # greedy answers on image prompts, llama.cpp (GGUF + mmproj, libmtmd's tiling) against transformers
    assert gguf["metrics"]["parity_image_n"] == 8 and gguf["metrics"]["parity_image_identical"] >= 0.75
    assert "gguf: " in result.stdout and "on image prompts identical on" in result.stdout  # the export line says so
    assert stages["eval_gguf"]["metrics"]["backend"] == "llama.cpp" and stages["eval_gguf"]["metrics"]["vqa_n"] == 8
    serve = stages["serve"]["metrics"]
    assert serve["image_prompt_tokens"] > 20 and serve["remote_image_refused"] is True  # the image's tokens counted


@pytest.mark.parametrize("arch, reason", [("llava", "Pixtral encoder only"),
                                          ("gemma3", "vision_tower.embeddings")])
def test_a_vlm_llama_cpp_cannot_convert_is_refused_at_plan_time(arch, reason, tiny_vlms, image_data, tmp_path):
    pytest.importorskip("llama_cpp")
    result = run_main(["recipe=sft_to_gguf", *vlm_overrides(tiny_vlms(arch), image_data), "+dry_run=true"], tmp_path)
    assert result.returncode != 0
    assert "stages.gguf: llama.cpp" in result.stderr and reason in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "store" / "adapter").exists()  # refused before any work


def test_image_tasks_on_a_text_model_fail_at_plan_time(tiny_llama, tmp_path):
    result = run_main([f"model.path={tiny_llama}", "logger=none", "stages.eval_base.tasks=[vqa]", "+dry_run=true"],
                      tmp_path)
    assert result.returncode != 0 and "stages.eval_base.tasks: ['vqa'] ask questions about images" in result.stderr
