"""compose.yaml rehearsed without a Docker engine: each service's own command, in its order.

There is no Docker engine on the machines that check this repository, so ``tools/compose-
rehearsal`` runs the stack the way Compose would, minus the containers: in a private network
and mount namespace where every service name resolves to 127.0.0.1 (an ``/etc/hosts`` bound
over the real one) and every volume of compose.yaml is at its container path (a tmpfs over
``/opt``, the bind mounts bound there, a folder for each named volume). Then, in the order
``depends_on`` gives, each service's command line, environment and image ``ENV`` (read from its
Dockerfile) as compose.yaml writes them, each long-running service waited for with its own
healthcheck command, the one-shot ``setup`` waited for until it exits 0. Last, the README's
walkthrough through the ``batchinfer`` service (``docker compose run --rm batchinfer ...``),
until ``batchinfer prediction 1`` answers.

What it stands in for: the postgres image's entrypoint (initdb with POSTGRES_USER and
POSTGRES_PASSWORD, POSTGRES_DB created, the init scripts run, then the server on 5432) and the
emulator image (the same ``gcloud`` command, from this machine's Google Cloud SDK). The
Dagster and model-server images are this checkout's ``.venv`` here; ``tools/check-images``
builds and starts the real images. Docker's own networking, DNS and volume ownership are not
exercised.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_testing.processes import stop_process_group

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
VENV_BIN = Path(sys.executable).parent
# Which Dockerfile's ENV each built image carries.
DOCKERFILES = {
    "batchinfer-dagster:local": REPO_ROOT / "Dockerfile",
    "batchinfer-model-server:local": REPO_ROOT / "model-server" / "Dockerfile",
}


class RehearsalError(RuntimeError):
    """A service did not start, stay healthy or finish; the message names it and its output."""


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ``ENV`` values a Dockerfile sets, ``$VAR`` references left as written."""
    text = path.read_text().replace("\\\n", " ")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[len("ENV ") :]):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def image_cmd(path: Path) -> list[str]:
    """A Dockerfile's ``CMD [...]`` (exec form), the command of a service that names none."""
    text = path.read_text().replace("\\\n", " ")
    match = re.search(r"^CMD (\[.*\])$", text, flags=re.M)
    if match is None:
        raise RehearsalError(f"{path} has no exec-form CMD")
    return json.loads(match.group(1))


def start_order(services: dict[str, dict]) -> list[str]:
    """Services in an order where each comes after everything it ``depends_on`` (stable)."""
    ordered: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in seen:
            raise RehearsalError(f"depends_on cycle: {' -> '.join((*seen, name))}")
        for dependency in services[name].get("depends_on", {}):
            visit(dependency, (*seen, name))
        ordered.append(name)

    for name in services:
        visit(name, ())
    return ordered


def command_line(service: dict) -> list[str]:
    """``entrypoint`` + ``command``, the image's CMD when it names neither."""
    argv = [*service.get("entrypoint", []), *service.get("command", [])]
    if argv:
        return argv
    return image_cmd(DOCKERFILES[service["image"]])


def healthcheck_argv(test: list[str]) -> list[str]:
    """A healthcheck ``test`` as a command line (``CMD`` form, or ``CMD-SHELL`` through sh)."""
    kind, *rest = test
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0]]
    raise RehearsalError(f"healthcheck test {test!r} is neither CMD nor CMD-SHELL")


