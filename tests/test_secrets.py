"""Secrets never land in what a run writes (pipeline/redaction.py): redaction by what is a secret, not by
a substring (`max_new_tokens` stays visible), the same filter for chain.json's overrides, Hydra's
record, manifests, metrics and the W&B run files; Hydra's .hydra/*.yaml and multirun.yaml scrubbed before the
plan runs (a dry run, a failed plan, a sweep); and W&B's own environment variables are respected."""

import pytest

from conftest import run_main, tiny_overrides
from pipeline.redaction import REDACTED, is_secret, redact, redact_override


@pytest.mark.parametrize("key, value, secret", [
    ("api_key", "abc", True), ("wandb_api_key", "abc", True), ("password", "x", True), ("secret", "x", True),
    ("hf_token", "hf_abcdefghijklmnopqrstuvwxyz", True), ("access_token", "ghp_0123456789abcdef0123", True),
    ("max_new_tokens", 256, False), ("speed_new_tokens", 64, False), ("max_tokens", 64, False),
    ("pad_token", "<|im_end|>", False), ("api_key_env", "TUNECHAIN_API_KEY", False), ("api_key", None, False),
    ("secret_key", "x", True), ("aws_secret_access_key", "x", True), ("private_key", "x", True),
    ("authorization", "Bearer x", True), ("key_env", "MY_KEY", False),
])
def test_what_is_a_secret(key, value, secret):
    assert is_secret(key, value) is secret


def test_configs_and_overrides_are_redacted_by_key_and_by_environment_value(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_environment_secret_0123456789")
    config = {"eval": {"max_new_tokens": {"math": 256}}, "judge": {"api_key": "sk-abc"},
              "note": "token is hf_environment_secret_0123456789"}
    assert redact(config) == {"eval": {"max_new_tokens": {"math": 256}}, "judge": {"api_key": REDACTED},
                              "note": f"token is {REDACTED}"}
    assert redact_override("+some.api_key=sk-live-1") == f"+some.api_key={REDACTED}"
    assert redact_override("stages.eval_base.max_new_tokens.math=8") == "stages.eval_base.max_new_tokens.math=8"


@pytest.mark.parametrize("text, kept", [
    ("git clone https://alice:pa55word-xyz@github.com/o/r.git", "git clone https://<redacted>@github.com/o/r.git"),
    ("GET http://127.0.0.1:8080/v1/models?api-key=sk-live-12345&page=2",
     "GET http://127.0.0.1:8080/v1/models?api-key=<redacted>&page=2"),
    ("https://host/x?a=1&token=abcdef0123456789", "https://host/x?a=1&token=<redacted>"),
    ("Authorization: Bearer sk-proj-0123456789abcdef", "Authorization: Bearer <redacted>"),
    ("the bearer of good news; see https://docs.python.org:443/3/", "the bearer of good news; see "
                                                                    "https://docs.python.org:443/3/"),
])
def test_credentials_inside_strings_are_redacted(text, kept):
    assert redact({"log": text}) == {"log": kept}


def test_the_value_of_a_variable_a_config_names_is_a_secret(monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "server-key-value-0123")  # a name no pattern would call secret
    config = {"judge": {"api_key_env": "MY_SERVER_KEY"}, "note": "called with server-key-value-0123"}
    assert redact(config) == {"judge": {"api_key_env": "MY_SERVER_KEY"}, "note": f"called with {REDACTED}"}


SECRETS = {"WANDB_API_KEY": "wandb-env-secret-0123456789abcdef", "HF_TOKEN": "hf_env_secret_abcdefghijklmnop",
           "OPENAI_API_KEY": "sk-env-secret-0123456789abcdef"}
CLI_SECRET = "sk-cli-secret-0123456789abcdefgh"


def test_no_secret_in_any_file_of_the_run(tiny_llama, tmp_path):
    """Tokens in the environment and on the command line; W&B on (offline by WANDB_MODE, although a key is set)."""
    overrides = [*tiny_overrides(tiny_llama), "logger=wandb", "stages.eval_base.tasks=[math]",
                 "stages.eval_tuned.tasks=[math]", f"+some.api_key={CLI_SECRET}", "+note=${oc.env:HF_TOKEN}"]
    result = run_main(overrides, tmp_path, env={**SECRETS, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    wandb_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert wandb_runs, "W&B did not write an offline run although WANDB_MODE=offline"
    leaked = []
    for folder in (tmp_path / "run", tmp_path / "store"):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                leaked += [f"{path}: {name}" for name, value in {**SECRETS, "cli": CLI_SECRET}.items()
                           if value.encode() in data]
    assert not leaked, leaked
    chain = (tmp_path / "run" / "chain.json").read_text()
    assert f"+some.api_key={REDACTED}" in chain and "max_new_tokens.math=8" in chain  # visible, not redacted
    run_file = next(wandb_runs[0].glob("*.wandb")).read_bytes()  # an offline run keeps its config in here
    assert b"max_new_tokens" in run_file and REDACTED.encode() in run_file


def test_an_online_setup_that_cannot_work_stops_before_any_stage(tmp_path):
    env = {"WANDB_API_KEY": "not-a-real-key-0123456789", "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_MODE": ""}
    result = run_main(["logger=wandb", "logger.mode=online"], tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "cannot be reached" in line and "WANDB_MODE=offline" in line
    assert not list((tmp_path / "store").glob("*/*/artifact.json"))  # no stage ran


HYDRA_SECRETS = {"cli": "SECRETVALUE123-cli-0123", "env": "envsecret-4567890abcdef"}


@pytest.mark.parametrize("args, returncode", [
    (["+dry_run=true"], 0),                                    # a dry run
    (["seed=-1"], 2),                                          # a plan that fails
    (["-m", "+dry_run=true", "seed=1,2"], 0),                  # a sweep of dry runs
    (["-m", "+dry_run=true", "stages.sft.learning_rate=abc,1e-4"], 1),  # a sweep Hydra refuses before any job
], ids=["dry_run", "failed_plan", "multirun", "refused_sweep"])
def test_hydra_record_holds_no_secret_whatever_becomes_of_the_run(tmp_path, args, returncode):
    """A secret on the command line (by key) and one from the environment (by value), in every file Hydra
    writes: .hydra/{config,hydra,overrides}.yaml of each job and the sweep's multirun.yaml."""
    overrides = [*args, "logger=none", f"+wandb_api_key={HYDRA_SECRETS['cli']}", f"+note={HYDRA_SECRETS['env']}"]
    result = run_main(overrides, tmp_path, timeout=120, env={"MY_SERVICE_TOKEN": HYDRA_SECRETS["env"]})
    assert result.returncode == returncode, result.stderr[-2000:]
    written = [p for folder in ("run", "sweep", "store") for p in (tmp_path / folder).rglob("*") if p.is_file()]
    hydra_files = {p.name for p in written if p.suffix == ".yaml"}
    assert hydra_files == ({"multirun.yaml"} if returncode == 1 else
                           {"config.yaml", "hydra.yaml", "overrides.yaml"} | ({"multirun.yaml"} if "-m" in args else set()))
    leaked = [f"{p}: {name}" for p in written for name, value in HYDRA_SECRETS.items() if value.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert any(f"+wandb_api_key={REDACTED}" in p.read_text() for p in written if p.suffix == ".yaml")
