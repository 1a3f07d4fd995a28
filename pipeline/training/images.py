"""Image chats for trl's trainers: rows that its vision collator (DataCollatorForVisionLanguageModeling for
SFT, DPO's processor path) turns into pixel values and masked labels with the model's processor.

An image chat trains its final assistant reply (trl's prompt/completion form: the prompt, images
included, is masked); the images load lazily, row by row, as the collator asks for them.
"""
from __future__ import annotations


from pipeline.data.images import images_in, plain_messages

IMAGE = "image"


def placeholders(messages: list[dict]) -> list[dict]:
    """Messages with each image part emptied to `{"type": "image"}` (trl fills it from the row's images)
    and string contents as text parts, as trl's prepare_multimodal_messages expects."""
    out = []
    for message in plain_messages(messages):
        content = message.get("content")
        if isinstance(content, list):
            parts = [{"type": IMAGE} if p.get("type") == IMAGE else p for p in content]
        else:
            parts = [{"type": "text", "text": content or ""}]
        out.append({**message, "content": parts})
    return out


def sft_rows(records: list[dict]) -> list[dict]:
    """Canonical sft records -> {prompt, completion, images (refs)}: the final reply is the completion."""
    rows = []
    for record in records:
        messages = record["messages"]
        rows.append({"prompt": placeholders(messages[:-1]), "completion": placeholders(messages[-1:]),
                     "images": images_in(messages)})
    return rows


def preference_rows(records: list[dict]) -> list[dict]:
    """Canonical preference records -> trl's DPO vision rows {prompt, chosen, rejected, images}."""
    return [{"prompt": placeholders(r["prompt"]), "chosen": placeholders(r["chosen"]),
             "rejected": placeholders(r["rejected"]), "images": images_in(r["prompt"])} for r in records]


def image_dataset(rows: list[dict]):
    """A datasets.Dataset whose `images` column decodes each reference (a path, URL or data URL) to a
    PIL image when a row is read, not before."""
    from datasets import Dataset

    from pipeline.data.images import load_image

    dataset = Dataset.from_list(rows)

    def decode(batch: dict) -> dict:
        return {**batch, "images": [[load_image(ref) for ref in refs] for refs in batch["images"]]}

    dataset.set_transform(decode)
    return dataset
