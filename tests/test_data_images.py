"""Images in chats: content parts and the images column reach one canonical form, every image is checked at
plan time (each bad one named path:line, part and reason), and stages get the same records through Arrow."""
import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import paths
from pipeline.data import datasets as data, images
from pipeline.data.check_cache import CheckCache
from pipeline.data.datasets import DataError, DatasetSpec


@pytest.fixture(autouse=True, params=["records", "arrow"])
def check_path(request, monkeypatch, tmp_path):
    """Each test record by record and through the Arrow screens (as tests/test_data.py), with its own cache."""
    monkeypatch.setenv("TUNECHAIN_CACHE", str(tmp_path / "cache"))
    if request.param == "arrow":
        monkeypatch.setattr(data, "ARROW_FROM_BYTES", 0)
    return request.param


def png(size=(4, 3), color="red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def folder(tmp_path):
    """A data folder with images/red.png and images/blue.png."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(png())
    (tmp_path / "images" / "blue.png").write_bytes(png(color="blue"))
    return tmp_path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def error_of(path, purpose="sft", **fields):
    with pytest.raises(DataError) as caught:
        data.check(DatasetSpec(path=str(path), **fields), purpose)
    return str(caught.value)


def text(s):
    return {"type": "text", "text": s}


def image(ref):
    return {"type": "image", "image": str(ref)}


REPLY = {"role": "assistant", "content": "Red."}


# --- the forms -------------------------------------------------------------------------------------

def test_content_parts_in_every_accepted_form_become_canonical(folder):
    record = {"messages": [
        {"role": "system", "content": "Name colours."},
        {"role": "user", "content": [{"type": "image", "image": "images/red.png"},
                                     {"type": "image", "path": "images/blue.png"},
                                     {"type": "image_url", "image_url": {"url": str(folder / "images/red.png")}},
                                     {"type": "text", "text": "Which colours?"}]},
        REPLY]}
    spec = DatasetSpec(path=str(write_jsonl(folder / "chats.jsonl", [record])))
    assert data.check(spec, "sft").records == 1
    red, blue = folder / "images/red.png", folder / "images/blue.png"
    assert data.load(spec, "sft") == [{"messages": [  # relative paths from the data file's folder
        {"role": "system", "content": [text("Name colours.")]},
        {"role": "user", "content": [image(red), image(blue), image(red), text("Which colours?")]},
        {"role": "assistant", "content": [text("Red.")]}]}]


def test_images_column_fills_the_placeholders_in_order(folder):
    record = {"messages": [{"role": "user", "content": "Left: <image> right: <image>\nSame colour?"},
                           {"role": "assistant", "content": "No."}],
              "images": ["images/red.png", "images/blue.png"]}
    spec = str(write_jsonl(folder / "chats.jsonl", [record]))
    assert data.load(spec, "sft") == [{"messages": [
        {"role": "user", "content": [text("Left: "), image(folder / "images/red.png"), text(" right: "),
                                     image(folder / "images/blue.png"), text("\nSame colour?")]},
        {"role": "assistant", "content": [text("No.")]}]}]


def test_images_without_placeholders_go_before_the_first_user_text(folder):
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Colour?"},
                           REPLY, {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}],
              "image": "images/red.png"}
    spec = str(write_jsonl(folder / "chats.jsonl", [record]))
    assert data.load(spec, "sft")[0]["messages"][:3] == [
        {"role": "system", "content": [text("Be brief.")]},
        {"role": "user", "content": [image(folder / "images/red.png"), text("Colour?")]},
        {"role": "assistant", "content": [text("Red.")]}]


def test_sharegpt_values_may_be_parts(folder):
    record = {"conversations": [{"from": "human", "value": [{"type": "image", "url": "images/red.png"}, text("?")]},
                                {"from": "gpt", "value": "Red."}]}
    spec = str(write_jsonl(folder / "chats.jsonl", [record]))
    assert data.load(spec, "sft")[0]["messages"][0]["content"] == [image(folder / "images/red.png"), text("?")]


def test_parquet_image_bytes_are_kept_in_the_cache_by_content_hash(folder):
    """HF's Image feature stores {"bytes", "path"}; the data folder gets no file, the cache one per image."""
    red = png()
    table = pa.table({"messages": [[{"role": "user", "content": "<image>Colour?"}, REPLY]] * 2,
                      "images": [[{"bytes": red, "path": "red.png"}], [{"bytes": red, "path": None}]]})
    pq.write_table(table, folder / "chats.parquet")
    spec = str(folder / "chats.parquet")
    assert data.check(spec, "sft").records == 2
    refs = [images.images_in(r["messages"]) for r in data.load(spec, "sft")]
    stored = paths.cache_root() / "images" / __import__("hashlib").sha256(red).hexdigest()
    assert refs == [[str(stored)], [str(stored)]] and stored.read_bytes() == red
    assert sorted(p.name for p in folder.iterdir()) == ["cache", "chats.parquet", "images"]


def test_preference_prompt_with_an_image(folder):
    record = {"prompt": [{"role": "user", "content": [{"type": "image", "image": "images/red.png"}, text("Colour?")]}],
              "chosen": "Red.", "rejected": "Blue."}
    spec = str(write_jsonl(folder / "pairs.jsonl", [record]))
    assert data.load(spec, "preference") == [{
        "prompt": [{"role": "user", "content": [image(folder / "images/red.png"), text("Colour?")]}],
        "chosen": [{"role": "assistant", "content": [text("Red.")]}],
        "rejected": [{"role": "assistant", "content": [text("Blue.")]}]}]


def test_prompt_records_for_an_eval_keep_their_keys(folder):
    record = {"prompt": [{"role": "user", "content": [{"type": "image", "image": "images/red.png"},
                                                      text("What colour is this?")]}],
              "answer": "red", "type": "color"}
    spec = str(write_jsonl(folder / "eval.jsonl", [record]))
    assert data.load(spec, "prompt") == [{
        "prompt": [{"role": "user", "content": [image(folder / "images/red.png"), text("What colour is this?")]}],
        "answer": "red", "type": "color"}]


def test_data_urls_and_allowed_remote_urls_are_kept_as_given(folder):
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    record = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                        {"type": "image_url", "image_url": {"url": "https://x.org/a.png"}},
                                                        text("Same?")]}, REPLY]}
    spec = DatasetSpec(path=str(write_jsonl(folder / "chats.jsonl", [record])), remote_images=True)
    assert images.images_in(data.load(spec, "sft")[0]["messages"]) == [url, "https://x.org/a.png"]
    assert images.load_image(url).mode == "RGB" and images.load_image(url).size == (4, 3)


