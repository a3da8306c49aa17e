"""The MLflow UI opens on the answer: a tiny ``compare``, a real ``mlflow server``, headless Chromium.

The printed ``models`` URL must show the model-training runs table (not the GenAI overview) with the
child runs by model name and their test balanced accuracy; the ``verdict`` URL the parent run, whose
description holds the verdict and the comparison table. A sweep's parent gets the same (its trials
by their value, a description with the best trial and the importances); ``fit --cv``'s is checked in
``tests/fit/test_crossval.py``.

``LF_UI_SCREENSHOTS=docs/images pytest tests/compare/test_mlflow_ui.py`` also saves the screenshots
of ``docs/mlflow-ui.md`` (small palette PNGs) from this same flow.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.compare import __main__ as compare_cli
from lightning_fusion.mlflow_ui import DEFAULT_UI, MAX_NOTE_CHARACTERS, NOTE_TAG, describe, view_url
from lightning_fusion.sweep.report import log_report
from lightning_fusion.sweep.study import load_study
from lightning_fusion.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from tests.conftest import PROJECT_ROOT, cli_argv, free_port, headless_chromium, small_overrides

SCREENSHOTS = os.environ.get("LF_UI_SCREENSHOTS")  # a folder: save the docs' screenshots there
SCREENSHOTS_FOLDER = Path(SCREENSHOTS).resolve() if SCREENSHOTS else None  # before a fixture changes directory
# the test: two trained models (the CNN and the ANN) and a procedure on them, one epoch; the docs'
# screenshots: also a trained fusion, and models that learned something
FUSIONS, EPOCHS = ("concat,ensemble_mean", 8) if SCREENSHOTS else ("ensemble_mean", 1)
MODELS = ["demo-cnn-image", "demo-ann-tabular", *(f"demo-fusion-{f}" for f in FUSIONS.split(","))]
WINDOW = (1400, 900)  # wide enough for a run page's description beside its details
BALANCED_ACCURACY = "metrics.`test/balanced_accuracy`"
RUN_NAME = "attributes.`Run Name`"
GENAI_ONLY = ("Token Usage", "Detect Issues", "Observability")  # on the GenAI overview, not on the runs view


@contextlib.contextmanager
def mlflow_server(uri: str, artifacts: str, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """``mlflow server`` over the store on a free 127.0.0.1 port; stopped, with its workers, however the test ends."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--default-artifact-root", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as output:  # to a file: a full pipe would block the server
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield process, url
    finally:
        # the CLI, the uvicorn process it starts and its job consumers: one process group. A few seconds
        # to stop, then killed (uvicorn would wait for the browser's open connections; the store is done)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while (process.poll() is None or group_alive(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process.poll() is None or group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def group_alive(group: int) -> bool:
    """Whether a process of the group is still running (not a zombie waiting for its parent)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, group_id = stat.read_text().rsplit(")", 1)[1].split()[:3]  # after "pid (comm)"
            if int(group_id) == group and state != "Z":
                return True
    return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until_serving(process: subprocess.Popen, url: str, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited ({process.returncode}): {log.read_text()[-2000:]}")
        if _answers(url):
            return
        time.sleep(0.25)
    raise AssertionError(f"mlflow server did not answer in {seconds} s: {log.read_text()[-2000:]}")


def _table(driver) -> list[dict[str, str]]:
    """The runs table as shown: one dict per row (column id → cell text), top to bottom.

    ag-grid splits a row over its pinned and scrolled parts; the parts share ``row-index``.
    """
    rows = driver.execute_script(
        """
        const rows = {};
        for (const part of document.querySelectorAll('.ag-row')) {
            const index = Number(part.getAttribute('row-index'));
            rows[index] = rows[index] || {};
            for (const cell of part.querySelectorAll('.ag-cell')) {
                rows[index][cell.getAttribute('col-id')] = cell.innerText.trim();
            }
        }
        return Object.keys(rows).sort((a, b) => a - b).map(k => rows[k]);
        """
    )
    return rows


def _wait(driver, condition, seconds: float = 60, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(lambda d: condition(d), message=what)


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _screenshot(driver, name: str) -> None:
    """A small palette PNG of the window for the docs (only with ``LF_UI_SCREENSHOTS``)."""
    if SCREENSHOTS_FOLDER is None:
        return
    from PIL import Image

    time.sleep(2)  # the page's last pieces (child runs, charts' placeholders)
    SCREENSHOTS_FOLDER.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=48, dither=Image.Dither.NONE).save(SCREENSHOTS_FOLDER / f"{name}.png", optimize=True)


def _quiet_assistant(driver, base: str) -> None:
    """MLflow's assistant panel opens itself on a first visit and covers a third of the page: not here."""
    driver.get(f"{base}/health")
    driver.execute_script(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    )


