"""Several models in one spec (`models:`) and endpoint presets (`endpoints:`): how they resolve,
and every mistake `validate` reports at its line. Fast: no weights are loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import cast

import pytest
import yaml
from typer.testing import CliRunner

from mlxdeploy.api.chat.wire import ChatMessage, TextPart
from mlxdeploy.api.errors import InvalidRequest
from mlxdeploy.api.guards.admission import Admission
from mlxdeploy.api.routing import Target
from mlxdeploy.cli import app
from mlxdeploy.engine.api import Engine, RoleOverride, Turn
from mlxdeploy.footprint import machine_memory
from mlxdeploy.render import route_table
from mlxdeploy.spec import SpecError, load_spec
from mlxdeploy.spec.routes import BUILTIN_PATHS, BUILTIN_PREFIXES
from tests.conftest import scripted_app
from tests.test_footprint import write_header_only

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two local model dirs (config only: nothing is loaded) and a templates dir."""
    for name in ("a", "b"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text("{}")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "summarize.jinja").write_text("Summarize:\n{{ input }}\n")
    return tmp_path


def write(root: Path, text: str, name: str = "spec.yaml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return [str(problem) for problem in caught.value.problems]


TWO_MODELS = """
    defaults:
      temperature: 0.5
      max_tokens: 64
    stop: ["</s>"]
    role_mapping:
      user: "Q: "
    models:
      - id: alpha
        model: models/a
      - id: beta
        model: models/b
        prompt_format: role_mapping
        defaults:
          max_tokens: 8
        stop: ["###"]
        role_mapping:
          assistant: "A: "
    endpoints:
      summarize:
        model: beta
        system_prompt: You summarize.
        prompt_template: templates/summarize.jinja
        defaults:
          temperature: 0
        stop: ["\\n\\n"]
      brief: {}
"""


def test_models_take_the_top_level_and_override_it_key_by_key(root: Path) -> None:
    catalog = load_spec(write(root, TWO_MODELS)).catalog
    alpha, beta = catalog.models
    assert (alpha.id, beta.id) == ("alpha", "beta")
    assert alpha.source.path == (root / "models" / "a").resolve()
    assert (alpha.prompt_format, beta.prompt_format) == ("auto", "role_mapping")
    assert (alpha.defaults.temperature, alpha.defaults.max_tokens) == (0.5, 64)
    assert (beta.defaults.temperature, beta.defaults.max_tokens) == (0.5, 8)
    assert (alpha.stop, beta.stop) == (("</s>",), ("###",))
    assert (alpha.role_mapping.user, alpha.role_mapping.assistant) == ("Q: ", "ASSISTANT: ")
    assert (beta.role_mapping.user, beta.role_mapping.assistant) == ("Q: ", "A: ")
    assert catalog.ids == ["alpha", "beta", "summarize", "brief"]


def test_presets_layer_over_their_model(root: Path) -> None:
    summarize, brief = load_spec(write(root, TWO_MODELS)).catalog.presets
    assert (summarize.model_id, summarize.path) == ("beta", "/v1/endpoints/summarize")
    assert summarize.defaults.temperature == 0 and summarize.defaults.max_tokens == 8
    assert summarize.stop == ("###", "\n\n")  # the model's, then its own
    assert summarize.system_prompt == "You summarize."
    assert summarize.prompt_template is not None
    assert summarize.prompt_template.render("some text") == "Summarize:\nsome text"
    assert (brief.model_id, brief.path, brief.prompt_template) == (
        "alpha",
        "/v1/endpoints/brief",
        None,
    )


def test_the_single_model_form_is_one_entry(root: Path) -> None:
    path = write(root, "model: models/a\nname: solo\nendpoints:\n  short: {}\n")
    catalog = load_spec(path).catalog
    assert [m.id for m in catalog.models] == ["solo"]
    assert catalog.presets[0].model_id == "solo"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "model: models/a\nmodels:\n  - {id: x, model: models/b}\n",
            "1:1: model: use either 'model' (one model) or 'models', not both (a spec",
        ),
        (
            "name: x\nmodels:\n  - {id: x, model: models/b}\n",
            "1:1: name: with 'models', each entry names itself with 'id'",
        ),
        ("models: []\n", "1:9: models: List should have at least 1 item"),
        (
            "models:\n  - id: x\n    model: models/a\n  - id: x\n    model: models/b\n",
            "4:9: models[1].id: the id 'x' is used twice",
        ),
        (
            "models:\n  - id: x\n    model: models/a\n    promt_format: auto\n",
            "4:5: models[0].promt_format: unknown key 'promt_format' (did you mean 'prompt_",
        ),
        (
            "models:\n  - id: x\n    model: ./models/missing\n",
            "3:12: models[0].model: ./models/missing: no model directory at ",
        ),
        (
            "model: models/a\nendpoints:\n  s:\n    model: nope\n",
            "4:12: endpoints.s.model: no model with id 'nope' (models: models/a)",
        ),
        (
            "model: models/a\nname: m\nendpoints:\n  m: {}\n",
            "4:3: endpoints.m: 'm' is already a model id; endpoints and models share one set",
        ),
        (
            "model: models/a\nendpoints:\n  s:\n    path: /v1/models\n",
            "4:11: endpoints.s.path: '/v1/models' is a built-in route; choose another",
        ),
        (
            "model: models/a\nendpoints:\n  s: {path: /x}\n  t: {path: /x}\n",
            "4:13: endpoints.t.path: '/x' is also the path of endpoint 's'",
        ),
        (
            "model: models/a\nendpoints:\n  s:\n    path: no-slash\n",
            "4:11: endpoints.s.path: String should match pattern",
        ),
        (
            "model: models/a\nendpoints:\n  'a b': {}\n",
            "3:3: endpoints.a b: an endpoint name is a model id: letters, digits and . _ ~ - only",
        ),
        (
            "model: models/a\nendpoints:\n  s:\n    promt: x\n",
            "4:5: endpoints.s.promt: unknown key 'promt' (expected one of: model, path, ",
        ),
    ],
)
def test_mistakes_are_placed_at_their_line(root: Path, text: str, expected: str) -> None:
    path = write(root, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{expected}"), problems[0]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, "cannot read template"),
        ("{{ input ", "unexpected end of template"),
        ("{{ text }}", "undefined variable 'text' (known: input)"),
        ("Summarize this.", "never uses {{ input }}, the request's text"),
    ],
)
def test_prompt_templates_are_checked(root: Path, template: str | None, expected: str) -> None:
    if template is not None:
        (root / "templates" / "bad.jinja").write_text(template)
    path = write(
        root, "model: models/a\nendpoints:\n  s:\n    prompt_template: templates/bad.jinja\n"
    )
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:4:22: endpoints.s.prompt_template: ")
    assert expected in problems[0]


