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
(``module_path`` + ``method``) listed in the stage's aliases. HTTomo's language is
understood as HTTomo's checker (``httomo/yaml_checker.py``) and runner understand it:

* an HTTomo pipeline (entries with a foreign ``module_path``) starts with its loader and
  every entry has ``method``, ``module_path`` and ``parameters``; the loader entry is
  honoured (:mod:`streamer.pipeline.httomo_loader`), not skipped;
* ``id`` + ``side_outputs`` name a method's side outputs, ``${{id.side_outputs.NAME}}``
  uses one as a parameter (``NAME`` is the side output's *value*, as in HTTomo): unknown
  ids, duplicate ids, an ``id`` without ``side_outputs``, unknown names and references to
  a later entry are refused. A CoR finder's ``cor`` sets a reconstruction's ``center``
  (it is left unset in the step and filled when the finder has run);
* ``!Sweep [a, b, ...]`` and ``!SweepRange {start, stop, step}`` (``stop`` excluded, as
  numpy's ``arange``) make a parameter sweep: one pipeline variant per value, each
  value validated; at most one swept parameter, no ``save_to_images`` after it (HTTomo
  saves sweep results itself);
* ``save_result: true`` writes the step's output to ``{id or task_N}-{package}-
  {method}.h5`` beside the output, as HTTomo's ``save_intermediate_data`` (``recon``;
  :mod:`streamer.pipeline.intermediate`);
* duplicate keys anywhere, non-string parameter names and parameters left as
  ``REQUIRED`` are refused;
* names from older httomolibgpu releases (``FBP``, ``paganin_filter_tomopy``,
  ``median_filter3d``, ...) are translated to the current method where the maths is the
  same, with a note, or refused naming the current equivalent
  (:mod:`streamer.pipeline.old_names`); HTTomo 1.x's layout (``- module: {method:
  {...}}``) is read as the 2.0 entries it stands for
  (:mod:`streamer.pipeline.httomo1_layout`).

Anything else we cannot map is refused, saying which entry and why, with the closest
known names. All problems are reported together, each as ``FILE:LINE: pipeline[i].field:
what was expected, got what``. Nothing from YAML is ever imported or executed: the YAML
is parsed with a SafeLoader whose only extra constructors build sweep values, and names
only select registry entries.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml
from pydantic import ValidationError

from stages.spec import PIPELINE_FOLDER, Pattern, StageParams, StageSpec
from streamer.errors import ConfigError
from streamer.pipeline import httomo1_layout, old_names
from streamer.pipeline.httomo_loader import (
    IGNORED_OLD,
    LOADER_MODULES,
    LoaderSettings,
    loader_settings,
)

ENTRY_KEYS = frozenset({"method", "module_path", "parameters", "backend", "id", "save_result",
                        "side_outputs"})
#: ``${{id.side_outputs.name}}``, HTTomo's reference to another method's side output.
REFERENCE = re.compile(r"^\$\{\{(?P<id>[^.{}]+)\.(?P<kind>[^.{}]+)\.(?P<name>[^.{}]+)\}\}$")
#: Side outputs per stage (HTTomo's method database); CoR finders give ``cor``.
SIDE_OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "find_center_360": ("cor", "overlap", "side", "overlap_position"),
    "calculate_stats": ("glob_stats",),
}
#: Which parameter each side output may set (value: the parameter's name).
SIDE_OUTPUT_TARGETS: Mapping[str, tuple[str, ...]] = {
    "cor": ("center",),
    "glob_stats": ("glob_stats",),
    "overlap": ("overlap",),
    "side": ("side", "rotation"),
}
IMAGE_SAVERS = frozenset({"save_to_images"})


@dataclass(frozen=True)
class SweepValues:
    """The values of a ``!Sweep``/``!SweepRange`` parameter (as constructed from YAML)."""

    values: tuple[Any, ...]


class _SweepLoader(yaml.SafeLoader):
    """SafeLoader plus HTTomo's two sweep tags; nothing else is constructed."""


