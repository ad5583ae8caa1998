"""API keys and CORS on the app: 401s, public /health, preflights; `up` refuses auth without
keys. That keys never reach the access log is a process thing: see test_http_process.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner, Result

from mlxdeploy.api.guards.auth import ApiKeys, bearer_token
from mlxdeploy.cli import app
from tests.conftest import scripted_app, write_spec
from tests.inprocess import InProcessApp

ENV_NAME = "TEST_AUTH_API_KEYS"
ENV_KEYS = ("sk-env-4f1c9a27d3", "sk-env-second-88b0e1")
FILE_KEY = "sk-file-0c7d5e3b9a"
WRONG_KEY = "sk-wrong-6e2a9f4c10"
ORIGIN = "https://app.example.com"
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def write_auth_spec(spec_dir: Path, model: str | Path, **fields: object) -> Path:
    """A spec with keys in the environment (ENV_NAME) and in a file, and CORS for ORIGIN."""
    (spec_dir / "keys.txt").write_text(f"# production keys\n\n  {FILE_KEY}  \n# {WRONG_KEY}\n")
    return write_spec(
        spec_dir / "auth.yaml",
        model,
        name="tiny",
        auth={"api_keys_env": ENV_NAME, "api_keys_file": "keys.txt"},
        cors={"allow_origins": [ORIGIN]},
        **fields,
    )


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    spec = write_auth_spec(
        tmp_path_factory.mktemp("auth"), "owner/model", defaults={"max_tokens": 4}
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV_NAME, " , ".join(ENV_KEYS))
        with scripted_app(spec) as served:
            yield served


@pytest.fixture(scope="module")
def http(auth_app: InProcessApp) -> httpx.Client:
    return auth_app.http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"


def test_health_is_public(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/v1/models/tiny"), ("POST", CHAT), ("GET", "/v1/nothing")],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer(WRONG_KEY),
        bearer(ENV_KEYS[0][:-1]),
        bearer(ENV_KEYS[0] + "x"),
        {"Authorization": f"Basic {ENV_KEYS[0]}"},
        {"Authorization": ENV_KEYS[0]},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer ключ".encode()},
    ],
    ids=["none", "wrong", "prefix", "longer", "basic", "no-scheme", "empty", "non-ascii"],
)
def test_every_route_but_health_needs_a_key(
    http: httpx.Client, method: str, path: str, headers: dict[str, Any]
) -> None:
    """Unknown routes answer 401 too, so the routes are not discoverable without a key."""
    assert_unauthorized(http.request(method, path, json={"messages": USER}, headers=headers))


@pytest.mark.parametrize("key", [*ENV_KEYS, FILE_KEY])
def test_keys_from_env_and_file_are_accepted(http: httpx.Client, key: str) -> None:
    assert http.get("/v1/models", headers=bearer(key)).status_code == 200
    reply = http.post(CHAT, json={"messages": USER, "max_tokens": 2}, headers=bearer(key))
    assert reply.status_code == 200, reply.text
    assert http.get("/v1/nothing", headers=bearer(key)).status_code == 404


def test_bearer_scheme_is_case_insensitive(http: httpx.Client) -> None:
    headers = {"Authorization": f"bearer {FILE_KEY}"}
    assert http.get("/v1/models", headers=headers).status_code == 200


def test_openai_client_sends_the_key(auth_app: InProcessApp) -> None:
    client = auth_app.openai(api_key=ENV_KEYS[1], max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.completion_tokens <= 2
    wrong = auth_app.openai(api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"


# --------------------------------------------------------------------------- CORS


def preflight(http: httpx.Client, origin: str, path: str = CHAT) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    return http.options(path, headers=headers)


def test_preflight_from_an_allowed_origin_needs_no_key(http: httpx.Client) -> None:
    response = preflight(http, ORIGIN)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert response.headers["access-control-max-age"] == "600"
    assert "Origin" in response.headers["vary"]
    assert response.headers["x-request-id"]


def test_preflight_from_another_origin_is_refused(http: httpx.Client) -> None:
    response = preflight(http, "https://evil.example.com")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert not any(name.startswith("access-control-") for name in response.headers)


def test_only_allowed_origins_may_read_responses(http: httpx.Client) -> None:
    allowed = http.get("/v1/models", headers={"Origin": ORIGIN, **bearer(FILE_KEY)})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert "Origin" in allowed.headers["vary"]
    # A browser must be able to read a 401 too, to tell the user what went wrong.
    denied = http.get("/v1/models", headers={"Origin": ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == ORIGIN
    other = http.get(
        "/v1/models", headers={"Origin": "https://evil.example.com", **bearer(FILE_KEY)}
    )
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


# --------------------------------------------------------------------------- startup


def run_up(spec: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Result:
    """`mlxdeploy up SPEC` as the command line runs it, with ENV_NAME only as `env` says."""
    monkeypatch.delenv(ENV_NAME, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, ["up", str(spec), "--port", "9"])


@pytest.mark.parametrize(
    ("auth", "env", "files", "message"),
    [
        (
            {"api_keys_env": ENV_NAME},
            {},
            {},
            f"auth.api_keys_env: environment variable {ENV_NAME} is not set or empty",
        ),
        (
            {"api_keys_env": ENV_NAME},
            {ENV_NAME: " , ,"},
            {},
            f"auth.api_keys_env: environment variable {ENV_NAME} is not set or empty",
        ),
        ({"api_keys_file": "missing.txt"}, {}, {}, "auth.api_keys_file: cannot read "),
        (
            {"api_keys_file": "keys.txt"},
            {},
            {"keys.txt": "# no keys yet\n\n"},
            "auth.api_keys_file: ",
        ),
    ],
    ids=["env-unset", "env-empty", "file-missing", "file-empty"],
)
def test_up_refuses_auth_without_keys(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    auth: dict,
    env: dict[str, str],
    files: dict[str, str],
    message: str,
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    spec = write_spec(tmp_path / "auth.yaml", "owner/model", auth=auth)
    result = run_up(spec, env, monkeypatch)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a refusal, not a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{spec}: {message}")
    assert "Traceback" not in result.stderr + result.stdout


def test_validate_refuses_literal_keys(tmp_path: Path) -> None:
    spec = tmp_path / "literal.yaml"
    spec.write_text("model: owner/model\nauth:\n  api_keys: [sk-in-git]\n")
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    assert result.output.startswith(f"{spec}:3:")
    assert "auth.api_keys: " in result.output and "api_keys_env" in result.output


# --------------------------------------------------------------------------- units


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("  BEARER   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_keys_match_only_exactly() -> None:
    keys = ApiKeys((b"alpha", b"beta"))
    assert keys.matches("alpha") and keys.matches("beta")
    assert not any(keys.matches(token) for token in ("alph", "alphaa", "ALPHA", "", "β"))