def test_file_problems_are_reported_with_other_mistakes(root: Path) -> None:
    path = write(
        root,
        """
        port: 99999
        models:
          - id: x
            model: ./models/missing
            chat_template: templates/missing.jinja
        endpoints:
          s:
            prompt_template: templates/missing.jinja
        """,
    )
    problems = problems_of(path)
    assert [p.split(": ")[0].removeprefix(f"{path}:") for p in problems] == [
        "1:7", "4:12", "5:20", "8:22",
    ]  # fmt: skip


def test_a_service_extends_a_single_model_base_with_models(root: Path) -> None:
    write(root, "model: models/a\ndefaults:\n  max_tokens: 32\n", name="base.yaml")
    path = write(
        root,
        """
        extends: base.yaml
        model: null  # this service lists its models instead
        models:
          - {id: first, model: models/a}
          - {id: second, model: models/b}
        """,
    )
    catalog = load_spec(path).catalog
    assert [(m.id, m.defaults.max_tokens) for m in catalog.models] == [
        ("first", 32),
        ("second", 32),
    ]


def test_memory_is_checked_for_all_models_together(tmp_path: Path) -> None:
    rows = machine_memory() * 6 // 10 // 4 // 4096  # each one fits; both do not
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        write_header_only(tmp_path / name / "model.safetensors", {"w": ("F32", [rows, 4096])})
    single = write(tmp_path, "model: a\n", name="single.yaml")
    assert load_spec(single).catalog.models[0].id == "a"
    both = write(tmp_path, "models:\n  - {id: a, model: a}\n  - {id: b, model: b}\n")
    result = CliRunner().invoke(app, ["validate", str(both)])
    assert result.exit_code == 1
    assert result.output.startswith(f"{both}:2:3: models: the models' weights need about ")
    assert "together (a " in result.output and ", b " in result.output
    assert result.output.count("\n") == 1