@pytest.fixture
def driver():
    """Headless Chromium, first: without it the test skips (fails in CI) before it trains anything."""
    browser = headless_chromium(WINDOW)
    yield browser
    browser.quit()


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_the_printed_urls_open_the_models_and_the_verdict(driver, small_cohort_master, mlflow_store, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    uri, artifacts = mlflow_store["uri"], mlflow_store["artifacts"]
    MlflowClient(uri).search_experiments()  # create the store's tables before the server and the runs share it
    log = tmp_path / "server.log"
    with mlflow_server(uri, artifacts, log) as (process, base):
        overrides = small_overrides(
            small_cohort_master,
            **{
                "trainer.max_epochs": EPOCHS,
                "data.split.train": 0.6,  # 12 test patients
                "data.split.val": 0.2,
                "data.split.test": 0.2,
                "tracking.artifact_root": artifacts,
                "tracking.log_model": False,
                "tracking.log_checkpoint": False,
                "evaluation.explain_patients": 0,
            },
        )
        assert compare_cli.main(["--fusions", FUSIONS, "--tracking-uri", uri, *cli_argv(overrides)]) == 0
        out = capsys.readouterr().out
        pages = dict(re.findall(r"^  (models|verdict): (\S+)$", out, flags=re.M))
        assert set(pages) == {"models", "verdict"}, out
        assert all(url.startswith(f"{DEFAULT_UI}/#/experiments/") for url in pages.values())
        pages = {name: url.replace(DEFAULT_UI, base) for name, url in pages.items()}

        client = MlflowClient(uri)
        parent = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.`lf.compare` = 'true'"
        )[0]
        experiment = client.get_experiment(parent.info.experiment_id)
        assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
        children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        logged = {run.info.run_name: run.data.metrics["test/balanced_accuracy"] for run in children}
        assert sorted(logged) == sorted(MODELS)

        wait_until_serving(process, base, log)
        _quiet_assistant(driver, base)

        # the models: the model-training runs table, the children by name, their balanced accuracy
        driver.get(pages["models"])
        _wait(
            driver,
            lambda d: len([r for r in _table(d) if r.get(BALANCED_ACCURACY)]) == len(MODELS),
            what="the runs table with a balanced-accuracy cell per model",
        )
        assert "/runs?" in driver.current_url
        body = _body(driver)
        assert "Run Name" in body and "test/balanced_accuracy" in body and "test/auroc" in body
        assert not [text for text in GENAI_ONLY if text in body], "the GenAI overview is shown"
        rows = _table(driver)
        shown = {row[RUN_NAME].splitlines()[-1]: float(row[BALANCED_ACCURACY]) for row in rows}  # after its colour
        assert sorted(shown) == sorted(MODELS)
        for name, value in shown.items():
            assert value == pytest.approx(logged[name], abs=0.006), (name, value, logged[name])
        values = [float(row[BALANCED_ACCURACY]) for row in rows]
        assert values == sorted(values, reverse=True), "best first"
        _screenshot(driver, "mlflow-ui-models")

        # the verdict: the parent run's page opens on its description, the verdict and the table
        driver.get(pages["verdict"])
        _wait(driver, lambda d: "best fusion:" in _body(d), what="the parent run's description")
        verdict = "//*[contains(text(), 'best fusion:')]"
        description = driver.find_element(By.XPATH, f"{verdict}/ancestor::*[.//table][1]")  # the markdown's
        table = description.find_element(By.TAG_NAME, "table").get_attribute("innerText")
        for name in ("cnn (image)", "ann (tabular)", *(f"fusion {f}" for f in FUSIONS.split(","))):
            assert name in table
        assert "balanced_accuracy" in table and "auroc" in table
        for more in driver.find_elements(By.XPATH, "//button[normalize-space()='Show more']"):
            more.click()  # the whole description, for the screenshot
        _screenshot(driver, "mlflow-ui-verdict")

        if SCREENSHOTS:  # for the docs: the experiment's own address, without the parameter workflowType
            driver.get(f"{base}/#/experiments/{experiment.experiment_id}")
            _wait(driver, lambda d: "Detect Issues in Your Traces" in _body(d), what="the GenAI overview")
            _screenshot(driver, "mlflow-ui-genai-default")
            # the two clicks without the URL: the switch to Model training, then the saved view under Views
            driver.find_element(By.XPATH, "//button[normalize-space()='Got it']").click()  # the pop-up's
            driver.find_element(By.XPATH, "//*[normalize-space(text())='Model training']").click()
            _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='saved-views-trigger']"))
            driver.find_element(By.CSS_SELECTOR, "[data-testid='saved-views-trigger']").click()
            _wait(driver, lambda d: "models by test balanced accuracy" in _body(d), what="the saved view")
            _screenshot(driver, "mlflow-ui-views")
    assert process.poll() is not None and not group_alive(process.pid) and not _answers(base), "a server is left"


