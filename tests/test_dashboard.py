"""The dashboard in a real headless browser (Debian's chromium through chromedriver): two real chains on a
tiny model (a quickstart, then lora_merge + GGUF reusing its SFT), then every page: the run list, a run's
graph and tables against chain.json, the store's lineage (built by one run, reused by the other), a
comparison, a recipe planned and started from the page that finishes and appears, and a removal. No page
may log a console error; a screenshot of each goes to tests/output/dashboard/ for people to look at."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, merge_overrides, tiny_overrides

from pipeline.engine import report

pytestmark = pytest.mark.skipif(not (shutil.which("chromedriver") and shutil.which("chromium")),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
SHOTS = ROOT / "tests" / "output" / "dashboard"
TOKEN = "dashboard-test-token"


def _chain(args, run_dir: Path, store: Path) -> dict:
    env = {**os.environ, "TUNECHAIN_STORE": str(store), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "chain.json").read_text())


@pytest.fixture(scope="module")
def site(tiny_llama, tmp_path_factory):
    import uvicorn

    from pipeline.dashboard.app import Settings, create_app

    tmp = tmp_path_factory.mktemp("dashboard")
    outputs, store = tmp / "outputs", tmp / "store"
    shared = ["data.sft.limit=16"]
    first = _chain([*tiny_overrides(tiny_llama), *shared], outputs / "day" / "quickstart", store)
    gguf = [*merge_overrides(tiny_llama), "+stage@stages.gguf=gguf", "stages.gguf.quant=f16", "stages.gguf.parity=false",
            "+stage@stages.eval_gguf=eval", "stages.eval_gguf.inputs=[gguf]", "stages.eval_gguf.compare_with=eval",
            "stages.eval_gguf.limit=8", "stages.eval_gguf.max_new_tokens.math=8"]
    second = _chain(gguf, outputs / "day" / "lora_gguf", store)
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(roots=[outputs], store=store, token=TOKEN)),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield {"url": f"http://127.0.0.1:{port}", "first": first, "second": second, "store": store, "outputs": outputs,
           "tiny": tiny_llama}
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _open(browser, url: str, shot: str):
    browser.get(url)
    _settled(browser, shot)


def _settled(browser, shot: str):
    browser.save_screenshot(str(SHOTS / f"{shot}.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def _status(browser) -> str:
    """The run page's status; '' while the page's own 3-5 s refresh replaces it under the reader."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return browser.find_element(By.ID, "run-status").text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _cells(browser, table_id: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    table = browser.find_element(By.ID, table_id)
    return [[c.text for c in row.find_elements(By.CSS_SELECTOR, "th,td")] for row in table.find_elements(By.TAG_NAME, "tr")]


def test_runs_list_and_one_runs_graph_and_tables(site, browser):
    from selenium.webdriver.common.by import By

    _open(browser, site["url"], "runs")
    listed = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")]
    assert listed == ["outputs/day/lora_gguf", "outputs/day/quickstart"]  # newest first
    _open(browser, site["url"] + "/?recipe=quickstart", "runs_filtered")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")) == 1

    _open(browser, site["url"] + "/run/outputs/day/lora_gguf", "run")
    stages = {s["name"]: s for s in site["second"]["stages"]}
    drawn = {g.get_attribute("data-stage"): g.get_attribute("data-status")
             for g in browser.find_elements(By.CSS_SELECTOR, "svg.chain g.stage")}
    assert drawn == {"base": "base", **{name: s["status"] for name, s in stages.items()}}
    assert drawn["sft"] == "reused"  # the quickstart's SFT
    results = _cells(browser, "results")
    column = results[0].index("math_accuracy")
    row = next(r for r in results if r[0] == "eval_gguf")
    assert row[column] == report.fmt("math_accuracy", stages["eval_gguf"]["metrics"]["math_accuracy"])
    variants = _cells(browser, "variants")
    assert variants[0][0] == "variant" and {r[0] for r in variants[1:]} == {"merge", "gguf"}
    items = _cells(browser, "items")
    assert len(items) == 1 + 8  # eval_gguf's 8 held-out records