def test_a_preset_fills_in_its_system_prompt_and_template(root: Path) -> None:
    preset = load_spec(write(root, TWO_MODELS)).catalog.presets[0]
    target = Target("summarize", cast(Engine, None), Admission(1), preset.defaults, (), preset)
    turns = [
        Turn(role="user", content="first"),
        Turn(role="assistant", content="ok"),
        ChatMessage(role="user", content=[TextPart(type="text", text="long text")]).to_turn(),
    ]
    assert [(t.role, t.content) for t in target.turns(turns, None)] == [
        ("system", "You summarize."),
        ("user", "first"),
        ("assistant", "ok"),
        ("user", "Summarize:\nlong text"),
    ]
    own_system = [Turn(role="developer", content="mine"), turns[0]]
    assert [t.content for t in target.turns(own_system, None)] == ["mine", "Summarize:\nfirst"]
    assert target.prompt("raw") == "Summarize:\nraw"
    with pytest.raises(InvalidRequest, match="last user message"):
        target.turns([Turn(role="system", content="only")], None)


def test_render_shows_every_id_and_the_preset_routes(root: Path) -> None:
    path = write(
        root, TWO_MODELS.replace("      brief: {}\n", "      brief:\n        path: /brief\n")
    )
    result = CliRunner().invoke(app, ["render", str(path)])
    assert result.exit_code == 0, result.output
    rendered = yaml.safe_load(result.output)
    assert rendered["served"] == [
        {"id": "alpha", "source": f"dir: {(root / 'models' / 'a').resolve()}"},
        {"id": "beta", "source": f"dir: {(root / 'models' / 'b').resolve()}"},
        {"id": "summarize", "endpoint_of": "beta", "path": "/v1/endpoints/summarize"},
        {"id": "brief", "endpoint_of": "alpha", "path": "/brief"},
    ]
    assert {"POST /v1/endpoints/summarize", "POST /brief"} <= set(rendered["routes"])