def test_text_records_come_out_unchanged(tmp_path):
    """Strings stay strings, '<image>' without an image column is text: text fingerprints do not move."""
    records = [{"messages": [{"role": "user", "content": "What is <image>?"}, {"role": "assistant", "content": "4"}]},
               {"messages": [{"role": "user", "content": "Add"},
                             {"role": "assistant", "content": None, "tool_calls": [{"name": "add"}]},
                             {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}]}]
    spec = str(write_jsonl(tmp_path / "chats.jsonl", records))
    assert json.dumps(data.load(spec, "sft")) == (  # as before content parts (a tool-call turn's null content: "")
        '[{"messages": [{"role": "user", "content": "What is <image>?"}, {"role": "assistant", "content": "4"}]}, '
        '{"messages": [{"role": "user", "content": "Add"}, '
        '{"role": "assistant", "tool_calls": [{"name": "add"}], "content": ""}, '
        '{"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}]}]')
    assert not images.has_images(data.load(spec, "sft")) and not images.has_images(data.prepared(spec, "sft"))


# --- what stages get -----------------------------------------------------------------------------------

def test_prepared_gives_every_message_parts_when_some_record_has_images(folder):
    """One Arrow type for the set: a text-only record among image ones gets parts too."""
    records = [{"messages": [{"role": "user", "content": "<image>Colour?"}, REPLY], "images": ["images/red.png"]},
               {"messages": [{"role": "user", "content": "No image here"}, REPLY], "images": []}]
    spec = str(write_jsonl(folder / "chats.jsonl", records))
    rows = data.prepared(spec, "sft")
    assert images.has_images(rows)
    assert [images.plain_messages(row["messages"]) for row in rows] == [
        [{"role": "user", "content": [image(folder / "images/red.png"), text("Colour?")]},
         {"role": "assistant", "content": [text("Red.")]}],
        [{"role": "user", "content": [text("No image here")]}, {"role": "assistant", "content": [text("Red.")]}]]


def test_prepared_parquet_with_an_image_feature_is_not_decoded(folder):
    import datasets

    rows = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "<image>Colour?"}, REPLY]],
                                       "images": [[str(folder / "images/red.png")]]},
                                      features=datasets.Features({
                                          "messages": [{"role": datasets.Value("string"),
                                                        "content": datasets.Value("string")}],
                                          "images": datasets.List(datasets.Image())}))
    rows.to_parquet(str(folder / "chats.parquet"))
    prepared = data.prepared(str(folder / "chats.parquet"), "sft")
    ref = images.images_in(prepared[0]["messages"])[0]
    assert images.load_image(ref).getpixel((0, 0)) == (255, 0, 0)


# --- bad images and parts, each named ------------------------------------------------------------------

def chat(*parts):
    return {"messages": [{"role": "user", "content": list(parts)}, REPLY]}


def test_missing_image_says_where_it_looked(folder):
    path = write_jsonl(folder / "chats.jsonl", [chat(image("images/red.png")), chat(image("images/x.png"))])
    looked = " and ".join(str(p) for p in [folder / "images/x.png", *paths.candidates("images/x.png")])
    assert error_of(path) == f"{path}:2: messages[0].content[0]: image 'images/x.png': file not found (looked in {looked})"


