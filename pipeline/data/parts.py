"""Message content as a list of parts (the OpenAI / Hugging Face chat form) and the `images` column form
of trl and LLaMA-Factory, both turned into one canonical form:

    {"type": "text", "text": "..."}   {"type": "image", "image": <reference>}

Structure only: where a reference points and whether it opens as an image is pipeline/data/images.py's.
A record without parts and without an image column passes through untouched (text fingerprints stay).
"""
from __future__ import annotations

from typing import Any

from pipeline.data.problems import Invalid, kind_name

PART_TYPES = ("text", "image", "image_url")
PLACEHOLDER = "<image>"                              # an image's place in the text of the images column form
IMAGE_COLUMNS = ("images", "image")                  # trl/LLaMA-Factory: a list of images; some sets: one
CHAT_KEYS = ("messages", "prompt", "chosen", "rejected")
_IMAGE_KEYS = ("image", "path", "url")               # where HF's chat templates look for an image part's image


def content_parts(content: list, where: str) -> list[dict]:
    """A message's list content, validated, in the canonical form; an image part without an image is a slot
    that the record's image column fills."""
    return [_part(item, f"{where}.content[{j}]") for j, item in enumerate(content)]


def _part(item: Any, where: str) -> dict:
    if not isinstance(item, dict):
        raise Invalid(f"{where} must be an object with a type, got {kind_name(item)}")
    item = {k: v for k, v in item.items() if v is not None}  # Arrow gives each part every part's fields
    kind = item.get("type")
    if kind not in PART_TYPES:
        raise Invalid(f"{where}: unknown part type {kind!r} (expected one of {', '.join(PART_TYPES)})")
    if kind == "text":
        if "text" not in item:
            raise Invalid(f"{where}: text part has no 'text'")
        text = item["text"]
        if not isinstance(text, str):
            raise Invalid(f"{where}: 'text' must be a string, got {kind_name(text)}")
        if not text.strip():
            raise Invalid(f"{where}: empty text")
        return {"type": "text", "text": text}
    if kind == "image_url":
        url = item.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url.strip():
            raise Invalid(f"{where}: image_url part needs 'image_url': {{'url': ...}}, got {kind_name(url)}")
        return {"type": "image", "image": url}
    ref = next((item[k] for k in _IMAGE_KEYS if k in item), None)
    return {"type": "image"} if ref is None else {"type": "image", "image": image_ref(ref, where)}


def image_ref(ref: Any, where: str) -> Any:
    """A path, URL or data URL (a string), image bytes, or HF's Image storage {"bytes", "path"}."""
    if isinstance(ref, str) and ref.strip() or isinstance(ref, bytes):
        return ref
    if isinstance(ref, dict) and (isinstance(ref.get("bytes"), bytes) or isinstance(ref.get("path"), str)):
        return ref
    raise Invalid(f"{where}: an image must be a path, URL, data URL or image bytes, got {kind_name(ref)}")


def text_of(content: str | list, where: str) -> str:
    """A reply's text (a prompt record's reference answer): its text parts joined; an image there is an error."""
    if isinstance(content, str):
        return content
    if any(part["type"] == "image" for part in content):
        raise Invalid(f"{where}: the reply that becomes the answer must be text, not an image")
    return "".join(part["text"] for part in content)


def has_parts(record: dict) -> bool:
    for key in CHAT_KEYS:  # plain loops: every text record of a stage's set comes through here
        chat = record.get(key)
        if isinstance(chat, list):
            for message in chat:
                if isinstance(message.get("content"), list):
                    return True
    return False


def as_parts(content: str | list) -> list[dict]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []  # a tool-call turn may carry no text


def finished(record: dict, source: dict) -> dict:
    """A converted record with its image column placed into its chat, no unfilled slot, and, where any
    message has parts, parts in every message (one Arrow type per column; trl's form)."""
    column = next((name for name in IMAGE_COLUMNS if name in source), None)
    key = "messages" if "messages" in record else "prompt"
    if column is None and not has_parts(record) or key not in record:  # text, gsm8k: no chat to put images in
        return record
    record = {k: v for k, v in record.items() if k not in IMAGE_COLUMNS}
    if column is not None:
        record[key] = _placed(record[key], _images(source[column], column), key, column)
    for i, message in enumerate(record.get(key) or ()):
        for j, part in enumerate(message["content"] if isinstance(message["content"], list) else ()):
            if part == {"type": "image"}:
                raise Invalid(f"{key}[{i}].content[{j}]: image part has no image: give it 'image', 'path' or "
                              f"'url', or give the record an 'images' list")
    for name in CHAT_KEYS:
        if isinstance(record.get(name), list):
            record[name] = [{**m, "content": as_parts(m["content"])} for m in record[name]]
    return record


def _images(value: Any, column: str) -> list:
    refs = value if isinstance(value, list) else [value]
    return [image_ref(ref, f"{column}[{k}]" if isinstance(value, list) else column) for k, ref in enumerate(refs)]


def _placed(messages: list[dict], images: list, key: str, column: str) -> list[dict]:
    """Each slot (`<image>` in the text, or an image part without an image) takes the next image; with no
    slot, the images go before the first user message's text (trl's prepare_multimodal_messages)."""
    split = [[p for item in as_parts(m["content"]) for p in _split(item)] for m in messages]
    slots = sum(part == {"type": "image"} for parts in split for part in parts)
    if slots == 0:
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
        split[first_user] = [{"type": "image"} for _ in images] + split[first_user]
    elif slots != len(images):
        raise Invalid(f"'{column}' has {len(images)} image(s) but '{key}' has {slots} place(s) for one "
                      f"('{PLACEHOLDER}' in the text or an image part without an image)")
    remaining = iter(images)
    return [{**m, "content": [{"type": "image", "image": next(remaining)} if p == {"type": "image"} else p
                              for p in parts]} for m, parts in zip(messages, split)]


def _split(part: dict) -> list[dict]:
    """A text part with placeholders as text and image slots; blank text between them is dropped."""
    if part["type"] != "text" or PLACEHOLDER not in part["text"]:
        return [part]
    pieces = part["text"].split(PLACEHOLDER)
    out = [{"type": "text", "text": pieces[0]}] if pieces[0].strip() else []
    for piece in pieces[1:]:
        out.append({"type": "image"})
        if piece.strip():
            out.append({"type": "text", "text": piece})
    return out
