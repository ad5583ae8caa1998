"""The spec's settings: pydantic(-settings) models of every section, with their defaults.

YAML and keyword values are validated strictly; `MLXDEPLOY_*` environment variables are strings
that pydantic-settings coerces to each field's type.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..tool_parsers import TOOL_PARSER_HELP, ToolParserName
from .formats import ResponseFormat, Section
from .memory import IDLE_HELP, LOAD_HELP, PIN_HELP, Load, MemorySettings
from .problems import FieldError, show_value
from .reasoning import ReasoningSettings
from .routes import API_NAMES, ApiName
from .scale import ClusterSettings, DistributedSettings

ENV_PREFIX = "MLXDEPLOY_"
ENV_DELIMITER = "__"
PromptFormat = Literal["auto", "chat_template", "role_mapping"]
Task = Literal["generate", "embed"]
# OpenAI's bounds on logit_bias: entries per request, and the size of each bias.
MAX_LOGIT_BIAS = 300
LOGIT_BIAS_LIMIT = 100
# Hosts only this machine can reach: the playground page is on by default there.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def check_logit_bias(value: Any) -> Any:
    """A logit_bias mapping as token id -> bias. JSON and YAML keys arrive as strings of ints;
    every problem is reported on the whole field, as OpenAI names it."""
    if not isinstance(value, dict):
        return value  # the dict type reports it
    if len(value) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} token ids, got {len(value)}")
    return {_token_id(key): _bias(key, bias) for key, bias in value.items()}


def _token_id(key: Any) -> int:
    text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
    # One spelling per id ("01" is refused): two spellings of a token would merge silently.
    if not isinstance(text, str) or not re.fullmatch(r"0|[1-9][0-9]{0,9}", text):
        raise ValueError(f"keys must be token ids (integers >= 0), got {show_value(key)}")
    return int(text)


def _bias(key: Any, bias: Any) -> float:
    if isinstance(bias, bool) or not isinstance(bias, int | float):
        raise ValueError(f"the bias of token {key} must be a number, got {show_value(bias)}")
    if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
        raise ValueError(
            f"biases must be between -{LOGIT_BIAS_LIMIT} and {LOGIT_BIAS_LIMIT}, "
            f"got {bias} for token {key}"
        )
    return float(bias)


LogitBiasMap = Annotated[dict[int, float], BeforeValidator(check_logit_bias)]


class RoleMapping(Section):
    """Prompt pieces used when the prompt is built without a chat template (mlx-lm's keys)."""

    system_prompt: str = Field(
        default="A chat between a curious user and an artificial intelligence assistant.",
        description="Text placed at the start of every prompt.",
    )
    system: str = Field(default="ASSISTANT's RULE: ", description="Prefix of system messages.")
    user: str = Field(default="USER: ", description="Prefix of user messages.")
    assistant: str = Field(default="ASSISTANT: ", description="Prefix of assistant messages.")
    stop: str = Field(default="\n", description="Text placed after each message.")


class SamplingDefaults(Section):
    """Default sampling parameters; the fields a request sets itself win."""

    max_tokens: int = Field(default=100, ge=1, description="Most tokens to generate.")
    temperature: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="Sampling temperature; 0 is greedy."
    )
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass, in (0, 1].")
    repetition_penalty: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, description="Penalty on repeated tokens; 1 is off."
    )
    repetition_context_size: int = Field(
        default=20, ge=1, description="How many recent tokens the repetition penalty looks at."
    )
    top_k: int = Field(
        default=0, ge=0, description="Sample among the k likeliest tokens; 0 is off."
    )
    min_p: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Drop tokens less likely than min_p times the likeliest one; 0 is off.",
    )
    presence_penalty: float = Field(
        default=0.0,
        ge=-2,
        le=2,
        description="Subtracted from the logit of every token seen in the context; 0 is off.",
    )
    presence_context_size: int = Field(
        default=20, ge=1, description="How many recent tokens the presence penalty looks at."
    )
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2,
        le=2,
        description="Subtracted from a token's logit once per time it occurs in the context; "
        "0 is off.",
    )
    frequency_context_size: int = Field(
        default=20, ge=1, description="How many recent tokens the frequency penalty looks at."
    )
    logit_bias: LogitBiasMap = Field(
        default_factory=dict,
        description="Added to the logits of these token ids (-100 to 100 each); empty is off.",
    )
    xtc_probability: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Chance per token of excluding the top choices (XTC sampling); 0 is off.",
    )
    xtc_threshold: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="XTC excludes every choice but the least likely one above this probability.",
    )
    tool_choice: Literal["auto", "required"] = Field(
        default="auto",
        description=(
            "The tool choice where a request that offers tools leaves it to the model (auto, "
            "or none sent). required: the answer to a user message is one tool call; after a "
            "tool result the model chooses, so an agent's loop ends (as the OpenAI Agents SDK "
            "resets a forced choice). For models too small to choose well."
        ),
    )


