"""engine/mlx_lm_internals.py against the installed mlx-lm, and the rest of mlxdeploy against it.

mlx-lm's private names are used in that one module, under a pin of mlx-lm's minor version.
These tests say which of them a new mlx-lm moved, before tokens go wrong, and where else in
mlxdeploy one was used."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch
from mlx_lm.models.cache import BatchKVCache, LRUPromptCache, PromptTrie
from mlx_lm.utils import load
from packaging.requirements import Requirement

import mlxdeploy
from mlxdeploy.engine import mlx_lm_internals as internals
from mlxdeploy.engine.batch import FastBatchGenerator, LogitsGenerationBatch
from mlxdeploy.engine.sampling import greedy

PACKAGE = Path(mlxdeploy.__file__).parent
ADAPTER = PACKAGE / "engine" / "mlx_lm_internals.py"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
DECLARED = frozenset(name for names in internals.PRIVATE.values() for name in names)
FORBIDDEN = DECLARED | {internals.TRIE_ENTRY}
MLX_LM = metadata.version("mlx-lm")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name.isidentifier()


def _is_mlx_lm(module: str) -> bool:
    return module == "mlx_lm" or module.startswith("mlx_lm.")


def _private_path(module: str) -> bool:
    return _is_mlx_lm(module) and any(_private(part) for part in module.split("."))


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of mlx-lm's private names in a module: an underscored name or
    module imported from mlx_lm; an attribute or string the adapter declares (but a class's own
    `self._x`, in a class not built on mlx-lm's); an underscored attribute of an mlx_lm module;
    in a class built on mlx-lm's, an underscored `self.` or `super().` name that the module's
    classes built on mlx-lm's do not define."""
    tree = ast.parse(source)
    found, bound, modules = _imports(tree)
    ours, others = _classes(tree, bound)
    exempt = {id(node) for cls in others for node in _self_attributes(cls, _defined(cls))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in exempt:
            of_module = _root(node.value) in modules
            if node.attr in FORBIDDEN or (of_module and _private(node.attr)):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in FORBIDDEN or _private_path(node.value):
                found.append((node.lineno, repr(node.value)))
    defined = {name for cls in ours for name in _defined(cls)}
    for cls in ours:
        for node in ast.walk(cls):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            on_super = isinstance(node.value, ast.Call) and _root(node.value.func) == "super"
            if (on_self or on_super) and node.attr not in defined:
                found.append((node.lineno, f"{cls.name} uses mlx-lm's .{node.attr}"))
    return sorted(set(found))


def _imports(tree: ast.Module) -> tuple[list[tuple[int, str]], set[str], set[str]]:
    """The private imports from mlx_lm; the names imported from mlx_lm or from the adapter; the
    names bound to mlx_lm modules."""
    found: list[tuple[int, str]] = []
    bound: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if _is_mlx_lm(node.module) or node.module.endswith("mlx_lm_internals"):
                bound.update(alias.asname or alias.name for alias in node.names)
            if _is_mlx_lm(node.module):
                for alias in node.names:
                    if _private(alias.name) or _private_path(node.module):
                        found.append((node.lineno, f"imports {node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_mlx_lm(alias.name):
                    modules.add(alias.asname or alias.name.split(".")[0])
                if _private_path(alias.name):
                    found.append((node.lineno, f"imports {alias.name}"))
    return found, bound, modules


def _root(node: ast.expr) -> str | None:
    """`a` of `a.b.c`; None for anything but a dotted name."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _classes(tree: ast.Module, bound: set[str]) -> tuple[list[ast.ClassDef], list[ast.ClassDef]]:
    """The module's classes built on mlx-lm's (or on one built on them), and the others."""
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    built_on = set(bound)
    for _ in classes:
        for cls in classes:
            if any(isinstance(b, ast.Name) and b.id in built_on for b in cls.bases):
                built_on.add(cls.name)
    ours = [cls for cls in classes if cls.name in built_on]
    return ours, [cls for cls in classes if cls.name not in built_on]


def _self_attributes(cls: ast.ClassDef, names: set[str]) -> list[ast.Attribute]:
    """`self.x` and `cls.x` in the class, for x in `names`."""
    return [
        node
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("self", "cls")
        and node.attr in names
    ]


def _defined(cls: ast.ClassDef) -> set[str]:
    """The names a class defines: its methods and class attributes, and what its methods
    assign to `self.`."""
    names = set()
    for statement in cls.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign | ast.AnnAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(
                    part.attr
                    for part in ast.walk(target)
                    if isinstance(part, ast.Attribute) and _root(part.value) == "self"
                )
    return names


def test_no_module_but_the_adapter_names_a_private_name_of_mlx_lm() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ADAPTER:
            continue
        for line, what in private_uses(path.read_text()):
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not problems, (
        "mlx-lm's private names belong in mlxdeploy/engine/mlx_lm_internals.py:\n"
        + "\n".join(problems)
    )


def test_the_scan_finds_each_kind_of_use() -> None:
    source = """
import mlx_lm.generate
from mlx_lm.tokenizer_utils import _infer_tool_parser
from mlx_lm.models.cache import PromptTrie
from .mlx_lm_internals import GenerationBatchBase

class Mine:  # not built on mlx-lm: its own private names are its business
    def __init__(self):
        self._stream = None
        self._step()
    def _step(self): ...

class Trie(PromptTrie):
    def __init__(self):
        self._mine = {}
    def search(self):
        return self._mine, self._roots, super()._walk()

class Batch(GenerationBatchBase):
    def step(self):
        return getattr(self, "_next_tokens")

x = mlx_lm.generate._private_helper
y = batch._idx
"""
    uses = private_uses(source)
    assert [line for line, _ in uses] == [3, 17, 17, 21, 23, 24], uses


def test_the_adapter_declares_every_private_name_it_uses() -> None:
    tree = ast.parse(ADAPTER.read_text())
    own = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.add(node.value)
        elif isinstance(node, ast.ImportFrom):
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.FunctionDef):
            used.add(node.name)
    used = {name for name in used if _private(name)} - own
    assert used == DECLARED, (
        f"used but not in PRIVATE: {sorted(used - DECLARED)}; "
        f"in PRIVATE but unused: {sorted(DECLARED - used)}"
    )


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> tuple[Any, Any]:
    model, tokenizer = load(str(tiny_model_dir))[:2]
    return model, tokenizer


def _holders(model: Any, tokenizer: Any) -> dict[str, object]:
    """An mlx-lm object of each kind that holds the private names (instances: most are set in
    `__init__`)."""
    return {
        "mlx_lm.generate.GenerationBatch": GenerationBatch.empty(model, greedy),
        "mlx_lm.generate.BatchGenerator": BatchGenerator(model),
        "mlx_lm.models.cache.BatchKVCache": BatchKVCache([0]),
        "mlx_lm.models.cache.PromptTrie": PromptTrie(),
        "mlx_lm.models.cache.LRUPromptCache": LRUPromptCache(max_size=1),
        "mlx_lm.tokenizer_utils.TokenizerWrapper": tokenizer,
        "mlx_lm.tokenizer_utils": importlib.import_module("mlx_lm.tokenizer_utils"),
        "mlx_lm.utils": importlib.import_module("mlx_lm.utils"),
    }


def _resolve(owner: str) -> Any:
    try:
        return importlib.import_module(owner)
    except ImportError:
        module, name = owner.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)


def test_the_installed_mlx_lm_is_the_pinned_minor_version() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name == "mlx-lm"]
    assert any(s.operator == "<" for s in pin.specifier), (
        f"pyproject must pin mlx-lm's minor version (mlx_lm_internals.py uses its private API): "
        f"{pin}"
    )
    assert pin.specifier.contains(MLX_LM), f"mlx-lm {MLX_LM} is outside the pin {pin}"


def test_every_private_name_the_adapter_declares_exists_in_mlx_lm(loaded: Any) -> None:
    holders = _holders(*loaded)
    assert set(holders) == set(internals.PRIVATE)
    for owner, holder in holders.items():
        kind = _resolve(owner)
        assert holder is kind or isinstance(holder, kind), f"{owner} moved in mlx-lm {MLX_LM}"
    missing = [
        f"{owner}.{name}"
        for owner, names in internals.PRIVATE.items()
        for name in names
        if not hasattr(holders[owner], name)
    ]
    assert not missing, (
        f"mlx-lm {MLX_LM} no longer has {missing}, which "
        "mlxdeploy/engine/mlx_lm_internals.py uses: change that module and its PRIVATE"
    )


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_generation_batch_still_steps_through_step(loaded: Any) -> None:
    state = set(vars(GenerationBatch.empty(loaded[0], greedy)))
    public = {"model", "uids", "prompt_cache", "tokens", "samplers", "fallback_sampler",
              "logits_processors", "stop_sequences", "max_tokens"}  # fmt: skip
    assert public <= state, f"mlx-lm's GenerationBatch no longer sets {sorted(public - state)}"
    params = list(inspect.signature(GenerationBatch._step).parameters)
    assert params == ["self"], f"GenerationBatch._step now takes {params}; step takes (self)"
    assert re.search(r"tokens, logprobs = self\._step\(\)", _source(GenerationBatch.next)), (
        "GenerationBatch.next no longer unpacks (tokens, logprobs) from self._step()"
    )
    assert "self._step()" in _source(GenerationBatch.__init__), (
        "GenerationBatch.__init__ no longer runs the first step through self._step()"
    )
    empty = list(inspect.signature(GenerationBatch.empty).parameters)
    assert empty == ["model", "fallback_sampler"], f"GenerationBatch.empty now takes {empty}"
    assert "self._next_logprobs.extend(batch._next_logprobs)" in _source(GenerationBatch.extend)


def test_batch_generator_still_runs_its_schedule_through_next_step() -> None:
    assert "self._next()" in _source(BatchGenerator.next), (
        "BatchGenerator.next no longer runs through _next (BatchGeneratorBase.next_step)"
    )
    assert "self._next()" in _source(BatchGenerator.next_generated)
    remove = list(inspect.signature(BatchGenerator.remove).parameters)
    assert remove == ["self", "uids", "return_prompt_caches"], f"remove now takes {remove}"
    source = _source(BatchGenerator)
    assert len(re.findall(r"self\._generation_batch = ", source)) == 1, (
        "mlx-lm's BatchGenerator now replaces its generation batch after __init__, so "
        "FastBatchGenerator's LogitsGenerationBatch would stop deciding the decode step"
    )
    assert "self._generation_batch.extend(" in source, (
        "mlx-lm's BatchGenerator no longer merges new sequences into its generation batch"
    )
    make = _source(BatchGenerator._make_batch)
    assert list(inspect.signature(BatchGenerator._make_batch).parameters) == ["self", "n"]
    assert "uids.append(sequence[0])" in make, (
        "an unprocessed sequence no longer starts with its uid"
    )
    assert "self._currently_processing.append(" in make, (
        "mlx-lm's _make_batch no longer records [segments, done, total] per prompt"
    )
    assert "[sequence[1], 0, sum(len(s) for s in sequence[1])]" in make
    assert "seq.append(seq[-1][-1:])" in _source(BatchGenerator.insert_segments), (
        "mlx-lm's insert no longer keeps a prompt's last token as its own segment "
        "(FastBatchGenerator._start_decoding waits for exactly that)"
    )
    for name in ("prompt", "split", "empty", "extend"):
        assert hasattr(PromptProcessingBatch, name), f"PromptProcessingBatch lost {name}"


def test_the_counters_keep_the_fields_the_schedule_adds_to(loaded: Any) -> None:
    counters = internals.BatchGeneratorBase(loaded[0]).counters
    fields = (
        "generation_steps",
        "generation_tokens",
        "decode_time",
        "prompt_tokens",
        "prompt_time",
    )
    missing = [f for f in fields if not hasattr(counters, f)]
    assert not missing, f"mlx-lm's BatchCounters no longer has {missing}"


def test_names_added_on_mlx_lm_classes_shadow_none_of_theirs(loaded: Any) -> None:
    """The adapter's public names, and the private helpers of the classes built on it, are new
    to mlx-lm's classes: a new mlx-lm that adds one would be overridden without a word."""
    model, _ = loaded
    theirs = {
        GenerationBatch: set(dir(GenerationBatch.empty(model, greedy))),
        BatchGenerator: set(dir(BatchGenerator(model))),
    }
    bases = ((internals.GenerationBatchBase, LogitsGenerationBatch, GenerationBatch),
             (internals.BatchGeneratorBase, FastBatchGenerator, BatchGenerator))  # fmt: skip
    for adapter, ours, base in bases:
        added = {n for n in vars(adapter) if not n.startswith("_")}
        added |= {n for n in vars(ours) if _private(n)}
        clash = added & theirs[base]
        assert not clash, f"mlx-lm {MLX_LM}'s {base.__name__} now has {sorted(clash)}"


def test_the_exposed_attributes_are_mlx_lm_s_own(loaded: Any) -> None:
    batch = LogitsGenerationBatch.empty(loaded[0], greedy)
    tokens = mx.array([1, 2])
    batch.next_tokens = tokens
    assert batch._next_tokens is tokens and batch.next_tokens is tokens
    assert batch.num_tokens is batch._num_tokens


def test_the_trie_and_cache_accessors_read_mlx_lm_s_layout() -> None:
    trie = PromptTrie()
    trie.add("m", [1, 2], "entry")
    assert internals.trie_roots(trie)["m"][1][2][internals.TRIE_ENTRY] == "entry"
    cache = LRUPromptCache(max_size=1)
    internals.use_trie(cache, trie)
    assert cache._trie is trie
    kv = BatchKVCache([0, 1])
    kv.update_and_fetch(mx.zeros((2, 1, 3, 4)), mx.zeros((2, 1, 3, 4)))
    assert internals.cache_end(kv) == 3 and kv.keys_and_values()[0].shape[2] == 3
    internals.set_cache_end(kv, 2)
    assert kv.keys_and_values()[0].shape[2] == 2


def test_the_tokenizer_accessors(loaded: Any) -> None:
    _, tokenizer = loaded
    inner = internals.wrapped_tokenizer(tokenizer)
    assert inner is not None and len(inner) == len(tokenizer.vocab)
    assert internals.wrapped_tokenizer(object()) is None
    assert internals.infer_tool_parser(tokenizer) in (None, *_tool_parsers())


def _tool_parsers() -> list[str]:
    directory = Path(importlib.import_module("mlx_lm.tool_parsers").__file__ or "").parent
    return [path.stem for path in directory.glob("*.py")]