@pytest.mark.parametrize("content,reason", [
    (b"", "0-byte file"),
    (b"hello, not an image", "not an image (PIL: cannot identify image file)"),
    (png()[:50], "damaged image (PIL: Truncated File Read)"),
    (png((16385, 1)), f"16385x1 px (each side must be 1 to {images.MAX_SIDE})"),
], ids=["empty", "text", "truncated", "too-wide"])
def test_bad_image_files(folder, content, reason):
    (folder / "images/bad.png").write_bytes(content)
    path = write_jsonl(folder / "chats.jsonl", [chat(text("Colour?"), image("images/bad.png"))])
    assert error_of(path) == f"{path}:1: messages[0].content[1]: image 'images/bad.png': {reason}"


def test_image_limits(monkeypatch, folder):
    monkeypatch.setattr(images, "MAX_PIXELS", 10)
    monkeypatch.setattr(images, "MAX_BYTES", 100)
    assert images.size_problem(4, 3) == "4x3 px is 0 MP, over the 0 MP limit"
    (folder / "images/big.png").write_bytes(png() + b"\0" * 100)
    assert images.file_problem(folder / "images/big.png") == "0.0 MB, over the 0 MB limit"


def test_remote_image_needs_permission(folder):
    path = write_jsonl(folder / "chats.jsonl", [chat({"type": "image_url", "image_url": {"url": "https://x.org/a.png"}})])
    assert error_of(path) == (f"{path}:1: messages[0].content[0]: image 'https://x.org/a.png': remote images are not "
                              "fetched at plan time, so not checked; set remote_images: true on this dataset to use them")


def test_bad_data_url(folder):
    url = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    path = write_jsonl(folder / "chats.jsonl", [chat({"type": "image", "image": url})])
    assert error_of(path) == f"{path}:1: messages[0].content[0]: image {url!r}: not an image (PIL: cannot identify image file)"


def test_image_count_must_match_the_placeholders(folder):
    record = {"messages": [{"role": "user", "content": "<image><image>Same?"}, REPLY], "images": ["images/red.png"]}
    path = write_jsonl(folder / "chats.jsonl", [record])
    assert error_of(path) == (f"{path}:1: 'images' has 1 image(s) but 'messages' has 2 place(s) for one "
                              "('<image>' in the text or an image part without an image)")


@pytest.mark.parametrize("part,reason", [
    ({"type": "audio", "audio": "a.wav"}, "unknown part type 'audio' (expected one of text, image, image_url)"),
    ({"type": "text"}, "text part has no 'text'"),
    ({"type": "text", "text": " "}, "empty text"),
    ({"type": "image", "image": 3}, "an image must be a path, URL, data URL or image bytes, got number"),
    ({"type": "image_url", "image_url": {}}, "image_url part needs 'image_url': {'url': ...}, got null"),
    ("red.png", "must be an object with a type, got string"),
], ids=["audio", "no-text", "blank-text", "number", "no-url", "string"])
def test_bad_parts(folder, part, reason):
    path = write_jsonl(folder / "chats.jsonl", [chat(text("Colour?"), part)])
    separator = " " if reason.startswith("must") else ": "
    assert error_of(path) == f"{path}:1: messages[0].content[1]{separator}{reason}"


def test_image_part_without_an_image_needs_an_images_column(folder):
    path = write_jsonl(folder / "chats.jsonl", [chat({"type": "image"}, text("Colour?"))])
    assert error_of(path) == (f"{path}:1: messages[0].content[0]: image part has no image: give it 'image', 'path' "
                              "or 'url', or give the record an 'images' list")


def test_each_image_is_opened_once(monkeypatch, folder):
    opened = []
    real = images._image_problem
    monkeypatch.setattr(images, "_image_problem", lambda stream: opened.append(1) or real(stream))
    monkeypatch.setattr(images, "_PROBLEMS", {})
    path = write_jsonl(folder / "chats.jsonl", [chat(image("images/red.png"), text("?"))] * 3)
    assert data.check(str(path), "sft").records == 3
    assert len(opened) == 1


def test_a_checked_file_is_checked_again_when_an_image_changes(folder):
    """The data file is the same; its images are not: the store's check result must not hide that."""
    cache = CheckCache(folder / "store")
    path = write_jsonl(folder / "chats.jsonl", [chat(image("images/new.png"), text("Colour?"))])
    for _ in range(2):
        with pytest.raises(DataError, match="image 'images/new.png': file not found"):
            data.check(str(path), "sft", cache)
    (folder / "images/new.png").write_bytes(png())
    assert not data.check(str(path), "sft", cache).cached
    assert data.check(str(path), "sft", cache).cached
    (folder / "images/new.png").write_bytes(b"")
    with pytest.raises(DataError, match="image 'images/new.png': 0-byte file"):
        data.check(str(path), "sft", cache)
