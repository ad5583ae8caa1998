"""The Serve deployment: on each replica, the spec's app and its engines, as `up` builds them
on one process. `build` is the application builder Serve's config file names (`import_path`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from ...api.app import create_app
from ...spec.deployment import Deployment
from ...spec.load import load_spec
from ...spec.problems import SpecError
from ..logs import configure_logging
from ..server import LOAD_POLL_SECONDS, start_engines
from ..shutdown import stop_engines
from .access import ReplicaAccess
from .options import CONSTRUCTOR_RETRIES, DEPLOYMENT_NAME, ReplicaArgs, deployment_options

log = logging.getLogger("mlxdeploy.server")


def load_replica_spec(args: ReplicaArgs) -> Deployment:
    try:
        return load_spec(Path(args.spec), **args.overrides)
    except SpecError as exc:  # one line per problem, as validate prints them
        raise ValueError("\n".join(str(problem) for problem in exc.problems)) from None


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class Server:
    """One replica: every model of the spec, loaded before the replica takes requests."""

    async def __init__(  # type: ignore[misc]  # Serve awaits the replica's constructor
        self, spec: str, overrides: dict[str, Any], log_level: str
    ) -> None:
        self._loaded = load_replica_spec(ReplicaArgs(spec, overrides, log_level))
        configure_logging(self._loaded.spec.server, log_level)
        self._id = serve.get_replica_context().replica_id.unique_id
        self._engines: list[Any] = []

    async def __serve_build_asgi_app__(self) -> Any:
        """Runs on the loop that serves the requests: the engines deliver to it."""
        self._engines = start_engines(self._loaded, asyncio.get_running_loop())
        await self._wait_loaded()
        log.info("replica %s ready: %s", self._id, ", ".join(self._loaded.catalog.ids))
        app = create_app(self._loaded, self._engines)
        return ReplicaAccess(app, self._id, self._loaded.spec.server.access_log)

    async def _wait_loaded(self) -> None:
        while any(engine.state == "loading" for engine in self._engines):
            await asyncio.sleep(LOAD_POLL_SECONDS)
        failed = [engine.error or engine.model_id for engine in self._engines if engine.error]
        if failed:  # the replica does not start; Serve says why and tries again
            raise RuntimeError("; ".join(failed))

    def check_health(self) -> None:
        """Serve replaces a replica whose generation thread has died."""
        for engine in self._engines:
            if engine.state == "failed":
                raise RuntimeError(f"model {engine.model_id}: {engine.error or 'failed'}")

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await stop_engines(self._engines, asyncio.Event())


def build(args: dict[str, Any]) -> Application:
    """The application a Serve config deploys: `args` are a ReplicaArgs mapping."""
    replica = ReplicaArgs.from_dict(args)
    loaded = load_replica_spec(replica)
    options = deployment_options(loaded.spec) | {"max_constructor_retry_count": CONSTRUCTOR_RETRIES}
    return Server.options(**options).bind(**replica.as_dict())  # type: ignore[attr-defined]
