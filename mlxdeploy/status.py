"""`mlxdeploy status URL`: the requests in flight on a running server, read from its
`GET /v1/status` and shown as a table."""

from __future__ import annotations

import httpx
from pydantic import ValidationError
from rich.table import Table

from .api.status import ModelStatus, StatusReport
from .footprint import bytes_text
from .spec import routes

KEY_HINT = "pass --api-key or set MLXDEPLOY_API_KEY"


class StatusError(Exception):
    """The report could not be read; the message is one line."""


def status_url(url: str) -> str:
    """The status route of a server given by its base URL, with or without the /v1 that
    OpenAI clients are given, with or without a scheme."""
    base = url.strip().rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    base = base.removesuffix("/v1")
    return base + routes.STATUS.path


def fetch_status(url: str, api_key: str | None, timeout: float) -> StatusReport:
    target = status_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(target, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach {target}: {str(exc) or type(exc).__name__}") from None
    if response.status_code != 200:
        raise StatusError(_refusal(target, response, api_key))
    try:
        return StatusReport.model_validate_json(response.content)
    except ValidationError as exc:
        raise StatusError(f"{target}: not a status report ({exc.error_count()} errors)") from None


def _refusal(target: str, response: httpx.Response, api_key: str | None) -> str:
    message = _error_message(response)
    line = f"{target}: HTTP {response.status_code}" + (f": {message}" if message else "")
    if response.status_code == 401 and not api_key:
        line += f" ({KEY_HINT})"
    elif response.status_code == 404:
        line += " (is it an mlxdeploy server with GET /v1/status?)"
    return line


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""


def age(seconds: float) -> str:
    """3.2s, 4m05s, 2h07m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def status_table(report: StatusReport, url: str) -> Table:
    running = sum(m.running for m in report.models)
    queued = sum(m.queued for m in report.models)
    title = f"{url}: {running} running, {queued} queued" + (
        " (draining)" if report.draining else ""
    )
    if report.memory_budget_bytes:
        used = bytes_text(report.memory_used_bytes or 0)
        title += f"; weights in memory {used} of {bytes_text(report.memory_budget_bytes)}"
    table = Table(title=title, title_justify="left")
    table.add_column("model", no_wrap=True, min_width=5)
    table.add_column("request", overflow="fold")  # a long id folds; the numbers never do
    table.add_column("state", no_wrap=True, min_width=11)
    table.add_column("age", no_wrap=True, min_width=6)
    for name in ("prompt", "completion"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for model in report.models:
        _add_model(table, model)
    return table


def _label(model: ModelStatus) -> str:
    """The model's id, with its state unless ready, its memory while it holds some, and
    whether it is pinned."""
    notes: list[str] = [] if model.state == "ready" else [model.state]
    if model.memory_bytes and model.state in ("loading", "ready"):
        notes.append(bytes_text(model.memory_bytes))
    if model.pinned:
        notes.append("pinned")
    return f"{model.id} ({', '.join(notes)})" if notes else model.id


def _add_model(table: Table, model: ModelStatus) -> None:
    label = _label(model)
    if not model.requests:
        table.add_row(label, "-", "idle", "", "", "")
    for request in model.requests:
        choices = f" ×{request.choices}" if request.choices > 1 else ""
        table.add_row(
            label,
            request.id or "-",
            request.state + choices,
            age(request.age_seconds),
            str(request.prompt_tokens),
            str(request.completion_tokens),
        )
