"""YAML pipelines: loaded, validated against the stage registry, errors with their line.

Our format is a mapping with a ``pipeline`` list; HTTomo's format — a top-level list of
``{method, module_path, parameters}`` entries — is accepted too, so an HTTomo user can
bring a pipeline over::

    pipeline:
      - method: normalize
        parameters: {minus_log: true}
      - method: remove_outlier          # or: method: remove_outlier
        parameters: {dif: 200}          #     module_path: tomopy.misc.corr

An entry names a stage by our name or by the dotted name of an equivalent method
(``module_path`` + ``method``) listed in the stage's aliases. HTTomo loader entries are
skipped with a note (our sources replace them); anything else we cannot map is refused,
saying which entry and why, with the closest known names. All problems are reported
together, each as ``FILE:LINE: pipeline[i].field: what was expected, got what``.
Nothing from YAML is ever imported or executed: names only select registry entries.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stages.spec import StageParams, StageSpec
from streamer.errors import ConfigError

ENTRY_KEYS = frozenset({"method", "module_path", "parameters", "backend", "id", "save_result"})
SKIPPED_MODULES = ("httomo.data.hdf.loaders",)


@dataclass(frozen=True)
class PipelineStep:
    """One validated stage of a pipeline."""

    spec: StageSpec
    params: StageParams
    backend: str
    where: str  # "FILE:LINE" of the entry, for messages at run time

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline and where it came from (the YAML goes into every output)."""

    steps: tuple[PipelineStep, ...]
    source: str
    text: str
    notes: tuple[str, ...] = ()


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.messages: list[str] = []

    def add(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        self.messages.append(f"{self.source}{line}: {where}: {message}")


def load_pipeline(path: Path, registry: Mapping[str, StageSpec]) -> Pipeline:
    """Read and validate ``path``; raise :class:`ConfigError` listing every problem."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the pipeline ({error.strerror})") from None
    return parse_pipeline(text, registry, source=str(path))


def parse_pipeline(text: str, registry: Mapping[str, StageSpec], *, source: str) -> Pipeline:
    """Validate pipeline YAML ``text`` (``source`` names it in messages)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    problems = _Problems(source)
    entries = _entry_nodes(root, problems)
    steps: list[PipelineStep] = []
    notes: list[str] = []
    aliases = _alias_table(registry)
    for index, node in enumerate(entries):
        step = _parse_entry(index, node, registry=registry, aliases=aliases,
                            problems=problems, notes=notes)
        if step is not None:
            steps.append(step)
    if not problems.messages and not steps:
        problems.add(root, "pipeline", "expected at least one stage, got none")
    if problems.messages:
        raise ConfigError("\n".join(problems.messages))
    return Pipeline(tuple(steps), source, text, tuple(notes))


def _entry_nodes(root: yaml.Node | None, problems: _Problems) -> list[yaml.Node]:
    if isinstance(root, yaml.SequenceNode):  # HTTomo: a bare list of entries
        return list(root.value)
    if isinstance(root, yaml.MappingNode):
        keys = {key.value: value for key, value in root.value}
        unknown = sorted(set(keys) - {"pipeline"})
        if unknown:
            problems.add(root, ", ".join(unknown), "unknown top-level key; expected 'pipeline'")
        pipeline = keys.get("pipeline")
        if isinstance(pipeline, yaml.SequenceNode):
            return list(pipeline.value)
        problems.add(pipeline or root, "pipeline", "expected a list of stages")
        return []
    problems.add(root, "pipeline", "expected a mapping with 'pipeline: [...]' or a list")
    return []


def _parse_entry(
    index: int,
    node: yaml.Node,
    *,
    registry: Mapping[str, StageSpec],
    aliases: Mapping[str, StageSpec],
    problems: _Problems,
    notes: list[str],
) -> PipelineStep | None:
    where = f"pipeline[{index}]"
    if not isinstance(node, yaml.MappingNode):
        problems.add(node, where, "expected a mapping with 'method' and 'parameters'")
        return None
    fields = {key.value: value for key, value in node.value}
    for key, _ in node.value:
        if key.value not in ENTRY_KEYS:
            problems.add(key, f"{where}.{key.value}", f"unknown key; expected one of "
                         f"{', '.join(sorted(ENTRY_KEYS))}")
    method_node = fields.get("method")
    method = _scalar(method_node)
    if not isinstance(method, str) or not method:
        problems.add(method_node or node, f"{where}.method", "expected a method name")
        return None
    module_node = fields.get("module_path")
    module = _scalar(module_node) if module_node is not None else None
    if module is not None and not isinstance(module, str):
        problems.add(module_node, f"{where}.module_path", f"expected a dotted module name, "
                     f"got {module!r}")
        return None
    if module in SKIPPED_MODULES:
        notes.append(f"{where}: HTTomo loader {module}.{method} skipped: scans come from "
                     "`replay`/`recon` options or a live source")
        return None
    spec = _resolve(method, module, registry, aliases)
    if spec is None:
        wanted = f"{module}.{method}" if module else method
        close = difflib.get_close_matches(method, list(registry), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        problems.add(method_node, f"{where}.method", f"unknown method {wanted!r}: no stage "
                     f"of ours is registered under that name{hint}")
        return None
    parameters_node = fields.get("parameters")
    try:
        raw = _construct(parameters_node) if parameters_node is not None else {}
    except yaml.YAMLError as error:  # e.g. a !!python/... tag: never constructed
        problem = getattr(error, "problem", None) or str(error)
        problems.add(parameters_node, f"{where}.parameters", f"unsupported YAML: {problem}")
        return None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(parameters_node, f"{where}.parameters", f"expected a mapping, got {raw!r}")
        return None
    try:
        params = spec.params.model_validate(raw)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"])
            key_node = _key_node(parameters_node, str(item["loc"][0])) if item["loc"] else None
            got = "" if item["type"] == "missing" else f", got {item.get('input')!r}"
            problems.add(key_node or parameters_node or node,
                         f"{where}.parameters.{field}", f"{item['msg']}{got}")
        return None
    backend_node = fields.get("backend")
    backend = _scalar(backend_node) if backend_node is not None else spec.backends[0]
    if backend not in spec.backends:
        problems.add(backend_node, f"{where}.backend", f"stage {spec.name!r} runs on "
                     f"{'|'.join(spec.backends)}, got {backend!r}")
        return None
    line = f":{node.start_mark.line + 1}"
    return PipelineStep(spec, params, str(backend), f"{problems.source}{line}")


def _alias_table(registry: Mapping[str, StageSpec]) -> dict[str, StageSpec]:
    return {alias: spec for spec in registry.values() for alias in spec.aliases}


def _resolve(
    method: str, module: str | None, registry: Mapping[str, StageSpec],
    aliases: Mapping[str, StageSpec],
) -> StageSpec | None:
    if module:
        return aliases.get(f"{module}.{method}") or (
            registry.get(method) if module.startswith(("stages.", "tomo_streamer")) else None
        )
    return registry.get(method) or aliases.get(method)


def _scalar(node: yaml.Node | None) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return _construct(node)
    except yaml.YAMLError:
        return None


def _construct(node: yaml.Node | None) -> Any:
    if node is None:
        return None
    document = yaml.SafeLoader("")
    try:
        return document.construct_object(node, deep=True)
    finally:
        document.dispose()


def _key_node(mapping: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(mapping, yaml.MappingNode):
        for key_node, _ in mapping.value:
            if key_node.value == key:
                found: yaml.Node = key_node
                return found
    return None