# Most prompt tokens of one request a step reads on a quantized cache: mlx-lm's quantized
# attention materializes (heads, chunk, context) scores; at 256 and a 32k context on 32 heads
# that is 0.5 GiB in 16 bits per row, where the fused kernel holds none.
QUANTIZED_KV_CHUNK = 256


class EngineSettings(Section):
    """How the generation thread batches requests and caches prompts."""

    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Most requests decoded together in one step."
    )
    prefill_batch_size: int = Field(
        default=8, ge=1, le=1024, description="Most prompts processed together in one step."
    )
    prefill_step_size: int = Field(
        default=512, ge=16, le=65536, description="Prompt tokens per request in one prefill step."
    )
    prefill_wait_steps: int = Field(
        default=4,
        ge=0,
        le=1024,
        description="While the batch decodes, how many decode steps a prompt may wait for "
        "others to be read with it in one prefill call (0: read each at once).",
    )
    prompt_cache_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="Byte budget of the prompt prefix cache; 0 turns it off.",
    )
    prompt_cache_entries: int = Field(
        default=64, ge=1, description="Most cached prompt prefixes kept at once."
    )
    max_queue: int = Field(
        default=1024,
        ge=0,
        description="Requests that may wait beyond the running batch; more get 429 + Retry-After.",
    )
    heartbeat_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Idle seconds before a stream gets an SSE keep-alive comment.",
    )
    embed_batch_tokens: int = Field(
        default=8192,
        ge=16,
        description="Embedding models (task: embed): most tokens read in one forward pass, "
        "padding included (max_batch_size bounds its inputs); a longer input is read alone, "
        "prefill_step_size tokens at a time.",
    )
    warmup: bool = Field(
        default=True,
        description="Before reporting ready, run a few short generations so that the first "
        "requests are as fast as the rest (MLX compiles kernels on first use).",
    )
    kv_bits: Literal[4, 8] | None = Field(
        default=None,
        description="Keep the keys and values of full-attention layers quantized to this many "
        "bits (null: full precision): about 0.28x (4) or 0.53x (8) of a 16-bit cache. Attention "
        f"on them is unfused, so prompts are read at most {QUANTIZED_KV_CHUNK} tokens a step.",
    )
    kv_group_size: Literal[32, 64, 128] = Field(
        default=64,
        description="With kv_bits: elements sharing one scale and bias; divides the head size.",
    )
    quantized_kv_start: int = Field(
        default=0,
        ge=0,
        description="With kv_bits: a request's cache is kept in full precision until it holds "
        "this many tokens, then quantized whole.",
    )

    @property
    def admits(self) -> int:
        """Requests a model takes at once: its batch and its queue; more get 429."""
        return self.max_batch_size + self.max_queue

    @property
    def prompt_chunk(self) -> int:
        """Prompt tokens of one request read in one step: `prefill_step_size`, bounded on a
        quantized cache (its attention builds the chunk's whole score matrix)."""
        if self.kv_bits is None:
            return self.prefill_step_size
        return min(self.prefill_step_size, QUANTIZED_KV_CHUNK)