def _sweep_manual(loader: yaml.SafeLoader, node: yaml.Node) -> SweepValues:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!Sweep: expected a list of values", node.start_mark)
    values = tuple(loader.construct_sequence(node, deep=True))
    if not values:
        raise yaml.constructor.ConstructorError(
            None, None, "!Sweep: expected at least one value, got none", node.start_mark)
    return SweepValues(values)


def _sweep_range(loader: yaml.SafeLoader, node: yaml.Node) -> SweepValues:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!SweepRange: expected {start, stop, step}", node.start_mark)
    fields = loader.construct_mapping(node, deep=True)
    if set(fields) != {"start", "stop", "step"}:
        raise yaml.constructor.ConstructorError(
            None, None, f"!SweepRange: expected exactly start, stop and step, got "
            f"{sorted(map(str, fields))}", node.start_mark)
    numbers = [fields[k] for k in ("start", "stop", "step")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers) or (
            numbers[2] == 0):
        raise yaml.constructor.ConstructorError(
            None, None, f"!SweepRange: expected numbers and a non-zero step, got {fields}",
            node.start_mark)
    values = tuple(v.item() for v in np.arange(*numbers))
    if not values or len(values) > 1000:
        raise yaml.constructor.ConstructorError(
            None, None, f"!SweepRange: expected 1 to 1000 values, got {len(values)}",
            node.start_mark)
    return SweepValues(values)


_SweepLoader.add_constructor("!Sweep", _sweep_manual)
_SweepLoader.add_constructor("!SweepRange", _sweep_range)


@dataclass(frozen=True)
class PipelineStep:
    """One validated stage of a pipeline.

    ``linked`` maps a parameter set by another entry's side output to that output
    (``"centering.cor"``); the parameter itself holds ``None`` until the run fills it.
    """

    spec: StageSpec
    params: StageParams
    backend: str
    where: str  # "FILE:LINE" of the entry, for messages at run time
    linked: tuple[tuple[str, str], ...] = ()
    #: HTTomo's ``save_result: true``: the step's output goes to an intermediate file
    #: named :attr:`result_name` (:mod:`streamer.pipeline.intermediate`).
    save_result: bool = False
    #: HTTomo's file stem for it: ``{id or task_N}-{package}-{method}``.
    result_name: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Sweep:
    """A parameter sweep: ``steps[step]``'s ``parameter`` takes each of ``values``."""

    step: int
    parameter: str
    values: tuple[Any, ...]
    where: str


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline and where it came from (the YAML goes into every output).

    ``steps`` use the sweep's first value; :meth:`variants` gives one pipeline per value.
    ``loader`` is what an HTTomo loader entry asked for, if there was one.
    """

    steps: tuple[PipelineStep, ...]
    source: str
    text: str
    notes: tuple[str, ...] = ()
    sweep: Sweep | None = None
    loader: LoaderSettings | None = None
    folder: Path | None = None  #: the pipeline file's folder: relative file paths start there

    def variants(self) -> list[tuple[str, tuple[PipelineStep, ...]]]:
        """``(label, steps)`` per sweep value (label ``"parameter=value"``), or the one
        pipeline with label ``""``."""
        if self.sweep is None:
            return [("", self.steps)]
        sweep, out = self.sweep, []
        for value in sweep.values:
            step = self.steps[sweep.step]
            params = step.params.model_validate({**dict(step.params), sweep.parameter: value},
                                                context={PIPELINE_FOLDER: self.folder})
            steps = list(self.steps)
            steps[sweep.step] = replace(step, params=params)
            out.append((f"{sweep.parameter}={value}", tuple(steps)))
        return out


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
    return parse_pipeline(text, registry, source=str(path), folder=path.absolute().parent)


def parse_pipeline(text: str, registry: Mapping[str, StageSpec], *, source: str,
                   folder: Path | None = None) -> Pipeline:
    """Validate pipeline YAML ``text`` (``source`` names it in messages); a relative file
    path among the parameters (``metadata_path``) is resolved from ``folder``, the
    pipeline file's (``None``: as given, from the current directory)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    problems = _Problems(source)
    _duplicate_keys(root, problems)
    layout_1x = isinstance(root, yaml.SequenceNode) and httomo1_layout.is_httomo1(root)
    if isinstance(root, yaml.SequenceNode) and layout_1x:
        if problems.messages:  # duplicated keys: said before the layout is read
            raise ConfigError("\n".join(problems.messages))
        root = httomo1_layout.to_httomo2(root, source)
    entries = _entry_nodes(root, problems)
    context = _Context(registry, _alias_table(registry), problems)
    context.validation = {PIPELINE_FOLDER: folder}
    context.httomo = isinstance(root, yaml.SequenceNode) and any(
        _is_foreign(_scalar(dict(_pairs(node)).get("module_path"))) for node in entries)
    context.later_ids = {str(_scalar(dict(_pairs(node)).get("id"))) for node in entries}
    if layout_1x:
        context.notes.append("HTTomo 1.x layout read as HTTomo 2.0's entries (data_in/"
                             "data_out dropped, a finder's data_out as id + side_outputs)")
    for index, node in enumerate(entries):
        _parse_entry(index, node, context)
    if context.httomo and entries and not context.loader_seen_first:
        problems.add(entries[0], "pipeline[0]", "an HTTomo pipeline starts with its loader "
                     f"({LOADER_MODULES[0]}.standard_tomo), got another method")
    _reference_reducers_first(context.steps, problems)
    saving = [step for step in context.steps if step.save_result]
    if context.sweep is not None and saving:
        problems.add(None, f"{saving[0].name} ({saving[0].where})", "save_result: true with "
                     f"a parameter sweep ({context.sweep.where}): every variant would write "
                     "the same file; HTTomo saves each sweep result itself; remove it")
    if not problems.messages and not context.steps and context.loader is None:
        problems.add(root, "pipeline", "expected at least one stage, got none")
    if problems.messages:
        raise ConfigError("\n".join(problems.messages))
    return Pipeline(tuple(context.steps), source, text, tuple(context.notes), context.sweep,
                    context.loader, folder)


