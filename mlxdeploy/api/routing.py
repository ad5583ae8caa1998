"""Where a request goes: the `model` it names is a served model or an endpoint preset, and both
resolve to a `Target` (an engine, its admission, and the settings that shape the request)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quart import request

from ..engine.api import Engine, RoleOverride, ToolUse, Turn, has_system_turn
from ..engine.residency import NotResident, Residents
from ..spec.catalog import Catalog, Preset
from ..spec.formats import ResponseFormat
from ..spec.reasoning import ReasoningSettings
from ..spec.settings import SamplingDefaults, Task
from ..spec.templates import TemplateProblem
from .adapters import AdapterTargets
from .asgi import request_exit_stack
from .drafting import Drafting
from .errors import APIError, InvalidRequest, ModelNotFound, Unavailable
from .guards.admission import Admission
from .reasoning import Thinking, ThinkingAsk, resolve_thinking
from .seal import Sealer
from .unused import unused_fields


@dataclass(frozen=True)
class Target:
    id: str  # what the request named; responses echo it
    engine: Engine
    admission: Admission  # shared by a model and the presets over it
    defaults: SamplingDefaults
    stop: tuple[str, ...]
    preset: Preset | None = None
    reasoning: ReasoningSettings = field(default_factory=ReasoningSettings)
    sealer: Sealer = field(default_factory=Sealer)  # seals the thinking given to clients
    task: Task = "generate"  # embed: only the embeddings route serves it
    adapter: str | None = None  # the model's adapter that answers (None: its own weights)
    drafting: Drafting = field(default_factory=lambda: Drafting())  # its model's draft

    @property
    def response_format(self) -> ResponseFormat | None:
        """The preset's response format, for requests that set none of their own."""
        return None if self.preset is None else self.preset.response_format

    def thinking(self, ask: ThinkingAsk) -> Thinking:
        """What the request asks of the thinking, over this model's reasoning settings."""
        return resolve_thinking(ask, self.reasoning, self.engine.thinks, unused_fields())

    def tool_use(self, use: ToolUse | None, turns: Sequence[Turn]) -> ToolUse | None:
        """The request's tool use, with the spec's choice where the request leaves it to the
        model (auto, or none named): a forced one answers a user message with one call, never
        a tool result."""
        if use is None or use.choice != "auto" or self.defaults.tool_choice == "auto":
            return use
        if not turns or turns[-1].role != "user" or _after_tool_result(turns):
            return use
        return dataclasses.replace(use, choice="required", parallel=False)

    def check_text_only(self, media: str | None) -> None:
        """A 400 for an image (or another medium) sent to a model that reads text only."""
        if media is not None:
            raise InvalidRequest(
                f"model '{self.id}' reads text only; it cannot take the image or document "
                f"at {media}: send text, or use a model that reads images",
                param=media,
            )

    def turns(self, turns: Sequence[Turn], role_override: RoleOverride | None) -> list[Turn]:
        """The conversation as the engine should see it: the preset's system prompt first
        (unless the request brings its own, as a message or as `role_mapping.system_prompt`),
        and its prompt template around the last user turn."""
        result = list(turns)
        preset = self.preset
        if preset is None:
            return result
        if preset.prompt_template is not None:
            index = _last_user_turn(result)
            result[index] = Turn(role="user", content=_render(preset, result[index].content))
        own = has_system_turn(result) or (
            role_override is not None and role_override.system_prompt is not None
        )
        if preset.system_prompt and not own:
            result.insert(0, Turn(role="system", content=preset.system_prompt))
        return result

    def prompt(self, text: str) -> str:
        """A text completion's prompt: the preset's prompt template around it (a plain prompt
        has no roles, so no system prompt)."""
        if self.preset is None or self.preset.prompt_template is None:
            return text
        return _render(self.preset, text)