class AuthSettings(Section):
    """API keys, sent by clients as `Authorization: Bearer <key>`. Keys never live in the spec."""

    api_keys_env: str | None = Field(
        default=None,
        min_length=1,
        description="Name of an environment variable holding the keys, separated by commas.",
    )
    api_keys_file: str | None = Field(
        default=None,
        min_length=1,
        description="File with one key per line ('#' starts a comment); relative to the spec.",
    )
    api_keys: list[str] | None = Field(
        default=None,
        description="Not allowed: literal keys end up in git. Use api_keys_env or api_keys_file.",
    )

    @field_validator("api_keys")
    @classmethod
    def _no_literal_keys(cls, value: list[str] | None) -> None:
        if value is not None:
            raise ValueError(
                "literal API keys are not allowed in a spec (they end up in git); "
                "put them in an environment variable (api_keys_env) or a file (api_keys_file)"
            )
        return None

    @property
    def enabled(self) -> bool:
        return self.api_keys_env is not None or self.api_keys_file is not None


class CorsSettings(Section):
    """Cross-origin access from browsers; none unless origins are listed."""

    allow_origins: list[str] = Field(
        default=[],
        description="Origins allowed to call the API from a browser, e.g. https://app.example.com.",
    )
    allow_headers: list[str] = Field(
        default=["Authorization", "Content-Type", "X-Request-ID"],
        description="Request headers a browser may send.",
    )
    max_age_seconds: int = Field(
        default=600, ge=0, description="How long a browser may cache a preflight answer."
    )


class LimitSettings(Section):
    """Bounds on what one request may ask for."""

    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest request body; larger ones get 413."
    )
    max_tokens: int = Field(
        default=4096, ge=1, description="Most tokens one request may ask to generate."
    )
    max_tokens_exceeded: Literal["clamp", "reject"] = Field(
        default="clamp",
        description=(
            "A request's max_tokens (max_completion_tokens, max_output_tokens) above max_tokens: "
            "clamp runs it with the limit (the answer ends there as at any max_tokens, and "
            "X-Unused-Fields names the field); reject answers 400."
        ),
    )
    unused_fields: Literal["accept", "reject"] = Field(
        default="accept",
        description=(
            "A request field that is only a hint, or an offer this server declines (prediction, "
            "verbosity, hosted tools, truncation: auto): accept takes the request and names the "
            "field in X-Unused-Fields and the access log; reject answers 400. Fields that would "
            "change the answer are a 400 and labels (metadata, user) are accepted either way."
        ),
    )
    request_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A request still generating after this fails."
    )
    max_n: int = Field(
        default=8, ge=1, le=128, description="Most choices (`n`) one request may ask for."
    )
    stored_responses: int = Field(
        default=1000,
        ge=0,
        description="Responses (the Responses API) kept in memory for previous_response_id "
        "and GET /v1/responses/{id}; the oldest go first, all are lost at restart; 0 keeps none.",
    )


class ServerSettings(Section):
    """Process behaviour: shutdown and logs."""

    shutdown_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long in-flight requests may take to finish.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text for people, json for log collectors."
    )
    access_log: bool = Field(default=True, description="Log one line per request.")


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a string or a list of strings, got {show_value(value)}")
    return value


StopWords = Annotated[list[str], BeforeValidator(_as_list, json_schema_input_type=str | list[str])]


class EnvSource(EnvSettingsSource):
    """Environment source that leaves undecodable JSON as the raw string.

    Validation then reports it against the variable (e.g. `MLXDEPLOY_STOP=</s>` is one stop word).
    """

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


_SOURCE_HELP = (
    "The model: an HF repo id (owner/name), a local model directory, a .gguf file, "
    "or pkg:<python_package>/<path> for a file inside an installed package. "
    "Relative paths are relative to the spec file that names it."
)
_CHAT_TEMPLATE_HELP = (
    "A Jinja2 chat template file (relative to the spec that names it) used instead of "
    "the tokenizer's own, e.g. templates/chatml.jinja; checked by validate."
)
_TASK_HELP = (
    "generate: the model writes text (chat, completions, responses, messages); embed: it "
    "answers POST /v1/embeddings with one vector per input (a decoder embedding model such "
    "as Qwen3-Embedding: last-token pooled, L2-normalised) and no other route."
)
_PROMPT_FORMAT_HELP = (
    "auto: the tokenizer's chat template if it has one, else role_mapping; "
    "chat_template: require the tokenizer's template; role_mapping: always role_mapping."
)