def _reference_reducers_first(steps: list[PipelineStep], problems: _Problems) -> None:
    """A step that reduces the darks and flats (``data_reducer``) acts once, before the
    projections are corrected: refused after a step that uses the references (it could
    not change what that step got) or after a sinogram step (no references there)."""
    for index, step in enumerate(steps):
        if step.spec.reduces_references is None:
            continue
        for before in steps[:index]:
            if before.spec.finds_center is not None:
                continue  # runs on the corrected projections, after the correction
            if before.spec.needs_references:
                problems.add(None, f"{step.name} ({step.where})", "it reduces the darks and "
                             f"flats the flat/dark correction uses: expected it before "
                             f"{before.name!r} ({before.where}), which uses them, got after")
                break
            if before.spec.pattern is Pattern.SINOGRAM:
                problems.add(None, f"{step.name} ({step.where})", "it reduces the darks and "
                             "flats before the projections are corrected: expected it before "
                             f"the sinogram stage {before.name!r} ({before.where}), got after")
                break


class _Context:
    """What the entries parsed so far have defined."""

    def __init__(self, registry: Mapping[str, StageSpec], aliases: Mapping[str, StageSpec],
                 problems: _Problems) -> None:
        self.registry = registry
        self.aliases = aliases
        self.problems = problems
        self.steps: list[PipelineStep] = []
        self.notes: list[str] = []
        self.httomo = False
        self.loader_seen_first = False
        self.loader: LoaderSettings | None = None
        self.sweep: Sweep | None = None
        #: id → (stage name or None for a loader, {side-output value: output key}, index)
        self.ids: dict[str, tuple[str | None, dict[str, str], int]] = {}
        self.later_ids: set[str] = set()
        #: pydantic's validation context for every parameter model (the pipeline's folder)
        self.validation: dict[str, Any] = {}