class Targets:
    """Every id the app serves, looked up by the request's `model`."""

    def __init__(
        self,
        catalog: Catalog,
        engines: Mapping[str, Engine],
        residents: Residents,
    ) -> None:
        self.residents = residents
        self._by_id: dict[str, Target] = {}
        self.admissions: list[Admission] = []  # one per model; its presets share it
        self._adapters = AdapterTargets()
        unkeyed = Sealer()  # for models whose spec names no seal key: one per start
        for model in catalog.models:
            admission = Admission(limit=model.engine.admits)
            engine = engines[model.id]
            self.admissions.append(admission)
            key = model.reasoning.seal_key
            sealer = unkeyed if key is None else Sealer(key.get_secret_value())
            drafting = Drafting(model.draft_model, model.num_draft_tokens)
            self._by_id[model.id] = Target(
                model.id, engine, admission, model.defaults, model.stop, None,
                model.reasoning, sealer, model.task, drafting=drafting,
            )  # fmt: skip
            for a in model.adapters:  # a fused one is in the weights: the model's own
                self._by_id[a.id] = target = Target(
                    a.id, engine, admission, a.defaults, a.stop, None, model.reasoning, sealer,
                    task=model.task, adapter=None if a.fuse else a.id, drafting=drafting,
                )  # fmt: skip
                self._adapters.add(a, target)
        for preset in catalog.presets:
            base = self._by_id[preset.model_id]
            self._by_id[preset.name] = Target(
                preset.name, base.engine, base.admission, preset.defaults, preset.stop, preset,
                base.reasoning, base.sealer, task=base.task, adapter=base.adapter,
                drafting=base.drafting,
            )  # fmt: skip
        self._first = {m.task: self._by_id[m.id] for m in reversed(catalog.models)}

    def lookup(
        self, requested: str | None, task: Task = "generate", adapters: str | None = None
    ) -> Target:
        """The target a request names; a request without `model` goes to the first model of
        the route's task. A model of the other task is a 400 that says which route serves it.
        `adapters` (mlx_lm.server's field) names one of that model's adapters."""
        target = self._first.get(task) if requested is None else self._by_id.get(requested)
        if target is None and requested is not None:
            raise ModelNotFound(requested)
        if target is None or target.task != task:
            raise WrongTask(requested, task)
        return target if adapters is None else self._adapters.apply(target, adapters)

    async def resolve(
        self, requested: str | None, task: Task = "generate", adapters: str | None = None
    ) -> Target:
        """The target a request names, with its model loaded and held for the request (it
        is not unloaded before the response ends); 503 + Retry-After when it cannot be."""
        target = self.lookup(requested, task, adapters)
        try:
            lease = await self.residents.use(target.engine.model_id)
        except NotResident as exc:
            raise Unavailable(str(exc), exc.retry_after) from None
        request_exit_stack(request.scope).callback(lease.release)
        return target


class WrongTask(InvalidRequest):
    def __init__(self, model: str | None, task: Task) -> None:
        if model is None:
            message = (
                "this deployment serves no embedding model (a spec marks one with task: embed)"
                if task == "embed"
                else "this deployment serves only embedding models: use POST /v1/embeddings"
            )
        elif task == "embed":
            message = (
                f"model '{model}' generates text and has no embeddings (a spec serves an "
                "embedding model with task: embed)"
            )
        else:
            message = (
                f"model '{model}' is an embedding model (task: embed): it answers "
                "POST /v1/embeddings only"
            )
        super().__init__(message, param="model", code="model_not_supported")


def _after_tool_result(turns: Sequence[Turn]) -> bool:
    """Whether a tool result came since the assistant's last turn (a client may add its own
    text after the results, in the same message)."""
    for turn in reversed(turns):
        if turn.role == "tool":
            return True
        if turn.role == "assistant":
            return False
    return False


def _last_user_turn(turns: list[Turn]) -> int:
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            return index
    raise InvalidRequest(
        "this endpoint fills its prompt template with the last user message; send one",
        param="messages",
    )


def _render(preset: Preset, text: str) -> str:
    assert preset.prompt_template is not None
    try:
        return preset.prompt_template.render(text)
    except TemplateProblem as error:  # the spec's template, not the request, is at fault
        raise APIError(f"the prompt template of endpoint '{preset.name}' failed: {error}") from None