class AdapterEntry(Section):
    """A fine-tuned LoRA or DoRA adapter of its model (a directory as `mlx_lm.lora` writes it),
    served as a model id of its own. Requests for the model and its adapters share one batch."""

    id: str = Field(min_length=1, description="The id clients send as `model`; unique.")
    path: str = Field(
        min_length=1,
        description="The adapter's directory (adapter_config.json, adapters.safetensors), "
        "relative to the spec that names it; checked against the model by validate.",
    )
    fuse: bool = Field(
        default=False,
        description="Merge this adapter into the model's weights at load (no per-step cost): "
        "the model's own id then serves the fused weights too. Only for a model's one adapter.",
    )
    description: str | None = Field(
        default=None, description="What the adapter is for; shown by /v1/models."
    )
    defaults: SamplingDefaults | None = Field(
        default=None, description="Keys set here replace the model's defaults keys."
    )
    stop: StopWords | None = Field(
        default=None, description="Replaces the model's stop words for this adapter."
    )


_DRAFT_HELP = (
    "A smaller model with the same tokenizer (a source as for `model`) that guesses tokens "
    "for the model to verify: speculative decoding, the same tokens (greedy) or the same "
    "distribution (sampled), faster when the guesses are often right. Every layer of both "
    "must be full attention (validate checks the vocabularies, the engine the layers)."
)
_NUM_DRAFT_HELP = (
    "Tokens the draft model guesses per step for each request; a request may ask fewer "
    "(0: none). Large batches guess fewer (at most 32 guesses per step over all requests)."
)

_DRAFT_DEPTH_HELP = (
    "adaptive: each step guesses as many tokens (up to num_draft_tokens) as pay for "
    "themselves over the batch, from how often each request's guesses stand and what both "
    "models' passes take on this machine (timed at load, corrected by the steps' own times), "
    "and none while none pay; fixed: always num_draft_tokens "
    "(within the batch's budget)."
)
DraftDepth = Literal["adaptive", "fixed"]

_ADAPTERS_HELP = (
    "Fine-tuned adapters of this model, each served as a model id of its own; requests for the "
    "model and its adapters are batched together."
)


class ModelEntry(Section):
    """One model of a `models:` list. Keys it leaves out come from the spec's top level;
    `role_mapping` and `defaults` merge key by key over the top level's."""

    id: str = Field(min_length=1, description="The id clients send as `model`; unique.")
    model: str = Field(min_length=1, description=_SOURCE_HELP)
    task: Task | None = Field(default=None, description=_TASK_HELP)
    prompt_format: PromptFormat | None = Field(default=None, description=_PROMPT_FORMAT_HELP)
    chat_template: str | None = Field(default=None, min_length=1, description=_CHAT_TEMPLATE_HELP)
    tool_parser: ToolParserName | None = Field(default=None, description=TOOL_PARSER_HELP)
    role_mapping: RoleMapping | None = Field(
        default=None, description="Keys set here replace the top level's role_mapping keys."
    )
    defaults: SamplingDefaults | None = Field(
        default=None, description="Keys set here replace the top level's defaults keys."
    )
    stop: StopWords | None = Field(
        default=None, description="Replaces the top level's stop words for this model."
    )
    reasoning: ReasoningSettings | None = Field(
        default=None, description="Keys set here replace the top level's reasoning keys."
    )
    load: Load = Field(default="eager", description=LOAD_HELP)
    pin: bool = Field(default=False, description=PIN_HELP)
    idle_unload_seconds: float | None = Field(default=None, gt=0, description=IDLE_HELP)
    adapters: list[AdapterEntry] = Field(default=[], description=_ADAPTERS_HELP)
    draft_model: str | None = Field(default=None, min_length=1, description=_DRAFT_HELP)
    num_draft_tokens: int | None = Field(
        default=None, ge=1, le=16, description=_NUM_DRAFT_HELP + " Default: the top level's."
    )
    draft_depth: DraftDepth | None = Field(
        default=None, description=_DRAFT_DEPTH_HELP + " Default: the top level's."
    )
    engine: EngineSettings | None = Field(
        default=None,
        description="Keys set here replace the top level's engine keys for this model (its "
        "batch, its prompt cache, its keys and values: e.g. kv_bits for a long-context model).",
    )


