"""Which backend runs an artifact: llama.cpp for a GGUF, transformers for a model or an adapter."""
from __future__ import annotations

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.backends.base import Backend
from pipeline.backends.hf import HFBackend
from pipeline.backends.gguf import LlamaCppBackend
from pipeline.errors import PlanError
from pipeline.models.loading import load_processor


def open_backend(artifact: Artifact, ctx, dtype: str | None = None, batch_size: int = 32) -> Backend:
    """The backend that runs `artifact` (a model, an adapter or a GGUF) on ctx.device."""
    if artifact.kind == ArtifactKind.gguf:
        mmproj = artifact.mmproj_file()
        processor = None
        if mmproj is not None:  # a vision-language GGUF: prompts are rendered by the chain's processor
            base = ctx.chain["base"].path if "base" in ctx.chain else ctx.model.path
            processor = load_processor(base, ctx.model, padding_side="left")
        return LlamaCppBackend(artifact.gguf_file(), seed=ctx.seed, device=ctx.device, mmproj=mmproj,
                               processor=processor)
    if artifact.kind in (ArtifactKind.model, ArtifactKind.adapter):
        return HFBackend(artifact, ctx, dtype, batch_size)
    raise PlanError(f"no inference backend for artifact kind '{artifact.kind}' ({artifact.path})")
