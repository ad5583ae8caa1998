"""`mlxdeploy render --as systemd|launchd`: a service that runs `mlxdeploy up` on a spec.

Everything in it is absolute (this mlxdeploy, the spec, the working directory), so the
service runs what `up` runs here. The variables the spec reads (its `${VAR}`s, `MLXDEPLOY_*`,
and where Hugging Face keeps weights) that are set now go into the service, so that it serves
what `render` shows. Secrets never do: the variable `auth.api_keys_env` names, and any other
whose name looks secret, come from an environment file that the service reads and that the
operator writes.
"""

from __future__ import annotations

import getpass
import math
import os
import plistlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .render import is_secret_name
from .spec.deployment import Deployment
from .spec.settings import ENV_PREFIX, LOOPBACK_HOSTS, Spec

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
# Where downloaded weights are cached: the service should find the ones already here.
PASSED_THROUGH = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME")
STOP_MARGIN_SECONDS = 15  # after the drain: generation threads stop, logs flush
SYSTEMD_ENV_DIR = Path("/etc/mlxdeploy")
SH_SOURCE = 'set -a && . "$0" && exec "$@"'  # export what the file sets, then run the rest


@dataclass(frozen=True)
class Service:
    name: str  # mlxdeploy-<the spec file's stem>
    description: str
    spec: Path
    command: tuple[str, ...]
    workdir: Path
    environment: dict[str, str]  # written into the service
    secrets: tuple[str, ...]  # the variables its environment file must set
    stop_seconds: int

    def env_file(self, directory: Path) -> Path:
        return directory / f"{self.name}.env"


