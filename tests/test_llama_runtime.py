"""llama.cpp on CPUs with AMX: weight repacking into AMX buffers crashes q8_0/q4 decoding
(ggml-org/llama.cpp#20824), so tunechain turns it off where the loaded ggml reports AMX, in-process
and in the server it starts. The subprocess test below decodes a quantized file through the same
path eval and parity use: on an AMX machine without the rule it dies of SIGSEGV and fails here."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("llama_cpp")

from conftest import ROOT  # noqa: E402

from pipeline.backends import serving  # noqa: E402
from pipeline.llama_cpp import runtime  # noqa: E402

AVX2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | REPACK = 1 |"
AMX = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |"


@pytest.mark.parametrize("mode, info, allowed", [("auto", AVX2, True), ("auto", AMX, False), ("off", AVX2, False),
                                                 ("on", AMX, True), ("", AMX, False)])
def test_repacking_is_off_exactly_where_ggml_reports_amx(monkeypatch, mode, info, allowed):
    monkeypatch.setenv(runtime.REPACK_ENV, mode)
    assert runtime.repack_allowed(info) is allowed


def test_a_bad_repack_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(runtime.REPACK_ENV, "maybe")
    with pytest.raises(ValueError, match="TUNECHAIN_LLAMA_REPACK='maybe': valid values are auto, on, off"):
        runtime.repack_allowed(AVX2)


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    """The embedded model as GGUF q8_0 (the type whose AMX repacking crashed)."""
    from conftest import EMBEDDED

    from pipeline.llama_cpp import converter

    out = tmp_path_factory.mktemp("q8")
    converter.convert(EMBEDDED, out / "model-q8_0.gguf", "q8_0")
    return out / "model-q8_0.gguf"


@pytest.mark.parametrize("mode, expected", [("off", False), ("on", True)])
def test_in_process_models_load_with_the_chosen_buffers(monkeypatch, q8_file, mode, expected):
    monkeypatch.setenv(runtime.REPACK_ENV, mode)
    llm = runtime.open_llama(q8_file, n_ctx=256)
    assert bool(llm.model_params.use_extra_bufts) is expected
    import llama_cpp.llama_cpp as bindings

    assert bool(bindings.llama_model_default_params().use_extra_bufts) is True  # the library is left as it was


def test_quantized_decoding_survives_on_this_cpu(q8_file):
    """Greedy decoding of a q8_0 file through the eval/parity backend, in a child process: a segfault
    (the AMX crash) is a failed test with the child's signal, not a dead test run. It must also give
    the transformers model's greedy tokens."""
    from conftest import EMBEDDED
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.backends.hf import hf_generate

    prompt = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    want = hf_generate(AutoModelForCausalLM.from_pretrained(EMBEDDED), tokenizer, [prompt], 1, 16, "cpu")[0]
    script = textwrap.dedent(f"""
        from pipeline.backends.gguf import LlamaCppBackend
        backend = LlamaCppBackend({str(q8_file)!r}, n_ctx=512)
        print("TOKENS", backend.generate([{prompt!r}], 16)[0].token_ids)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"decoding exited with {done.returncode} (-11: SIGSEGV): {done.stderr[-800:]}"
    assert f"TOKENS {want.token_ids}" in done.stdout, (done.stdout, want)


def test_the_server_is_started_through_the_safe_launcher():
    command = serving.llama_cpp_command(ROOT / "m.gguf", "127.0.0.1", 8001, 2048, "m", 2, [])
    assert command[1:3] == ["-m", "pipeline.llama_cpp.server"] and "--n_gpu_layers" not in command
    probe = ("import sys, runpy; sys.argv=['x', '--help']; import pipeline.llama_cpp.server as s; "
             "print(s.repack_allowed.__module__)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "pipeline.llama_cpp.runtime" in done.stdout, done.stderr[-500:]