def test_store_lineage_comparison_and_removal(site, browser):
    from selenium.webdriver.common.by import By

    sft = next(s for s in site["first"]["stages"] if s["name"] == "sft")["fingerprint"]
    _open(browser, site["url"] + f"/store?fingerprint={sft}", "store")
    lineage = browser.find_element(By.ID, "lineage").text
    assert "built by: outputs/day/quickstart (sft)" in lineage and "reused by: outputs/day/lora_gguf (sft)" in lineage
    assert "made from it: model" in lineage  # the merge
    covered = json.loads(browser.find_element(By.ID, "fingerprint").text)  # what the SFT's fingerprint hashed
    assert covered["kind"] == "sft" and covered["config"]["max_steps"] == 4 and covered["config"]["dataset"]["limit"] == 16

    _open(browser, site["url"] + "/compare?run=outputs/day/quickstart&run=outputs/day/lora_gguf", "compare")
    config = {r[0]: r[1:] for r in _cells(browser, "compare-config")[1:]}
    assert "stages.gguf.quant" in config and config["stages.gguf.quant"][0] == '"(unset)"'
    metrics = _cells(browser, "compare-metrics")
    assert any(r[:2] == ["eval_tuned", "math_accuracy"] for r in metrics)

    quick_eval = next(s for s in site["first"]["stages"] if s["name"] == "eval_base")
    tuned_eval = next(s for s in site["first"]["stages"] if s["name"] == "eval_tuned")
    _open(browser, site["url"] + f"/compare?artifact={quick_eval['fingerprint']}&artifact={tuned_eval['fingerprint']}",
          "compare_artifacts")
    side_by_side = {r[0]: r[1:] for r in _cells(browser, "compare-artifacts")[1:]}
    assert side_by_side["math_n"] == [str(quick_eval["metrics"]["math_n"]), str(tuned_eval["metrics"]["math_n"])]
    assert any(r[0].startswith("inputs") for r in _cells(browser, "compare-fingerprints")[1:])  # base vs the SFT

    _open(browser, site["url"] + f"/store?fingerprint={quick_eval['fingerprint']}", "store_artifact")
    browser.find_element(By.XPATH, "//button[text()='remove…']").click()
    _settled(browser, "remove_confirm")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "confirm").click()
    _settled(browser, "removed")
    assert "is gone" in browser.find_element(By.ID, "removed").text
    assert not Path(quick_eval["artifact"]).exists() and Path(next(
        s for s in site["first"]["stages"] if s["name"] == "sft")["artifact"]).exists()


def test_a_recipe_started_from_the_page_finishes_and_appears(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open(browser, site["url"] + "/start", "start")
    Select(browser.find_element(By.ID, "recipe")).select_by_visible_text("quickstart")
    words = [*tiny_overrides(site["tiny"]), "data.sft.limit=16", "stages.sft.max_steps=2"]
    browser.find_element(By.ID, "overrides").send_keys(" ".join(words))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "plan-button").click()
    _settled(browser, "start_plan")
    assert "tunechain plan: recipe 'quickstart'" in browser.find_element(By.ID, "plan").text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "run-button").click()
    deadline = time.time() + 300
    while _status(browser) != "done":
        assert time.time() < deadline, browser.page_source[-2000:]
        time.sleep(2)
        browser.refresh()
    _settled(browser, "started_run")
    _open(browser, site["url"], "runs_after_start")
    listed = [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")]
    assert len(listed) == 3 and listed[0].endswith("_quickstart_dashboard")


def test_starting_and_removing_need_the_token(site):
    import httpx

    refused = httpx.post(site["url"] + "/start", data={"recipe": "quickstart", "token": "wrong"})
    assert refused.status_code == 403
    removal = httpx.post(site["url"] + "/store/remove", data={"fingerprint": "x", "confirm": "yes", "token": ""})
    assert removal.status_code == 403
    hydra = httpx.post(site["url"] + "/start", data={"recipe": "quickstart", "token": TOKEN,
                                                     "overrides": "hydra.run.dir=/tmp/elsewhere"})
    assert hydra.status_code == 400 and "Hydra's own settings are fixed here" in hydra.text


@pytest.mark.acceptance
def test_quickstart_and_quant_lab_in_the_dashboard(browser, tmp_path):
    """Acceptance from a fresh clone (issue 24): after the quickstart, recipe=quant_lab and lora_merge on the
    embedded model, the dashboard lists the runs, the store shows quant_lab reusing the quickstart's SFT, the
    variants table holds the report's figures, a comparison works, and the merged model's card parses."""
    import uvicorn
    from huggingface_hub import ModelCard
    from selenium.webdriver.common.by import By

    from pipeline.dashboard.app import Settings, create_app

    outputs, store = tmp_path / "outputs", tmp_path / "store"
    quick = _chain(["hardware.num_threads=2", "logger=none"], outputs / "day" / "quickstart", store)
    lab = _chain(["recipe=quant_lab", "hardware.num_threads=2", "logger=none"], outputs / "day" / "quant_lab", store)
    merged = _chain(["recipe=lora_merge", "hardware.num_threads=2", "logger=none"], outputs / "day" / "lora_merge", store)
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(roots=[outputs], store=store, token=TOKEN)),
                                           host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        _open(browser, url, "acceptance_runs")
        listed = {r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")}
        assert {"outputs/day/quickstart", "outputs/day/quant_lab"} <= listed
        sft = next(s for s in quick["stages"] if s["name"] == "sft")
        assert next(s for s in lab["stages"] if s["name"] == "sft")["status"] == "reused"
        _open(browser, url + f"/store?fingerprint={sft['fingerprint']}", "acceptance_store")
        assert "reused by: " in browser.find_element(By.ID, "lineage").text
        assert "outputs/day/quant_lab (sft)" in browser.find_element(By.ID, "lineage").text
        _open(browser, url + "/run/outputs/day/quant_lab", "acceptance_quant_lab")
        assert _cells(browser, "variants") == report.variants(lab["stages"])
        _open(browser, url + "/compare?run=outputs/day/quickstart&run=outputs/day/quant_lab", "acceptance_compare")
        assert len(_cells(browser, "compare-metrics")) > 1 and len(_cells(browser, "compare-config")) > 1
    finally:
        server.should_exit = True
    card = ModelCard.load(Path(next(s for s in merged["stages"] if s["name"] == "merge")["artifact"]) / "README.md")
    assert card.data.base_model and card.data.datasets == ["embedded/data/sft_train.jsonl"]
    assert "| params |" in card.text
