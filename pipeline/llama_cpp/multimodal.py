"""Images in llama.cpp: a GGUF language model plus its mmproj file (the image encoder and projector),
through libmtmd as the installed bindings ship it.

A prompt holds one media marker per image; mtmd splits it into text and image chunks (the image
chunks laid out as the model family does: Idefics3's tiles and overview with their row/column tokens),
encodes the images and evaluates everything into the context. Generation then goes on token by token
from the language model's logits, greedily, as the text backend does.
"""
from __future__ import annotations

import ctypes
from pathlib import Path


class Projector:
    """An mmproj file opened against a loaded llama_cpp.Llama."""

    def __init__(self, mmproj: Path, llm, n_threads: int, use_gpu: bool = False):
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd, self.llm = mtmd, llm
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = use_gpu, n_threads, False
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp cannot open the image projector {mmproj}")
        if not mtmd.mtmd_support_vision(self.ctx):
            raise RuntimeError(f"{mmproj} has no image encoder")
        self.marker = mtmd.mtmd_default_marker().decode()

    def prefill(self, text: str, images: list[bytes]) -> int:
        """Evaluate `text` (one marker per image, special tokens parsed, none added) with the encoded images
        from position 0; returns the number of positions used. The logits of the last one are ready."""
        import llama_cpp

        mtmd = self._mtmd
        bitmaps = [mtmd.mtmd_helper_bitmap_init_from_buf(
            self.ctx, (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data)), len(data), False) for data in images]
        if not all(bitmaps):
            raise ValueError("llama.cpp could not decode one of the images")
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            encoded = text.encode("utf-8")
            request = mtmd.mtmd_input_text()
            request.text, request.text_len, request.add_special, request.parse_special = encoded, len(encoded), False, True
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            code = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(request), array, len(bitmaps))
            if code != 0:
                raise ValueError(f"llama.cpp could not lay out the prompt's {len(images)} image(s) (mtmd_tokenize "
                                 f"{code}: a marker per image?)")
            self.llm.reset()
            self.llm._ctx.kv_cache_clear()
            positions = llama_cpp.llama_pos(0)
            code = mtmd.mtmd_helper_eval_chunks(self.ctx, self.llm._ctx.ctx, chunks, 0, 0, self.llm.n_batch, True,
                                                ctypes.byref(positions))
            if code != 0:
                raise RuntimeError(f"llama.cpp failed to evaluate an image prompt (mtmd {code})")
            self.llm.n_tokens = positions.value  # the text model continues from here
            return positions.value
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def greedy(self, text: str, images: list[bytes], max_new_tokens: int, is_end) -> tuple[list[int], bool]:
        """Greedy new tokens after the prompt, cut at the first end-of-generation token."""
        import numpy as np
        import llama_cpp

        self.prefill(text, images)
        vocab = self.llm.n_vocab()
        ids: list[int] = []
        while len(ids) < max_new_tokens:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1), shape=(vocab,))
            token = int(np.argmax(logits))
            if is_end(token):
                return ids, True
            ids.append(token)
            self.llm.eval([token])
        return ids, False

    def close(self) -> None:
        if self.ctx:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None