def seconds(duration: str) -> float:
    """A Compose duration (``5s``, ``2m``, ``120s``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * units[unit]
    return total


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class Rehearsal:
    """The stack of compose.yaml as processes in the current (private) namespaces."""

    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.compose = yaml.safe_load(COMPOSE_FILE.read_text())
        self.workdir = workdir
        self.stack = stack
        self.running: dict[str, Service] = {}

    def environment(self, service: dict) -> dict[str, str]:
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        image = service.get("image")
        if image in DOCKERFILES:
            image_env = dockerfile_env(DOCKERFILES[image])
            image_env.pop("PATH", None)  # the image's venv is this .venv, first on PATH above
            image_env.pop("VIRTUAL_ENV", None)
            env.update(image_env)
        env.update({name: str(value) for name, value in service.get("environment", {}).items()})
        return env

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        log = self.workdir / f"{name}.log"
        print(f"== {name}: {shlex.join(argv)}", flush=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        service = Service(name, process, log)
        self.running[name] = service
        self.stack.callback(stop_process_group, process)
        return service

    def wait_healthy(self, name: str) -> None:
        """Run the service's healthcheck until it passes: ``retries`` tries after its
        ``start_period``, ``interval`` apart, as Docker counts them."""
        service_config = self.compose["services"][name]
        check = service_config["healthcheck"]
        argv = healthcheck_argv(check["test"])
        interval = seconds(check.get("interval", "30s"))
        attempts = int(check.get("retries", 3)) + int(
            seconds(check.get("start_period", "0s")) / max(interval, 1)
        )
        env = self.environment(service_config)
        for _ in range(attempts):
            service = self.running[name]
            if service.process.poll() is not None:
                raise RehearsalError(
                    f"{name} exited ({service.process.returncode}):\n{service.output()}"
                )
            result = subprocess.run(argv, env=env, capture_output=True, timeout=60)
            if result.returncode == 0:
                print(f"   {name} healthy ({shlex.join(argv)})", flush=True)
                return
            time.sleep(interval)
        raise RehearsalError(f"{name} never healthy ({shlex.join(argv)}):\n{service.output()}")

    def wait_completed(self, name: str) -> None:
        """A one-shot service (``service_completed_successfully``) until it exits 0."""
        service = self.running[name]
        if service.process.wait() != 0:
            raise RehearsalError(f"{name} exited {service.process.returncode}:\n{service.output()}")
        print(f"   {name} completed", flush=True)

    def start_postgres(self, service: dict) -> Service:
        """What the postgres image's entrypoint does, with this machine's PostgreSQL binaries."""
        env = service["environment"]
        data = self.workdir / "postgres"
        data.mkdir()
        password = self.workdir / "postgres-password"
        password.write_text(env["POSTGRES_PASSWORD"])
        for path in (data, password):
            shutil.chown(path, "postgres", "postgres")

        def as_postgres(*argv: str) -> list[str]:
            return ["runuser", "-u", "postgres", "--", *argv]

        subprocess.run(
            as_postgres(
                "initdb",
                "-D",
                str(data),
                "-U",
                env["POSTGRES_USER"],
                f"--pwfile={password}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
            ),
            check=True,
            capture_output=True,
        )
        options = f"-p 5432 -c listen_addresses=127.0.0.1 -k {data}"
        subprocess.run(
            as_postgres(
                "pg_ctl", "start", "-D", str(data), "-w", "-o", options, "-l", str(data / "log")
            ),
            check=True,
            capture_output=True,
        )
        self.stack.callback(
            subprocess.run,
            as_postgres("pg_ctl", "stop", "-D", str(data), "-m", "immediate"),
            capture_output=True,
        )
        psql = as_postgres(
            "psql", "-h", str(data), "-U", env["POSTGRES_USER"], "-v", "ON_ERROR_STOP=1"
        )
        subprocess.run(
            [*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{env["POSTGRES_DB"]}"'],
            check=True,
            capture_output=True,
        )
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if target.startswith("/docker-entrypoint-initdb.d/"):
                script = self.workdir / Path(source).name
                shutil.copy(REPO_ROOT / source, script)
                shutil.chown(script, "postgres", "postgres")
                subprocess.run(
                    [*psql, "-d", env["POSTGRES_DB"], "-f", str(script)],
                    check=True,
                    capture_output=True,
                )
        # The server runs under pg_ctl; a sleeper stands for the container for healthchecks.
        return self.start("postgres", ["sleep", "infinity"], os.environ.copy())

    def up(self) -> None:
        services = self.compose["services"]
        for name in start_order(services):
            service = services[name]
            if "cli" in service.get("profiles", []):
                continue  # `docker compose up` leaves profiled services out
            for dependency, how in service.get("depends_on", {}).items():
                condition = how["condition"]
                if condition == "service_healthy":
                    self.wait_healthy(dependency)
                elif condition == "service_completed_successfully":
                    self.wait_completed(dependency)
            if name == "postgres":
                self.start_postgres(service)
            else:
                self.start(name, command_line(service), self.environment(service))
        for name, service in services.items():
            if "healthcheck" in service and name in self.running:
                self.wait_healthy(name)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """``docker compose run --rm batchinfer ARGS``."""
        service = self.compose["services"]["batchinfer"]
        argv = [*service["entrypoint"], *args]
        return subprocess.run(
            argv, env=self.environment(service), capture_output=True, text=True, cwd=self.workdir
        )


@contextmanager
def container_paths(compose: dict, workdir: Path) -> Iterator[None]:
    """Service names resolving to 127.0.0.1 and every volume at its container path."""
    services = compose["services"]
    hosts = workdir / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {' '.join(services)}\n::1 localhost\n")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/opt"], check=True)
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target.startswith("/docker-entrypoint-initdb.d/"):
                continue  # the postgres stand-in runs these itself
            target_path = Path(target)
            if target_path.exists():
                continue
            if source.startswith("."):
                target_path.parent.mkdir(parents=True, exist_ok=True)
                target_path.touch()
                subprocess.run(
                    ["mount", "--bind", "-o", "ro", str(REPO_ROOT / source), target], check=True
                )
            else:
                target_path.mkdir(parents=True, exist_ok=True)
    yield


RUNS_QUERY = """
{ runsOrError { ... on Runs { results { runId jobName status } } } }
"""


def check_dagster_saw_it(rehearsal: Rehearsal) -> None:
    """The webserver lists the predictions run as a success, and shows its step's output.

    The run executed in the code location (DefaultRunLauncher); its compute logs are in the
    storage volume the webserver shares, which is what lets the UI show them.
    """
    import httpx

    port = rehearsal.compose["services"]["webserver"]["ports"][0].split(":")[1]
    response = httpx.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": RUNS_QUERY}, timeout=60
    )
    response.raise_for_status()
    runs = response.json()["data"]["runsOrError"]["results"]
    predictions = [run for run in runs if run["jobName"] == "predictions_job"]
    print(f"   runs seen by the webserver: {[(r['jobName'], r['status']) for r in runs]}")
    if not predictions or any(run["status"] != "SUCCESS" for run in predictions):
        raise RehearsalError(f"the webserver does not list a succeeded predictions run: {runs}")
    storage = Path("/opt/dagster/dagster_home/storage")
    logs = [
        path for path in storage.rglob("*") if path.is_file() and path.suffix in {".out", ".err"}
    ]
    run_ids = {run["runId"] for run in predictions}
    if not any(run_id in str(path) for path in logs for run_id in run_ids):
        raise RehearsalError(f"no compute logs of {run_ids} in the shared {storage}: {logs[:10]}")
    print(f"   compute logs in the shared storage volume: {len(logs)} files")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="batchinfer-compose-"))
    os.chmod(workdir, 0o755)
    try:
        with ExitStack() as stack:
            rehearsal = Rehearsal(workdir, stack)
            stack.enter_context(container_paths(rehearsal.compose, workdir))
            rehearsal.up()
            print("== the walkthrough through `docker compose run --rm batchinfer ...`", flush=True)
            for args in (
                ["add-data-point", "test input data 1"],
                ["import-data"],
                ["publish", '{"id": "1"}'],
            ):
                result = rehearsal.cli(*args)
                print(f"$ batchinfer {shlex.join(args)}\n{result.stdout.strip()[:300]}", flush=True)
                if result.returncode != 0:
                    raise RehearsalError(f"batchinfer {shlex.join(args)}: {result.stderr[-2000:]}")
            deadline = time.monotonic() + 300
            while (result := rehearsal.cli("prediction", "1")).returncode != 0:
                if time.monotonic() > deadline:
                    logs = "\n".join(
                        f"--- {s.name}\n{s.output()}" for s in rehearsal.running.values()
                    )
                    raise RehearsalError(f"no prediction within 300 s: {result.stderr}\n{logs}")
                time.sleep(2)
            print(f"$ batchinfer prediction 1\n{result.stdout.strip()}", flush=True)
            status = rehearsal.cli("status")
            print(f"$ batchinfer status\n{status.stdout.strip()}", flush=True)
            check_dagster_saw_it(rehearsal)
            print("compose.yaml rehearsed: every service up in order, a prediction through it")
        return 0
    except (RehearsalError, subprocess.CalledProcessError) as error:
        print(f"compose rehearsal failed: {error}", file=sys.stderr)
        if isinstance(error, subprocess.CalledProcessError):
            print(error.stderr, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
