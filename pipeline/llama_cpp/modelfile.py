"""An Ollama Modelfile for an exported GGUF: `ollama create NAME -f Modelfile` in the artifact folder.

Ollama renders prompts with its own Go templates, not with the GGUF's Jinja chat template. For the
two turn formats we can recognise we write the equivalent Go template; for any other we leave
TEMPLATE out and Ollama derives one from `tokenizer.chat_template` in the GGUF. Stop tokens are
always listed: a model whose end-of-turn token is not a stop runs on until the length limit.
"""
from __future__ import annotations

import json
from pathlib import Path

# Go-template equivalents of the HF chat templates (Ollama's docs/template.md forms): the turns, then the
# assistant's opening, like `add_generation_prompt=True` (replaced by the template's own opening where it
# adds more, e.g. Qwen3's empty think block with thinking off). llama.cpp adds BOS when the GGUF says so.
TURNS = {
    "chatml": "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}",
    "llama3": ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
               "{{ .Content }}<|eot_id|>\n{{- end }}"),
}
OPENINGS = {"chatml": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
TEMPLATES = {style: TURNS[style] + OPENINGS[style] for style in TURNS}
_MARKERS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>"}


def template_style(chat_template: str | None) -> str | None:
    """'chatml', 'llama3' or None (a format we do not translate)."""
    for style, marker in _MARKERS.items():
        if chat_template and marker in chat_template:
            return style
    return None


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # Ollama reads Go-style double-quoted strings


def render(gguf_name: str, chat_template: str | None, stop_tokens: list[str], title: str = "",
           system: str | None = None, generation_prompt: str | None = None) -> str:
    """`system`: the system prompt the template adds to a chat without one (Ollama's SYSTEM does the same);
    `generation_prompt`: what the template writes to open the assistant's turn."""
    style = template_style(chat_template)
    title = " ".join(title.split())  # a model name cannot start a line of its own
    lines = [f"# Ollama Modelfile{f' for {title}' if title else ''}, written by tunechain's gguf stage.",
             "#   ollama create NAME -f Modelfile && ollama run NAME",
             f"FROM ./{gguf_name}"]
    if style:
        opening = generation_prompt if generation_prompt and generation_prompt.startswith(OPENINGS[style]) \
            else OPENINGS[style]
        lines += [f"# {style} turns, the same text as the HF chat template (tokenizer.chat_template in the GGUF)",
                  f'TEMPLATE """{TURNS[style]}{opening}"""']
    else:
        lines += ["# No TEMPLATE: the chat format is not ChatML or Llama 3, so Ollama reads the Jinja template",
                  "# stored in the GGUF (tokenizer.chat_template). Check `ollama show NAME --template`."]
    if system:
        lines += ["# The chat template's default system prompt, used when a chat brings none (as in training and eval)",
                  f'SYSTEM """{system}"""' if '"""' not in system and not system.endswith('"') else
                  f"SYSTEM {_quoted(system)}"]  # a triple quote inside would end the block early
    if stop_tokens:
        lines.append("# Generation ends at these tokens (the model's eos and generation_config.json eos_token_id)")
        lines += [f"PARAMETER stop {_quoted(token)}" for token in stop_tokens]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, gguf_name: str, chat_template: str | None, stop_tokens: list[str], title: str = "",
          system: str | None = None, generation_prompt: str | None = None) -> Path:
    path = Path(out_dir) / "Modelfile"
    path.write_text(render(gguf_name, chat_template, stop_tokens, title, system, generation_prompt), encoding="utf-8")
    return path
