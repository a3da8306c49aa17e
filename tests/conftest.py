"""Shared fixtures: a small synthetic MPI cohort on disk and an isolated MLflow store per test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist each worker is one of ``-n`` processes sharing the cores: one intra-op thread each
    # (and in the processes the tests start), or two threads per worker spin-wait against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lightning_fusion.demo import generate_mpi_cohort  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SMALL_PATIENTS = 60
SMALL_IMAGE = 32
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data (PTB-XL subset, PneumoniaMNIST): ``$LF_DATA_DIR``, default ``../shared/data``.

    Missing data skips the test on a developer's machine but fails it in CI (``CI`` set), where the
    data is always beside the clone: a real-data test must not pass by not running.
    """
    root = Path(os.environ.get("LF_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")).resolve()
    if not root.is_dir():
        message = f"real data folder not found: {root} (set LF_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def small_cohort_master(tmp_path_factory) -> Path:
    """A 60-patient, 32-px synthetic cohort, generated once per session (read-only: copy it to modify)."""
    return generate_mpi_cohort(
        tmp_path_factory.mktemp("cohort") / "mpi", SMALL_PATIENTS, seed=3, image_size=SMALL_IMAGE
    )


# MLFLOW_TRACKING_URI as the session found it (None: the variable was unset).
_SESSION_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def _restore_tracking_uri() -> None:
    if _SESSION_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = _SESSION_TRACKING_URI


@pytest.fixture(autouse=True)
def _tracking_uri_kept():
    """Every test starts and ends with ``MLFLOW_TRACKING_URI`` as the session found it: Lightning's
    MLFlowLogger calls ``mlflow.set_tracking_uri``, which also sets the variable in ``os.environ``, so an
    in-process fit with ``--tracking-uri`` otherwise leaks into every later test's child processes. Restored
    before the test too, because a module-scoped fixture that fits in-process runs before this fixture (in
    CI a module fixture's store leaked into the torchrun sweep test, whose journal then went beside it)."""
    _restore_tracking_uri()
    yield
    _restore_tracking_uri()


@pytest.fixture
def small_cohort(small_cohort_master, tmp_path) -> Path:
    """A private, modifiable copy of the small cohort."""
    return Path(shutil.copytree(small_cohort_master, tmp_path / "mpi"))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> dict[str, str]:
    """An isolated MLflow store (SQLite + artifact folder) in the test's temp dir."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return {"uri": uri, "artifacts": str(tmp_path / "mlruns")}


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory) -> dict:
    """One demo fusion model (image + clinical table with fitted imputation and scaling, 60 patients, 64 px,
    3 epochs) and its MLflow store, trained once for every test that only uses a trained model.

    64 px because ``test_resnet`` reduces 32x and Grad-CAM needs a 2x2 last feature map. The end-to-end
    ``fit`` tests train their own, larger run: they check that training learns.
    """
    from lightning_fusion.config import load_config
    from lightning_fusion.demo import generate_mpi_cohort
    from lightning_fusion.fit.run import fit

    tmp = tmp_path_factory.mktemp("trained_demo")
    root = generate_mpi_cohort(tmp / "mpi", 60, seed=11, image_size=64)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = {
        "data.image_size": 64,
        "trainer.max_epochs": 3,
        "tracking.tracking_uri": uri,
        "tracking.artifact_root": str(tmp / "mlruns"),
        "tracking.experiment": "trained-demo",
    }
    config = load_config(None, small_overrides(root, **settings))
    return {"result": fit(config), "uri": uri, "root": root, "tmp": tmp, "config": config}


def cli_argv(overrides: dict) -> list[str]:
    """Dotted config overrides as command-line arguments (a dict value as its JSON mapping)."""
    return [f"--{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in overrides.items()]


def free_port() -> int:
    """A local TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def all_runs(uri: str) -> list:
    """Every run in the MLflow store at ``uri``, of every experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def small_overrides(root: Path, **extra) -> dict:
    """Config overrides for a quick run on the small cohort."""
    overrides = {
        "data.reader": {"name": "mpi"},
        "data.root": str(root),
        "data.image_size": SMALL_IMAGE,
        "data.batch_size": 16,
        "model.encoders.image.backbone": "test_resnet",
        "trainer.max_epochs": 2,
        "trainer.accelerator": "cpu",
    }
    overrides.update(extra)
    return overrides


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's ``postgresql``), started for the session.

    Missing server binaries skip the test on a developer's machine and fail it in CI, where ``.ci/run``
    installs the package. As root, the server runs as the ``postgres`` user (it refuses root).
    """
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="lf-pg-"))  # not under pytest's 0700 temp folder: the server user reads it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=50"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def headless_chromium(window_size: tuple[int, int] | None = None):
    """Headless Chromium through Selenium; missing pieces skip the test, or fail it in CI (``CI`` set)."""
    missing = []
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package (pip install selenium)")
    browser = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    driver = shutil.which("chromedriver")
    if browser is None:
        missing.append("Chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    if window_size:
        options.add_argument(f"--window-size={window_size[0]},{window_size[1]}")
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module: on a busy 2-core machine two threads spin-wait
    (a 5-image forward of the test backbone: 0.6 s with two threads, 6 ms with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
