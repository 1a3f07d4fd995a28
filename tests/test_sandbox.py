"""The code sandbox against hostile candidates: each attack is contained and scored as failed,
error, timeout or memory, never passed; the tests it would have to pass always fail."""
import os
import subprocess
import time

import pytest

from pipeline.evaluation.scoring import sandbox

FAILING_TESTS = "assert False, 'the tests never pass'\n"
NAMESPACES = sandbox.namespaces_problem()
needs_namespaces = pytest.mark.skipif(NAMESPACES is not None, reason=f"no namespaces sandbox here: {NAMESPACES}")


def attack(program: str, tests: str = FAILING_TESTS, mode: str = "namespaces", **limits) -> dict:
    return sandbox.run(program, tests, sandbox.Limits(**{"timeout_s": 3.0, **limits}), mode)


@needs_namespaces
def test_a_right_program_passes_and_a_wrong_one_fails():
    assert attack("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n")["status"] == "passed"
    wrong = attack("def add(a, b):\n    return a - b\n", "assert add(1, 2) == 3\n")
    assert wrong["status"] == "failed" and "tests.py" in wrong["stderr_tail"] and "AssertionError" in wrong["stderr_tail"]


@needs_namespaces
def test_no_network_not_even_loopback():
    for host in ("1.1.1.1", "127.0.0.1"):
        outcome = attack(f"import socket\nsocket.create_connection(({host!r}, 80), timeout=2)\n",
                         "pass\n")
        assert outcome["status"] == "error" and "Network is unreachable" in outcome["stderr_tail"]


@needs_namespaces
def test_the_evaluators_environment_and_secrets_are_out_of_reach(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNECHAIN_TEST_SECRET", "hunter2")
    look = ("import os\nseen = []\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
            "        seen.append(open(f'/proc/{pid}/cmdline', 'rb').read())\n"
            "        try:\n            seen.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "        except ValueError:\n            pass\n")
    tests = ("assert b'hunter2' not in b''.join(seen)\nassert 'TUNECHAIN_TEST_SECRET' not in os.environ\n"
             "assert os.getpid() == 1 and len([p for p in os.listdir('/proc') if p.isdigit()]) == 1\n")
    assert attack(look, tests)["status"] == "passed"  # it sees only itself, with a clean environment
    home = os.path.expanduser("~")
    assert attack(f"import os\nfound = os.listdir({home!r})\n",
                  "assert not any(not n.startswith('.') for n in found), found\n")["status"] == "passed"


@needs_namespaces
def test_writes_outside_its_box_fail(tmp_path):
    for target in (tmp_path / "written", os.path.join(os.getcwd(), "written_by_candidate")):
        outcome = attack(f"open({str(target)!r}, 'w').write('x')\n", "pass\n")
        assert outcome["status"] == "error", outcome
        assert not os.path.exists(target)
    assert attack("open('here.txt', 'w').write('x')\n", "assert open('here.txt').read() == 'x'\n")["status"] == "passed"


@needs_namespaces
def test_a_fork_bomb_is_capped_and_stopped():
    started = time.monotonic()
    outcome = attack("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                     timeout_s=2.0)
    assert outcome["status"] == "timeout"
    assert time.monotonic() - started < 10
    if sandbox.pids_cap() != "none":  # the cap held: forks failed beyond it
        counted = attack("import os\npids = []\ntry:\n    for _ in range(200):\n        pid = os.fork()\n"
                         "        if pid == 0:\n            import time; time.sleep(30)\n        pids.append(pid)\n"
                         "except OSError:\n    pass\n", "assert len(pids) < 64, len(pids)\n")
        assert counted["status"] == "passed", counted


@needs_namespaces
def test_setsid_and_sleep_do_not_outlive_the_run():
    marker = f"tunechain-escape-{os.getpid()}"
    outcome = attack(f"import subprocess\nsubprocess.Popen(['setsid', 'sh', '-c', 'exec -a {marker} sleep 60'])\n"
                     "subprocess.Popen(['sleep', '61'], start_new_session=True)\n", "pass\n")
    assert outcome["status"] == "passed"
    time.sleep(0.3)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert not left, f"processes outlived the sandbox: {left}"


@needs_namespaces
def test_a_forged_verdict_never_passes():
    forgeries = {
        "argv and fds": ("import os, sys\nfor name in sys.argv:\n    try:\n        open(name, 'w').write('passed')\n"
                         "    except OSError:\n        pass\nfor fd in range(3, 64):\n    try:\n"
                         "        os.write(fd, b'0' * 32 + b' passed')\n    except OSError:\n        pass\n"
                         "os._exit(0)\n"),
        "frames": "import sys\nframe = sys._getframe(1)\n",
        "traceback frames": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    frame = e.__traceback__.tb_frame\n",
        "generator frames": "def g():\n    yield\nframe = g().gi_frame\n",
        "memory": "open('/proc/self/mem', 'rb')\n",
        "gc": "import gc\ngc.get_objects()\n",
        "ctypes": "import ctypes\nctypes.CDLL(None)\n",
        "exit zero": "import sys\nsys.exit(0)\n",
    }
    for name, program in forgeries.items():
        outcome = attack(program)
        assert outcome["status"] in ("error", "failed"), (name, outcome)
    # what the standard library does with the caller's frame still works (a ValueError it catches)
    assert attack("from collections import namedtuple\nP = namedtuple('P', 'x y')\n",
                  "assert P(1, 2).y == 2\n")["status"] == "passed"


@needs_namespaces
def test_a_big_allocation_is_a_memory_failure():
    assert attack("data = bytearray(1024 ** 3)\n", "pass\n")["status"] == "memory"
    assert attack("data = bytearray(64 * 1024 ** 2)\n", "assert len(data) > 0\n")["status"] == "passed"


def test_limits_mode_runs_without_namespaces(monkeypatch):
    """The weaker mode: limits and a clean environment, the host's filesystem."""
    monkeypatch.setenv("TUNECHAIN_TEST_SECRET", "hunter2")
    assert attack("import os\n", "assert 'TUNECHAIN_TEST_SECRET' not in os.environ\n", mode="limits")["status"] == "passed"
    assert attack("while True:\n    pass\n", mode="limits", timeout_s=1.0)["status"] == "timeout"
    assert attack("import sys\nsys._getframe()\n", mode="limits")["status"] == "error"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="expected one of namespaces, limits"):
        sandbox.run("", "", mode="docker")