def _saved_view(client: MlflowClient, experiment_id: str, parent_id: str) -> tuple[str, dict]:
    envelope = json.loads(client.get_experiment(experiment_id).tags[f"mlflow.sharedViewState.lf-{parent_id}"])
    return envelope["name"], json.loads(envelope["state"])


def test_a_sweep_parent_describes_the_best_trial_and_a_view_lists_the_trials(mlflow_store):
    """The report of a study (six finished trials, no training): the parent's description and its view."""
    spec = load_study(PROJECT_ROOT / "ablations" / "hparams.yaml")  # maximize val/balanced_accuracy
    client = MlflowClient(mlflow_store["uri"])
    experiment_id = client.create_experiment("sweeps")
    parent = client.create_run(experiment_id, run_name="sweep-hparams").info.run_id
    study = optuna.create_study(study_name="hparams", direction="maximize")
    space = {
        "optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "data.batch_size": optuna.distributions.CategoricalDistribution([16, 32, 64]),
    }
    for lr, batch, value in [(1e-3, 16, 0.6), (5e-3, 32, 0.8), (2e-4, 64, 0.5), (8e-3, 16, 0.75), (1e-4, 32, 0.4)]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"optim.lr": lr, "data.batch_size": batch},
                distributions=space,
                value=value,
                user_attrs={"epochs": 3},
            )
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"epochs": 1}))

    log_report(client, parent, study, spec)
    note = client.get_run(parent).data.tags[NOTE_TAG]
    first, best, importances, ranked, link, trials, table = note.split("\n\n")
    assert first == "**Best: trial 1, val/balanced_accuracy 0.8000** (maximize; trials: 5 complete, 1 pruned)"
    assert best == "Best parameters: `optim.lr` = 0.005, `data.batch_size` = 32"
    assert importances.startswith("Parameter importances") and ranked.startswith("| parameter | importance |")
    assert link.startswith(f"[The trials, best first](#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    assert trials.startswith("Trials")
    values = [line.split(" | ")[2] for line in table.splitlines()[2:]]
    assert values == ["0.8", "0.75", "0.6", "0.5", "0.4", ""]  # best first, the pruned trial last
    assert "| 0.0002 |" in table  # a learning rate keeps its digits

    name, state = _saved_view(client, experiment_id, parent)
    assert name.startswith("sweep-hparams ") and name.endswith(": trials by val/balanced_accuracy")
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert state["orderByKey"] == "metrics.`trial/best_value`" and state["orderByAsc"] is False
    assert {"params.`trial.optim.lr`", "params.`trial.data.batch_size`", "tags.`optuna.state`"} <= set(
        state["selectedColumns"]
    )
    assert view_url(mlflow_store["uri"], experiment_id, parent).endswith(f"viewStateShareKey=lf-{parent}")


def test_a_long_description_is_cut_at_a_line_to_mlflows_limit(mlflow_store):
    client = MlflowClient(mlflow_store["uri"])
    run = client.create_run(client.create_experiment("long")).info.run_id
    describe(client, run, "".join(f"| row {i} | {'x' * 60} |\n" for i in range(400)))
    note = client.get_run(run).data.tags[NOTE_TAG]
    assert len(note) <= MAX_NOTE_CHARACTERS and note.endswith("the run's artifacts hold the full tables)\n")
    assert note.split("\n\n")[0].splitlines()[-1].endswith("x |")  # whole rows only
