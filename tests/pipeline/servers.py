"""Real servers for the orchestration tests: a Prefect API server (its own PREFECT_HOME and sqlite database),
an MLflow tracking server (sqlite, serving artifacts) and a Prefect process worker, each a subprocess bound to
127.0.0.1 on a free port. `Stack` starts them the way infra/README.md tells an operator to, applies
infra/prefect.yaml with `prefect deploy`, and stops everything it started (the worker's flow-run processes
too: they run in sessions of their own, so they are found as the worker's descendants, not by group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "poisonguard-local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop `proc` and every process it started (SIGTERM, then SIGKILL after `grace_s`)."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=grace_s)


@dataclass
class Stack:
    """Prefect server + MLflow server + a process worker, with the repo's deployments applied."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)
    _exit: ExitStack = field(default_factory=ExitStack)

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def start(self, scheduler_loop_s: float = 2) -> Stack:
        prefect_port, mlflow_port = free_port(), free_port()
        home = self.root / "prefect-home"
        home.mkdir(parents=True)
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # How often the scheduler service looks for schedules to fill (60 s by default).
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(scheduler_loop_s),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "PG_GX_ROOT": str(self.root / "gx"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        prefect = self._spawn("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                 "--port", str(prefect_port)])
        wait_for_http(f"http://127.0.0.1:{prefect_port}/api/health", prefect, self.logs["prefect-server"])
        return self

    def start_mlflow(self) -> None:
        """Start the MLflow server at the MLFLOW_TRACKING_URI the worker already has (once; only the tests
        that register detectors need it, and it costs half a minute of CPU to start)."""
        if "mlflow-server" in self.logs:
            return
        port = self.mlflow_uri.rsplit(":", 1)[1]
        mlflow = self._spawn("mlflow-server", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", port, "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "mlartifacts"), "--serve-artifacts"])
        wait_for_http(f"{self.mlflow_uri}/health", mlflow, self.logs["mlflow-server"])

    def prefect(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A `prefect` CLI command against this server, run from the repository root."""
        done = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def deploy(self, prefect_file: Path, names: list[str], deploy_env: dict[str, str]) -> None:
        """`prefect --no-prompt deploy --prefect-file FILE --name N...` as infra/README.md does it."""
        saved = self.env
        self.env = {**self.env, **deploy_env}
        try:
            self.prefect("--no-prompt", "deploy", "--prefect-file", str(prefect_file),
                         *[a for n in names for a in ("--name", n)])
        finally:
            self.env = saved

    def create_pool(self) -> None:
        self.prefect("work-pool", "create", POOL, "--type", "process")

    def start_worker(self) -> None:
        self._spawn("worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL])

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`poisonguard ARGS` as an approver types it (this environment's console script)."""
        return subprocess.run([str(BIN / "poisonguard"), *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)

    def close(self) -> None:
        for proc in reversed(self.procs):  # the worker (and its runs) before the servers
            stop(proc)
        self._exit.close()

    def log_tail(self, name: str, chars: int = 4000) -> str:
        return self.logs[name].read_text(errors="replace")[-chars:]

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        handle = self._exit.enter_context(log.open("w"))
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[name] = log
        return proc


def prefect_file_copy(dest: Path, *, schedules: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """infra/prefect.yaml, unchanged except for the `schedules` of the deployments named in `schedules`."""
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        if schedules and deployment["name"] in schedules:
            deployment["schedules"] = schedules[deployment["name"]]
    dest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest
