"""`make server`: a shared MLflow tracking server over a database (SQLite by default, PostgreSQL when given),
which training reaches through MLFLOW_TRACKING_URI. The PostgreSQL test starts and stops a throwaway local
server from Debian's `postgresql` package, and is skipped where that package is not installed."""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import train
from run_checks import mlflow_runs

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def make_server(store: str, artifacts: Path, log: Path):
    """`make server STORE=... ARTIFACTS=...` on a free port; yields its URI; stops the server's process group."""
    port = free_port()
    with open(log, "w") as output:
        server = subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/.installed", "server", f"PORT={port}",
                                   f"STORE={store}", f"ARTIFACTS={artifacts}"], cwd=PROJECT, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None and time.time() < deadline, log.read_text()
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def train_through(uri: str, cifar_args: list[str], tmp: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert train.main([*cifar_args, "trainer.max_steps=2", "trainer.batch_size=8", f"output_dir={tmp}/runs"]) == 0


def assert_one_finished_run_with_its_artifacts(uri: str, artifacts: Path) -> None:
    from mlflow.tracking import MlflowClient

    (run,) = mlflow_runs(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "cifar10-softmax-s0"
    assert "test/accuracy" in run.data.metrics and run.data.params["trainer.max_steps"] == "2"
    assert "config.yaml" in {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert list(artifacts.rglob(f"{run.info.run_id}/artifacts/config.yaml")), "the server stores the artifacts"


def test_make_server_over_sqlite_is_what_training_logs_to(cifar_args, tmp_path, monkeypatch, new_store):
    store = new_store(tmp_path / "server")
    with make_server(store, tmp_path / "artifacts", tmp_path / "server.log") as uri:
        train_through(uri, cifar_args, tmp_path, monkeypatch)
        assert_one_finished_run_with_its_artifacts(uri, tmp_path / "artifacts")
    assert mlflow_runs(store)[0].info.status == "FINISHED", "the runs live in the server's database file"


def postgres_binaries() -> Path | None:
    found = shutil.which("initdb")  # may be a link into Debian's versioned folder
    candidates = [Path(found).resolve().parent] if found else sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                                                      reverse=True)
    return next((folder for folder in candidates if (folder / "pg_ctl").exists() and (folder / "createdb").exists()),
                None)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a free port (as the `postgres` user when the tests run as root, since
    PostgreSQL refuses to run as root); yields its URI; stopped and deleted afterwards."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg (SQLAlchemy 2.1's default) is not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="mlflow-postgres-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' account to run PostgreSQL as")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8")
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
        try:
            run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
            yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_make_server_over_postgresql(postgres, cifar_args, tmp_path, monkeypatch):
    with make_server(postgres, tmp_path / "artifacts", tmp_path / "server.log") as uri:
        train_through(uri, cifar_args, tmp_path, monkeypatch)
        assert_one_finished_run_with_its_artifacts(uri, tmp_path / "artifacts")