def service_of(deployment: Deployment, path: Path, workdir: Path) -> Service:
    """The service for `mlxdeploy up` on the spec at `path`, as if run in `workdir` now."""
    spec = deployment.spec
    spec_path = Path(os.path.abspath(path))
    names = referenced_variables(spec_path) | set(PASSED_THROUGH)
    names |= {name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    secrets = {name for name in names if is_secret_name(name)}
    if spec.auth.api_keys_env is not None:
        secrets.add(spec.auth.api_keys_env)
    environment = {n: os.environ[n] for n in sorted(names - secrets) if n in os.environ}
    return Service(
        name="mlxdeploy-" + re.sub(r"[^A-Za-z0-9_.-]", "-", spec_path.stem),
        description=f"mlxdeploy: {', '.join(deployment.catalog.ids)} on {spec.host}:{spec.port}",
        spec=spec_path,
        command=(*mlxdeploy_executable(), "up", str(spec_path)),
        workdir=Path(os.path.abspath(workdir)),
        environment=environment,
        secrets=tuple(sorted(secrets)),
        stop_seconds=math.ceil(spec.server.shutdown_timeout_seconds) + STOP_MARGIN_SECONDS,
    )


def mlxdeploy_executable() -> tuple[str, ...]:
    """This mlxdeploy: its console script beside this Python, else `python -m mlxdeploy`
    (never resolved through symlinks: a virtual environment's python must stay itself)."""
    python = os.path.abspath(sys.executable)
    script = Path(python).parent / "mlxdeploy"
    return (str(script),) if script.is_file() else (python, "-m", "mlxdeploy")


def referenced_variables(path: Path) -> set[str]:
    """Names of the `${VAR}`s in the spec and the files it extends."""
    names: set[str] = set()
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None and current.is_file() and current.resolve() not in seen:
        seen.add(current.resolve())
        text = current.read_text(encoding="utf-8")
        names.update(REFERENCE.findall(text))
        data = yaml.safe_load(text)
        base = data.get("extends") if isinstance(data, dict) else None
        current = current.parent / base if isinstance(base, str) else None
    return names


def systemd_unit(service: Service, env_dir: Path = SYSTEMD_ENV_DIR) -> str:
    """A system unit that runs as the user rendering it (so it finds the same caches)."""
    name = service.name
    lines = [
        f"# {name}.service, from `mlxdeploy render --as systemd`: serves {service.spec.name}",
        f"# Install: sudo cp {name}.service /etc/systemd/system/ && sudo systemctl daemon-reload",
        f"#          sudo systemctl enable --now {name}    Logs: journalctl -u {name}",
        "[Unit]",
        f"Description={_escape(service.description)}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
        f"User={getpass.getuser()}",
        f"WorkingDirectory={_escape(str(service.workdir))}",
        "ExecStart=" + " ".join(_exec_arg(arg) for arg in service.command),
        *(f"Environment={_quoted(f'{k}={v}')}" for k, v in service.environment.items()),
        *_systemd_secrets(service, env_dir),
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM to `up` alone: it drains, then stops what it started (Ray, mlx.launch's ranks);
        # what is left at the timeout gets SIGKILL.
        "KillMode=mixed",
        f"TimeoutStopSec={service.stop_seconds}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _systemd_secrets(service: Service, env_dir: Path) -> list[str]:
    if not service.secrets:
        return []
    path = service.env_file(env_dir)
    settings = " ".join(f"{name}=..." for name in service.secrets)
    return [
        f"# {path} (root-owned, mode 600) sets {settings}, one NAME=value a line",
        f"EnvironmentFile={_escape(str(path))}",
    ]


def launchd_plist(service: Service, env_dir: Path | None = None) -> str:
    """A LaunchAgent property list: started at login, restarted when it exits with an error."""
    env_file = service.env_file(env_dir or Path.home() / ".config" / "mlxdeploy")
    arguments = list(service.command)
    if service.secrets:
        arguments = ["/bin/sh", "-c", SH_SOURCE, str(env_file), *arguments]
    log = str(Path.home() / "Library" / "Logs" / f"{service.name}.log")
    plist: dict[str, object] = {
        "Label": service.name,
        "ProgramArguments": arguments,
        "WorkingDirectory": str(service.workdir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ExitTimeOut": service.stop_seconds,
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    if service.environment:
        plist["EnvironmentVariables"] = dict(service.environment)
    text = plistlib.dumps(plist, sort_keys=False).decode()
    notes = [
        f"{service.name}.plist, from mlxdeploy render (as launchd): serves {service.spec.name}",
        f"Install: cp {service.name}.plist ~/Library/LaunchAgents/ &&"
        f" launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{service.name}.plist",
    ]
    if service.secrets:
        settings = " ".join(f"{name}=..." for name in service.secrets)
        notes.append(f"{env_file} (mode 600) sets {settings}, one NAME=value a line")
    comment = "".join(f"<!-- {_xml_comment(note)} -->\n" for note in notes)
    head, _, body = text.partition("<plist")
    return f"{head}{comment}<plist{body}"


def _escape(text: str) -> str:
    """systemd expands %-specifiers in most settings; a literal % is %%."""
    return text.replace("%", "%%")


def _quoted(text: str) -> str:
    escaped = _escape(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _exec_arg(arg: str) -> str:
    """One ExecStart word: $ and % are special there, and quotes keep spaces in one word."""
    text = arg.replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return _escape(text)
    return _quoted(text)


def _xml_comment(text: str) -> str:
    return text.replace("--", "- -")


def replica_environment(service: Service, with_secrets: bool) -> dict[str, str]:
    """What the replicas' runtime environment sets: the service's variables, and the secrets'
    values too when `up` deploys them itself (never in a rendered file)."""
    env = dict(service.environment)
    if with_secrets:
        env.update({name: os.environ[name] for name in service.secrets if name in os.environ})
    return env


def ray_serve_config(spec: Spec, service: Service) -> str:
    """A Serve config file for `serve deploy` or a KubeRay RayService's `serveConfigV2`."""
    from .serve.replicas.options import ReplicaArgs, serve_config

    args = ReplicaArgs(str(service.spec))
    config = serve_config(spec, args, replica_environment(service, with_secrets=False))
    notes = [
        f"{service.name}: Ray Serve config, from `mlxdeploy render --as ray` ({service.spec.name})",
        "Deploy: serve deploy <this file>, or paste it as a KubeRay RayService's serveConfigV2.",
        f"Every node needs mlxdeploy[ray] and the spec at {service.spec}.",
    ]
    if spec.host in LOOPBACK_HOSTS:
        notes.append(f"host is {spec.host}: only this node reaches the proxy; 0.0.0.0 for all.")
    if service.secrets:
        names = ", ".join(service.secrets)
        notes.append(f"Set {names} on the cluster (runtime_env env_vars or the pods' env).")
    header = "".join(f"# {note}\n" for note in notes)
    return header + yaml.safe_dump(config, sort_keys=False)