def _pairs(node: yaml.Node) -> list[tuple[Any, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        return [(key.value, value) for key, value in node.value]
    return []


def _is_foreign(module: Any) -> bool:
    return isinstance(module, str) and not module.startswith(("stages.", "tomo_streamer"))


def _duplicate_keys(node: yaml.Node | None, problems: _Problems) -> None:
    """Refuse a key repeated in any mapping (YAML keeps the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    problems.add(key, str(key.value), f"duplicated key (first at line "
                                 f"{seen[key.value] + 1}); each key may appear once")
                seen.setdefault(key.value, key.start_mark.line)
            _duplicate_keys(value, problems)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, problems)


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


def _parse_entry(index: int, node: yaml.Node, context: _Context) -> None:
    problems = context.problems
    where = f"pipeline[{index}]"
    if not isinstance(node, yaml.MappingNode):
        problems.add(node, where, "expected a mapping with 'method' and 'parameters'")
        return
    fields = dict(_pairs(node))
    for key, _ in node.value:
        if key.value not in ENTRY_KEYS:
            problems.add(key, f"{where}.{key.value}", f"unknown key; expected one of "
                         f"{', '.join(sorted(ENTRY_KEYS))}")
    if context.httomo:
        missing = [k for k in ("method", "module_path", "parameters") if k not in fields]
        if missing:
            problems.add(node, where, f"an HTTomo entry needs method, module_path and "
                         f"parameters; {', '.join(missing)} missing")
    method_node = fields.get("method")
    method = _scalar(method_node)
    if not isinstance(method, str) or not method:
        problems.add(method_node or node, f"{where}.method", "expected a method name")
        return
    module_node = fields.get("module_path")
    module = _scalar(module_node) if module_node is not None else None
    if module is not None and not isinstance(module, str):
        problems.add(module_node, f"{where}.module_path", f"expected a dotted module name, "
                     f"got {module!r}")
        return
    raw = _parameters(fields.get("parameters"), where, node, problems)
    entry_id = _entry_id(fields, where, node, context)
    if module in LOADER_MODULES:
        _loader_entry(index, method, module, raw, where=where, node=node, context=context)
        if entry_id is not None:
            problems.add(fields["id"], f"{where}.id", "a loader has no side outputs to name")
        return
    translated = _old_name(method, module, raw, fields, where=where, context=context)
    if translated is None:
        spec = None  # an old name without an equivalent: refused, said by _old_name
    else:
        spec = _resolve(translated[0], translated[1], context.registry, context.aliases)
        raw = translated[2]
        if spec is None:
            wanted = f"{module}.{method}" if module else method
            close = difflib.get_close_matches(method, list(context.registry), n=3,
                                              cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            problems.add(method_node, f"{where}.method", f"unknown method {wanted!r}: no "
                         f"stage of ours is registered under that name{hint}")
    if spec is None:
        if entry_id is not None:  # keep its id known: references to it are not errors too
            side = _construct(fields["side_outputs"]) if "side_outputs" in fields else None
            named = {str(v): str(k) for k, v in side.items()} if isinstance(side, dict) else {}
            context.ids[entry_id] = (None, named, index)
        return
    if entry_id is not None:
        _side_outputs(entry_id, spec, fields, where=where, index=index, context=context)
    if raw is None:
        return
    parameters_node = fields.get("parameters")
    raw, linked = _references(raw, parameters_node, where, node, context)
    raw = _sweeps(raw, spec, parameters_node, where=where, node=node, context=context)
    if raw is None:
        return
    try:
        params = spec.params.model_validate(raw, context=context.validation)
    except ValidationError as error:
        for field, message in parameter_problems(error, spec):
            key_node = _key_node(parameters_node, field.split(".")[0]) if field else None
            problems.add(key_node or parameters_node or node,
                         _parameters_label(where, spec, field), message)
        return
    backend_node = fields.get("backend")
    backend = _scalar(backend_node) if backend_node is not None else spec.backends[0]
    if backend not in spec.backends:
        problems.add(backend_node, f"{where}.backend", f"stage {spec.name!r} runs on "
                     f"{'|'.join(spec.backends)}, got {backend!r}")
        return
    if context.sweep is not None and spec.name in IMAGE_SAVERS:
        problems.add(method_node, f"{where}.method", f"{method} after a parameter sweep "
                     f"({context.sweep.where}): HTTomo saves each sweep result itself; "
                     "remove it")
    save_node = fields.get("save_result")
    save = _scalar(save_node) if save_node is not None else False
    if save is None:
        save = False  # HTTomo's null: the method's default (ours: not saved)
    if not isinstance(save, bool):
        problems.add(save_node, f"{where}.save_result", f"expected true or false, got {save!r}")
        return
    task = entry_id or f"task_{index if context.loader_seen_first else index + 1}"
    package = module.split(".")[0] if isinstance(module, str) else "stages"
    line = f":{node.start_mark.line + 1}"
    context.steps.append(PipelineStep(spec, params, str(backend),
                                      f"{problems.source}{line}", linked, save,
                                      f"{task}-{package}-{method}"))


def _old_name(method: str, module: str | None, raw: dict[str, Any] | None,
              fields: Mapping[str, yaml.Node], *, where: str, context: _Context,
              ) -> tuple[str, str | None, dict[str, Any] | None] | None:
    """``(method, module, parameters)`` to resolve: a name from an older httomolibgpu
    release translated to the current one (:mod:`streamer.pipeline.old_names`, a note
    for ``check``), or the entry as given; ``None`` when the old name has no equivalent
    or its parameters cannot be translated (said as a problem)."""
    entry = old_names.find(module, method, raw or {}) if module else None
    if entry is None:
        return method, module, raw
    if isinstance(entry, old_names.Removed):
        context.problems.add(fields.get("method"), f"{where}.method", old_names.refusal(entry))
        return None
    if raw is None:
        return method, module, raw
    translation = old_names.translate(entry, raw)
    for key, message in translation.problems:
        spot = _key_node(fields.get("parameters"), key) if key else None
        context.problems.add(spot or fields.get("method"), f"{where}.parameters.{key}",
                             message)
    if translation.problems:
        return None
    if translation.note:
        context.notes.append(f"{where}: {translation.note}")
    return translation.method, translation.module, translation.params


def _parameters(parameters_node: yaml.Node | None, where: str, node: yaml.Node,
                problems: _Problems) -> dict[str, Any] | None:
    """The entry's parameters as plain values (sweeps as :class:`SweepValues`)."""
    try:
        raw = _construct(parameters_node) if parameters_node is not None else {}
    except yaml.YAMLError as error:  # e.g. a !!python/... tag: never constructed
        problem = getattr(error, "problem", None) or str(error)
        problems.add(parameters_node, f"{where}.parameters", f"unsupported YAML: {problem}")
        return None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(parameters_node, f"{where}.parameters", f"expected a mapping, got {raw!r}")
        return None
    bad = False
    for key, value in raw.items():
        if not isinstance(key, str):
            problems.add(parameters_node, f"{where}.parameters", f"parameter names are "
                         f"text, got {key!r}")
            bad = True
        elif isinstance(value, str) and value == "REQUIRED":
            problems.add(_key_node(parameters_node, key) or node, f"{where}.parameters.{key}",
                         "a required parameter left as REQUIRED in the template; give a value")
            bad = True
    return None if bad else raw


def _entry_id(fields: Mapping[str, yaml.Node], where: str, node: yaml.Node,
              context: _Context) -> str | None:
    id_node = fields.get("id")
    if id_node is None:
        if "side_outputs" in fields:
            context.problems.add(fields["side_outputs"], f"{where}.side_outputs",
                                 "side outputs need an 'id' to be referred to")
        return None
    entry_id = _scalar(id_node)
    if not isinstance(entry_id, str) or not entry_id or not entry_id.isidentifier():
        context.problems.add(id_node, f"{where}.id", f"expected a name (letters, digits, "
                             f"_), got {entry_id!r}")
        return None
    if entry_id in context.ids:
        first = context.ids[entry_id][2]
        context.problems.add(id_node, f"{where}.id", f"duplicate id {entry_id!r} (already "
                             f"pipeline[{first}]); ids must be unique")
        return None
    if "side_outputs" not in fields:
        context.problems.add(id_node, f"{where}.id", f"id {entry_id!r} has no side_outputs; "
                             "a method with an id must name its side outputs")
    return entry_id


def _side_outputs(entry_id: str, spec: StageSpec, fields: Mapping[str, yaml.Node], *,
                  where: str, index: int, context: _Context) -> None:
    side_node = fields.get("side_outputs")
    offered = SIDE_OUTPUTS.get(spec.name, ("cor",) if spec.finds_center is not None else ())
    named: dict[str, str] = {}
    if side_node is not None:
        mapping = _construct(side_node) if isinstance(side_node, yaml.MappingNode) else None
        if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
            context.problems.add(side_node, f"{where}.side_outputs", "expected a mapping of "
                                 "output: name")
            return
        for key, value in mapping.items():
            if key not in offered:
                context.problems.add(_key_node(side_node, key) or side_node,
                                     f"{where}.side_outputs.{key}", f"{spec.name} has "
                                     f"side outputs {', '.join(offered) or 'none'}, got "
                                     f"{key!r}")
            named[value] = key
    context.ids[entry_id] = (spec.name, named, index)


def _references(raw: dict[str, Any], parameters_node: yaml.Node | None, where: str,
                node: yaml.Node, context: _Context) -> tuple[dict[str, Any],
                                                             tuple[tuple[str, str], ...]]:
    """Replace ``${{id.side_outputs.name}}`` values by ``None`` (filled at run time) after
    checking the reference; return the links."""
    out, linked = dict(raw), []
    for key, value in raw.items():
        if not (isinstance(value, str) and value.startswith("${{")):
            continue
        spot = _key_node(parameters_node, key) or node
        label = f"{where}.parameters.{key}"
        out[key] = None  # checked below; never validated as a value
        match = REFERENCE.match(value)
        if match is None or match["kind"] != "side_outputs":
            context.problems.add(spot, label, f"expected a reference "
                                 f"${{{{ID.side_outputs.NAME}}}}, got {value!r}")
            continue
        ref_id, name = match["id"], match["name"]
        if ref_id not in context.ids:
            context.problems.add(spot, label, f"reference to unknown id {ref_id!r}"
                                 + (" (it is defined later: a side output can only be used "
                                    "after its method)" if ref_id in context.later_ids else
                                    f"; known ids: {', '.join(context.ids) or 'none'}"))
            continue
        stage, named, _ = context.ids[ref_id]
        if name not in named:
            context.problems.add(spot, label, f"{ref_id!r} has no side output named "
                                 f"{name!r}; it names {', '.join(named) or 'none'}")
            continue
        output = named[name]
        if stage is None:  # an unknown method, already reported
            continue
        if key not in SIDE_OUTPUT_TARGETS.get(output, ()):
            context.problems.add(spot, label, f"side output {output!r} of {stage} cannot set "
                                 f"parameter {key!r} (it sets "
                                 f"{', '.join(SIDE_OUTPUT_TARGETS.get(output, ())) or 'nothing'})")
            continue
        linked.append((key, f"{ref_id}.{output}"))
    return out, tuple(linked)


def _sweeps(raw: dict[str, Any], spec: StageSpec, parameters_node: yaml.Node | None, *,
            where: str, node: yaml.Node, context: _Context) -> dict[str, Any] | None:
    """Record a sweep (checking every value) and put its first value in place."""
    swept = [(k, v) for k, v in raw.items() if isinstance(v, SweepValues)]
    if not swept:
        return raw
    out = dict(raw)
    for key, sweep in swept:
        spot = _key_node(parameters_node, key) or node
        label = _parameters_label(where, spec, key)
        if context.sweep is not None or len(swept) > 1:
            context.problems.add(spot, label, "one parameter sweep per pipeline; another is "
                                 f"at {context.sweep.where if context.sweep else where}")
            return None
        for value in sweep.values:
            try:
                spec.params.model_validate({**raw, key: value}, context=context.validation)
            except ValidationError as error:
                field, message = parameter_problems(error, spec)[0]
                if field and field != key:
                    message = f"{field}: {message}"
                context.problems.add(spot, label, f"sweep value {value!r}: {message}")
                return None
        line = f"{context.problems.source}:{spot.start_mark.line + 1}"
        context.sweep = Sweep(len(context.steps), key, sweep.values, line)
        out[key] = sweep.values[0]
    return out


def _loader_entry(index: int, method: str, module: str, raw: dict[str, Any] | None, *,
                  where: str, node: yaml.Node, context: _Context) -> None:
    if index == 0:
        context.loader_seen_first = True
    else:
        context.problems.add(node, f"{where}.method", "the loader must be the first entry")
    if method != "standard_tomo":
        context.problems.add(node, f"{where}.method", f"loader {module}.{method}: only "
                             "standard_tomo is understood")
        return
    if raw is None:
        return
    parameters_node = dict(_pairs(node)).get("parameters")

    def problem(field: str, text: str) -> None:
        context.problems.add(_key_node(parameters_node, field) or node,
                             f"{where}.parameters.{field}", text)

    context.loader = loader_settings(raw, problem)
    given = ", ".join(f"{k}={v!r}" for k, v in context.loader.given().items()) or "auto-detect"
    ignored = sorted(set(raw) & IGNORED_OLD)
    unread = f"; {', '.join(ignored)} ignored, as HTTomo 2.0 did" if ignored else ""
    context.notes.append(f"{where}: HTTomo loader {method}: {given} (used by `recon`; "
                         f"command-line options win){unread}")


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
    document = _SweepLoader("")
    try:
        return document.construct_object(node, deep=True)
    finally:
        document.dispose()


def _parameters_label(where: str, spec: StageSpec, field: str) -> str:
    """``pipeline[N] (stage NAME).parameters.FIELD`` (no field: ``….parameters``)."""
    return f"{where} (stage {spec.name}).parameters{'.' + field if field else ''}"


#: What pydantic puts before the text of an error raised in a validator.
_PYDANTIC_PREFIXES: Final = ("Value error, ", "Assertion failed, ")


def parameter_problems(error: ValidationError, spec: StageSpec) -> list[tuple[str, str]]:
    """Each problem pydantic found in ``spec``'s parameters as ``(field, message)``: the
    field path (``""`` when a model validator's error names no parameter) and the
    message without pydantic's boilerplate (``Value error,``, ``Field required``,
    ``Extra inputs are not permitted``), with the value given where there is one.
    A model validator's message that starts with a parameter's name (``window: …``,
    the stages' convention; a parameter of the model or one given) is placed on it."""
    fields = spec.params.model_fields
    found: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        kind = item["type"]
        message = str(item.get("ctx", {}).get("error", item["msg"])) \
            if kind in ("value_error", "assertion_error") else str(item["msg"])
        for prefix in _PYDANTIC_PREFIXES:
            message = message.removeprefix(prefix)
        if not loc:  # a model validator: the whole mapping is its input
            name, _, rest = message.partition(": ")
            given = item.get("input")
            if rest and (name in fields or (isinstance(given, dict) and name in given)):
                found.append((name, rest))
            else:
                found.append(("", message))
            continue
        if kind == "missing":
            message = "required, not given"
        elif kind == "extra_forbidden":
            message = (f"unknown parameter (got {item.get('input')!r}); {spec.name} takes "
                       f"{', '.join(sorted(fields)) or 'no parameters'}")
        elif not (kind in ("value_error", "assertion_error") and "got " in message):
            message = f"{message}, got {item.get('input')!r}"  # (not twice)
        found.append((".".join(loc), message))
    return found


def _key_node(mapping: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(mapping, yaml.MappingNode):
        for key_node, _ in mapping.value:
            if key_node.value == key:
                found: yaml.Node = key_node
                return found
    return None
