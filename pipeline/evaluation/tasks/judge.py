"""An LLM judge's 1-10 grades of the instruct answers: an OpenAI-compatible endpoint, or a GGUF
stage of the same chain served on loopback for the occasion (`judge_stage`)."""
from __future__ import annotations

from pipeline.backends import serving
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.judge import check_config, grade


def check(cfg, where: str) -> None:
    if cfg.judge_stage is None:  # the endpoint must be known before anything runs
        check_config(cfg.judge, f"{where}.judge")


@task("judge", order=31, packages=("openai",), extra="gguf", headlines=("judge_score",), needs=("instruct",), check=check)
def run(ev: EvalRun) -> dict:
    """Grades of the instruct task's answers; judge.jsonl keeps each verdict."""
    cfg, ctx = ev.cfg, ev.ctx
    records, outputs = ev.shared["instruct"]
    items = [{"question": r["prompt"], "answer": o, "reference": r.get("reference") or None}
             for r, o in zip(records, outputs)]
    verdicts = _grade_with_stage(cfg, items, ctx) if cfg.judge_stage else grade(cfg.judge, items)
    verdicts.write_jsonl(ctx.out_dir / "judge.jsonl", items)
    summary = verdicts.summary()
    ctx.log(f"judge: {summary['n_parsed']} graded (mean {summary['mean_score']}), {summary['n_unparsable']} "
            f"unparsable, {summary['n_failed']} failed requests")
    return {"judge_score": summary["mean_score"], "judge_parsed": summary["n_parsed"],
            "judge_unparsable": summary["n_unparsable"], "judge_failed": summary["n_failed"],
            "judge_distribution": summary["distribution"]}


def _grade_with_stage(cfg, items: list[dict], ctx):
    """Serve the chain's judge GGUF on loopback with a one-off key, grade, stop the server."""
    import dataclasses
    import os
    import secrets

    judge = ctx.chain[cfg.judge_stage]
    key = secrets.token_urlsafe(16)
    port = serving.free_port("127.0.0.1")
    command = serving.llama_cpp_command(judge.gguf_file(), "127.0.0.1", port, 4096, "judge", os.cpu_count() or 1, [],
                                        ctx.device)
    server = serving.start(command, serving.server_env("llama.cpp", key, "127.0.0.1", port),
                           ctx.out_dir / "judge_server.log", "127.0.0.1", port)
    variable = "TUNECHAIN_STAGE_JUDGE_KEY"
    try:
        serving.wait_ready(server, key, 120)
        os.environ[variable] = key
        local = dataclasses.replace(cfg.judge, base_url=f"http://127.0.0.1:{port}/v1", api_key_env=variable,
                                    model="judge")
        return grade(local, items)
    finally:
        os.environ.pop(variable, None)
        serving.stop(server)
