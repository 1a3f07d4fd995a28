"""Images in chats: what a reference points at, the plan's checks, and what stages and evals call.

A canonical image part is {"type": "image", "image": ref}, ref an absolute local path, an http(s) URL or a
data URL. A relative path is looked for in the data file's folder, then where pipeline/paths.py looks.
Image bytes (a parquet or hub column in HF's Image storage {"bytes", "path"}, or raw bytes) are written
once into the cache, named by their sha256: records stay short strings (no base64 copy of every image in
datasets' Arrow cache), one image shared by many records is one file, and a stage loads it like any path.

The plan opens each distinct local image once (PIL's header and verify(); pixels are never decoded): it
must be a non-empty file under MAX_BYTES, of 1..MAX_SIDE px a side and at most MAX_PIXELS. Remote images
are not fetched at plan time; a dataset takes them only with remote_images: true.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Optional

from pipeline import paths
from pipeline.data.parts import CHAT_KEYS
from pipeline.data.problems import Invalid

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_SIDE = 16384            # px, each side (the largest texture side GPUs and most vision encoders accept)
MAX_PIXELS = 64_000_000     # width x height: below PIL's decompression-bomb warning (89 MP)
MAX_BYTES = 50 * 2**20      # one image file, or a data URL's decoded bytes
REMOTE = ("http://", "https://")

_PROBLEMS: dict[tuple, Optional[str]] = {}  # (path, mtime_ns, size) or data URL digest -> problem: each opened once


# ---------------------------------------------------------------------------------------------
# What stages and eval tasks call

def images_in(messages: list[dict]) -> list[str]:
    """The image references of a chat's image parts, in order (canonical messages or a Dataset row's)."""
    return [part["image"] for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if part.get("type") == "image"]


def load_image(ref: str) -> "Image":
    """A canonical reference (local path, http(s) URL, data URL) as an RGB PIL image, EXIF rotation applied."""
    from transformers.image_utils import load_image as load

    return load(ref)


def image_size(ref: str) -> Optional[tuple[int, int]]:
    """(width, height) of a local image or data URL, read from its header (no pixels decoded); None for a
    remote URL, which is not fetched for this."""
    import base64
    import io

    from PIL import Image

    if ref.startswith(REMOTE):
        return None
    source = io.BytesIO(base64.b64decode(ref.split(",", 1)[1])) if ref.startswith("data:") else ref
    with Image.open(source) as image:
        return image.size


def has_images(records: Iterable[dict]) -> bool:
    """Whether any record's chat has an image part: for a datasets.Dataset from its features (no row read),
    else record by record."""
    features = getattr(records, "features", None)
    if features is not None:
        return any(_has_image_field(features[key]) for key in CHAT_KEYS if key in features)
    return any(images_in(record[key]) for record in records for key in CHAT_KEYS
               if isinstance(record.get(key), list))


def plain_messages(messages: list[dict]) -> list[dict]:
    """A Dataset row's messages as the canonical ones: Arrow gives each part every part's fields, unused
    ones None, and chat templates test `'image' in part`."""
    return [{**m, "content": [{k: v for k, v in part.items() if v is not None} for part in m["content"]]}
            if isinstance(m.get("content"), list) else m for m in messages]


def _has_image_field(feature: Any) -> bool:
    if isinstance(feature, dict):
        return "image" in feature and "type" in feature or any(_has_image_field(f) for f in feature.values())
    inner = getattr(feature, "feature", None)
    return inner is not None and _has_image_field(inner)


# ---------------------------------------------------------------------------------------------
# References resolved (and checked) in canonical records

class ImageRefs:
    """Resolves the image references of a dataset's records: relative paths from `folder` (the data file's;
    None for a hub dataset), bytes into the cache; `verify` also checks each image (the plan's check).
    `files` gets each local image looked at, with its version (None: absent), for the check cache."""

    def __init__(self, folder: Optional[Path], remote: bool, verify: bool = True, files: Optional[dict] = None):
        self.folder, self.remote, self.verify, self.files = folder, remote, verify, files

    def resolved(self, record: dict) -> dict:
        """The record with every image part's reference canonical; Invalid naming the part for a bad image."""
        for key in CHAT_KEYS:
            chat = record.get(key)
            if isinstance(chat, list) and any(isinstance(m.get("content"), list) for m in chat):
                record = {**record, key: [{**m, "content": [self._part(p, f"{key}[{i}].content[{j}]")
                                                             for j, p in enumerate(m["content"])]}
                                          if isinstance(m.get("content"), list) else m
                                          for i, m in enumerate(chat)]}
        return record

    def _part(self, part: dict, where: str) -> dict:
        if part["type"] != "image":
            return part
        ref = part["image"]
        try:
            return {"type": "image", "image": self._ref(ref)}
        except Invalid as e:
            raise Invalid(f"{where}: image {_shown(ref)}: {e}") from None

    def _ref(self, ref: Any) -> str:
        if isinstance(ref, dict):  # HF's Image storage: the bytes where it has them, else its path
            ref = ref["bytes"] if isinstance(ref.get("bytes"), bytes) else ref["path"]
        if isinstance(ref, bytes):
            return self._local(stored(ref))
        if ref.startswith(REMOTE):
            if not self.remote:
                raise Invalid("remote images are not fetched at plan time, so not checked; set remote_images: "
                              "true on this dataset to use them")
            return ref
        if ref.startswith("data:"):
            if self.verify:
                _raise(_data_url_problem(ref))
            return ref
        return self._local(self._found(ref))

    def _found(self, ref: str) -> Path:
        given = Path(ref).expanduser()
        looked = [given] if given.is_absolute() else [self.folder / given] if self.folder else []
        looked += [c for c in paths.candidates(ref) if c not in looked]
        found = next((c for c in looked if c.exists()), None)
        if found is None:
            if self.files is not None:
                self.files.update(dict.fromkeys(map(str, looked)))
            raise Invalid(f"file not found (looked in {' and '.join(map(str, looked))})")
        return found.resolve()

    def _local(self, path: Path) -> str:
        if self.files is not None:
            self.files[str(path)] = version(path)
        if self.verify:
            _raise(file_problem(path))
        return str(path)


def version(path: Path) -> Optional[list]:
    """A file's [size, mtime_ns], None when absent: what the check cache compares."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _raise(problem: Optional[str]) -> None:
    if problem:
        raise Invalid(problem)


def _shown(ref: Any) -> str:
    if isinstance(ref, dict):
        return f"{ref['path']!r} (bytes)" if isinstance(ref.get("path"), str) else _shown(ref.get("bytes"))
    if isinstance(ref, bytes):
        return f"<{len(ref)} bytes>"
    return repr(ref if len(ref) <= 60 else ref[:57] + "...")


def stored(data: bytes) -> Path:
    """Image bytes as a file in the cache, named by their sha256 (written once, atomically)."""
    folder = paths.cache_root() / "images"
    path = folder / hashlib.sha256(data).hexdigest()
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
    return path


# ---------------------------------------------------------------------------------------------
# The checks

def file_problem(path: Path) -> Optional[str]:
    """What is wrong with a local image file, or None; each file version is opened once."""
    if path.is_dir():
        return "is a folder, not a file"
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = _bytes_problem(stat.st_size) or _image_problem(lambda: path.open("rb"))
    return _PROBLEMS[key]


def _data_url_problem(url: str) -> Optional[str]:
    key = ("data", hashlib.sha256(url.encode()).hexdigest())
    if key not in _PROBLEMS:
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            _PROBLEMS[key] = "a data URL must be data:image/<type>;base64,<data>"
        else:
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error as e:
                _PROBLEMS[key] = f"data URL is not valid base64 ({e})"
            else:
                _PROBLEMS[key] = _bytes_problem(len(data)) or _image_problem(lambda: io.BytesIO(data))
    return _PROBLEMS[key]


def _bytes_problem(size: int) -> Optional[str]:
    if size == 0:
        return "0-byte file"
    if size > MAX_BYTES:
        return f"{size / 2**20:.1f} MB, over the {MAX_BYTES // 2**20} MB limit"
    return None


def _image_problem(open_stream: Callable[[], IO[bytes]]) -> Optional[str]:
    """PIL reads the header (format, size) and verify() the structure; no pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), open_stream() as stream:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is the limit here
            with Image.open(stream) as image:
                width, height = image.size
                image.verify()
    except UnidentifiedImageError:
        return "not an image (PIL: cannot identify image file)"
    except Image.DecompressionBombError as e:
        return f"too many pixels (PIL: {e})"
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged: what verify() raises
        return f"damaged image (PIL: {e})"
    return size_problem(width, height)


def size_problem(width: int, height: int) -> Optional[str]:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        return f"{width}x{height} px (each side must be 1 to {MAX_SIDE})"
    if width * height > MAX_PIXELS:
        return f"{width}x{height} px is {width * height / 1e6:.0f} MP, over the {MAX_PIXELS / 1e6:.0f} MP limit"
    return None