def served_routes(spec_path: Path) -> list[tuple[str, str]]:
    """(method, path) of every rule the app registers, sorted as `route_table` sorts them."""
    with scripted_app(spec_path) as served:
        rules = [rule for rule in served.app.url_map.iter_rules() if rule.endpoint != "static"]
    rows = {
        (method, rule.rule)
        for rule in rules
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    return sorted(rows, key=lambda row: row[1])


def test_built_in_routes_are_the_ones_endpoints_may_not_take(root: Path) -> None:
    """`render` lists the routes without building the app: the list must be what it serves."""
    path = write(root, "model: models/a\n")
    table = route_table(load_spec(path))
    assert served_routes(path) == table
    paths = {path for _, path in table}
    assert {p for p in paths if not p.startswith(BUILTIN_PREFIXES)} == BUILTIN_PATHS
    assert {p for p in paths if p.startswith(BUILTIN_PREFIXES)} == {
        "/v1/models/<path:model_id>",
        "/v1/responses/<response_id>",
        "/v1/admin/models/<path:model_id>/<action>",
    }


def test_a_preset_may_not_take_a_route_of_an_api_the_spec_turned_off(root: Path) -> None:
    """The built-in routes are reserved whatever `apis` serves: turning an API on later must
    not move a preset."""
    path = write(root, "model: models/a\napis: [chat]\nendpoints:\n  m:\n    path: /v1/messages\n")
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert "/v1/messages" in str(raised.value)


def test_the_route_table_lists_the_preset_routes_the_app_serves(root: Path) -> None:
    path = write(
        root, TWO_MODELS.replace("      brief: {}\n", "      brief:\n        path: /brief\n")
    )
    table = route_table(load_spec(path))
    assert served_routes(path) == table
    assert {("POST", "/v1/endpoints/summarize"), ("POST", "/brief")} <= set(table)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ input | nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ('{% include "other.jinja" %}{{ input }}', "includes other templates (other.jinja)"),
        ("{{ input.title_case }}", "fails on a sample text: UndefinedError"),
        ("{{ (input | length) // 0 }}", "fails on a sample text: ZeroDivisionError"),
    ],
)
def test_templates_that_would_fail_at_request_time_fail_validate(
    root: Path, template: str, expected: str
) -> None:
    (root / "templates" / "bad.jinja").write_text(template)
    path = write(
        root, "model: models/a\nendpoints:\n  s:\n    prompt_template: templates/bad.jinja\n"
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"{path}:4:22: endpoints.s.prompt_template: ")
    assert expected in result.output and "Traceback" not in result.output


def test_a_chat_template_with_an_unknown_filter_is_a_problem(root: Path) -> None:
    (root / "templates" / "chat.jinja").write_text("{{ messages | nosuchfilter }}")
    path = write(root, "model: models/a\nchat_template: templates/chat.jinja\n")
    problems = problems_of(path)
    assert len(problems) == 1 and "No filter named 'nosuchfilter'" in problems[0]


def test_a_request_system_prompt_replaces_the_presets(root: Path) -> None:
    preset = load_spec(write(root, TWO_MODELS)).catalog.presets[0]
    target = Target("summarize", cast(Engine, None), Admission(1), preset.defaults, (), preset)
    turns = [Turn(role="user", content="text")]
    own = RoleOverride(system_prompt="Mine.")
    assert [t.role for t in target.turns(turns, own)] == ["user"]
    assert [t.role for t in target.turns(turns, RoleOverride(user="U: "))] == ["system", "user"]


def test_a_problem_under_a_hyphenated_endpoint_names_the_endpoint(root: Path) -> None:
    path = write(
        root,
        """
        model: models/a
        endpoints:
          support-bot:
            defaults: {temperature: hot}
        """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:4:29: endpoints.support-bot.defaults.temperature: ")


PRESET_FORMAT = """
    model: models/a
    endpoints:
      people:
        response_format:
          type: json_schema
          json_schema:
            name: person
            schema: {type: %s}
"""


def test_validate_rejects_a_preset_schema_that_cannot_be_enforced(root: Path) -> None:
    path = write(root, PRESET_FORMAT % "nope")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    where = "endpoints.people.response_format.json_schema.schema"
    assert result.output.startswith(f"{path}:8:17: {where}: invalid JSON schema: "), result.output
    assert "Traceback" not in result.output


def test_validate_accepts_a_preset_schema_and_the_preset_keeps_it(root: Path) -> None:
    path = write(root, PRESET_FORMAT % "object")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    (preset,) = load_spec(path).catalog.presets
    assert preset.response_format is not None
    assert preset.response_format.schema_text() == '{"type": "object"}'


def test_a_preset_response_format_is_checked_for_shape(root: Path) -> None:
    path = write(root, "model: models/a\nendpoints:\n  s:\n    response_format: {type: xml}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:4:29: endpoints.s.response_format.type: "), problem