class Endpoint(Section):
    """A named preset over one model: its own system prompt, prompt template and sampling.

    Clients call it as model id `<name>` on the OpenAI routes, or at its own `path`."""

    model: str | None = Field(
        default=None,
        min_length=1,
        description="Id of the model (or adapter) it runs on; default: the spec's first model.",
    )
    path: str | None = Field(
        default=None,
        pattern=r"^(/[A-Za-z0-9._~-]+)+$",
        description=(
            "Its own route, taking chat completion requests; default: /v1/endpoints/<name>."
        ),
    )
    description: str | None = Field(
        default=None, description="What the endpoint is for; shown by /v1/models."
    )
    system_prompt: str | None = Field(
        default=None,
        description="A system message put first when a request brings none of its own.",
    )
    prompt_template: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A Jinja2 file (relative to the spec that names it) that turns the request's text "
            "into the prompt: the last user message (or a completion's prompt) is {{ input }}."
        ),
    )
    defaults: SamplingDefaults | None = Field(
        default=None, description="Keys set here replace the model's defaults keys."
    )
    stop: StopWords = Field(default=[], description="Stop words added to the model's.")
    response_format: ResponseFormat | None = Field(
        default=None,
        description=(
            "The answer's format when a request sets none of its own (a request's own, "
            "type text included, wins): e.g. {type: json_schema, json_schema: {name, schema}}."
        ),
    )


class Spec(BaseSettings):
    """An mlxdeploy deployment: one or more models, and endpoint presets over them, served
    with an OpenAI-compatible API."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        # Strict for YAML and keyword values; pydantic-settings coerces env strings first.
        strict=True,
        title="mlxdeploy spec",
    )

    extends: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A base spec (path relative to this file) that this one deep-merges over; "
            "mappings merge, lists and scalars replace."
        ),
    )
    model: str | None = Field(
        default=None, min_length=1, description=_SOURCE_HELP + " Use this or `models`."
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description="Model id that clients send as `model` and /v1/models lists; default: `model`.",
    )
    adapters: list[AdapterEntry] = Field(
        default=[], description=_ADAPTERS_HELP + " With `models`, each entry lists its own."
    )
    draft_model: str | None = Field(
        default=None,
        min_length=1,
        description=_DRAFT_HELP + " With `models`, each entry names its own.",
    )
    num_draft_tokens: int = Field(default=4, ge=1, le=16, description=_NUM_DRAFT_HELP)
    draft_depth: DraftDepth = Field(default="adaptive", description=_DRAFT_DEPTH_HELP)
    models: list[ModelEntry] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Several models served together, each with its own id; use this or `model`. "
            "Requests route by `model`; one without it goes to the first."
        ),
    )
    endpoints: dict[str, Endpoint] = Field(
        default={},
        description="Named presets, each served as a model id and at its own path.",
    )
    apis: list[ApiName] = Field(
        default=list(API_NAMES),
        min_length=1,
        description=(
            "The APIs served: chat (/v1/chat/completions), completions (/v1/completions), "
            "responses (OpenAI's /v1/responses), messages (Anthropic's /v1/messages), "
            "embeddings (/v1/embeddings, for models with task: embed)."
        ),
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to listen on.")
    playground: bool | None = Field(
        default=None,
        description=(
            "Serve a chat page at GET /; default (null): on when `host` is a loopback address "
            "(127.0.0.1, localhost, ::1), off otherwise."
        ),
    )
    task: Task = Field(default="generate", description=_TASK_HELP)
    prompt_format: PromptFormat = Field(default="auto", description=_PROMPT_FORMAT_HELP)
    chat_template: str | None = Field(default=None, min_length=1, description=_CHAT_TEMPLATE_HELP)
    tool_parser: ToolParserName | None = Field(default=None, description=TOOL_PARSER_HELP)
    role_mapping: RoleMapping = Field(
        default=RoleMapping(), description="Prompt pieces used when no chat template is used."
    )
    defaults: SamplingDefaults = Field(
        default=SamplingDefaults(), description="Default sampling; a request's own fields win."
    )
    reasoning: ReasoningSettings = Field(
        default=ReasoningSettings(),
        description="Thinking models: effort, thinking budgets, chat template arguments.",
    )
    stop: StopWords = Field(
        default=["</s>"], description="Stop words added to every request's own: a string or a list."
    )
    engine: EngineSettings = Field(
        default=EngineSettings(),
        description="Batching and prompt caching of each model's generation thread.",
    )
    memory: MemorySettings = Field(
        default=MemorySettings(),
        description="The memory budget of the models' weights, and loading models on demand.",
    )
    auth: AuthSettings = Field(default=AuthSettings(), description="API keys; off by default.")
    cors: CorsSettings = Field(default=CorsSettings(), description="Browser cross-origin access.")
    limits: LimitSettings = Field(default=LimitSettings(), description="Per-request bounds.")
    server: ServerSettings = Field(default=ServerSettings(), description="Shutdown and logging.")
    cluster: ClusterSettings | None = Field(
        default=None,
        description="Serve replicas of this server on Ray Serve (`pip install mlxdeploy[ray]`).",
    )
    distributed: DistributedSettings | None = Field(
        default=None,
        description="Split the model over several processes or machines with mx.distributed.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, EnvSource(settings_cls)

    @field_validator("apis")
    @classmethod
    def _each_api_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({api for api in value if value.count(api) > 1})
        if repeated:
            raise ValueError(f"each API is named once; repeated: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> Spec:
        if self.model is not None and self.models is not None:
            message = (
                "use either 'model' (one model) or 'models', not both "
                "(a spec replacing its base's single model sets 'model: null')"
            )
            raise FieldError(("model",), message, at_key=True)
        if self.model is None and self.models is None:
            raise FieldError(("model",), "missing required key 'model' (or a 'models' list)")
        if self.models is not None and self.name is not None:
            message = "with 'models', each entry names itself with 'id'"
            raise FieldError(("name",), message, at_key=True)
        return self

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> Spec:
        if self.cluster is not None and self.distributed is not None:
            message = (
                "use either 'cluster' (replicas of the whole server) or 'distributed' (one "
                "model split over ranks), not both"
            )
            raise FieldError(("distributed",), message, at_key=True)
        if self.distributed is not None and self.models is not None and len(self.models) > 1:
            message = f"a distributed spec serves one model; this one lists {len(self.models)}"
            raise FieldError(("models",), message, at_key=True)
        if self.distributed is not None and self.models and self.models[0].load != "eager":
            message = "a distributed model loads at start, on every rank: use load: eager"
            raise FieldError(("models", 0, "load"), message)
        return self

    @model_validator(mode="after")
    def _kv_keys_need_bits(self) -> Spec:
        """kv_group_size and quantized_kv_start shape a quantized cache: some model they apply
        to must set kv_bits (the top level's keys apply to every model, an entry's to its own)."""
        entries = [(("models", i), m.engine) for i, m in enumerate(self.models or ()) if m.engine]
        quantizing = self.engine.kv_bits is not None or any(
            e.kv_bits is not None for _, e in entries
        )
        if not quantizing:
            _no_kv_shape_keys(("engine",), self.engine)
        for loc, engine in entries:
            own = "kv_bits" in engine.model_fields_set
            if (engine.kv_bits if own else self.engine.kv_bits) is None:
                _no_kv_shape_keys((*loc, "engine"), engine)
        return self

    @property
    def playground_enabled(self) -> bool:
        """Whether GET / serves the chat page: `playground` when set, else only on loopback."""
        if self.playground is not None:
            return self.playground
        return self.host in LOOPBACK_HOSTS


def _no_kv_shape_keys(loc: tuple[str | int, ...], engine: EngineSettings) -> None:
    for key in ("kv_group_size", "quantized_kv_start"):
        if key in engine.model_fields_set:
            message = f"{key} applies to a quantized cache: set kv_bits (4 or 8) too"
            raise FieldError((*loc, key), message, at_key=True)


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the spec, for editors (yaml-language-server) and docs."""
    schema = Spec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
