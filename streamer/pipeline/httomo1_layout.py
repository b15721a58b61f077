"""HTTomo 1.x pipelines read as the HTTomo 2.0 entries they stand for.

HTTomo 1.x wrote each step as ``- module.path: {method: {data_in: tomo, data_out: tomo,
parameters...}}``; a CoR finder's ``data_out: cor`` named its result and a later
``center: cor`` used it. HTTomo 2.0 replaced that with ``method``/``module_path``/
``parameters`` entries, ``id`` + ``side_outputs`` and ``${{id.side_outputs.NAME}}``. This
module rewrites the YAML *nodes* (so every message keeps the file's own line numbers):

* the loader ``httomo.data.hdf.loaders.standard_tomo``: ``preview`` as 1.x's list
  (angles, detector_y, detector_x) becomes 2.0's mapping; ``rotation_angles`` absent is
  1.x's default ``{data_path: /entry1/tomo_entry/data/rotation_angle}``; ``name``,
  ``dimension``, ``pad`` are kept (the 2.0 loader ignores them, as HTTomo 2.0 did);
* ``data_in``/``data_out`` of the main dataset (the loader's ``name``, ``tomo``) are
  dropped; a ``data_out`` naming something else (``cor``, or ``[cor, overlap, side,
  overlap_position]`` of ``find_center_360``) becomes ``id`` + ``side_outputs``, and a
  later parameter whose value is one of those names becomes the reference to it;
* ``data_in_multi``/``data_out_multi`` with the darks or flats (HTTomo 1.x then filtered
  the references too) are refused: here a filter acts on the projections only.

Anything else that does not fit the 1.x form is refused in one line. The names inside
(httomolibgpu 1.x's ``FBP``, ``median_filter3d``, ...) are then translated by
:mod:`streamer.pipeline.old_names` like those of any 2.x pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from streamer.errors import ConfigError

__all__ = ["is_httomo1", "to_httomo2"]

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_NULL = "tag:yaml.org,2002:null"
_LOADER = "httomo.data.hdf.loaders"
#: HTTomo 1.x's ``standard_tomo`` default for the angles (``httomo/data/hdf/loaders.py``).
_ANGLES_1X = "/entry1/tomo_entry/data/rotation_angle"
_PREVIEW_AXES = ("angles", "detector_y", "detector_x")
_DATA_KEYS = ("data_in", "data_out", "data_in_multi", "data_out_multi")
#: A 1.x ``data_out`` list names these side outputs, in this order.
_SIDE_OUTPUT_ORDER: Mapping[str, tuple[str, ...]] = {
    "find_center_360": ("cor", "overlap", "side", "overlap_position"),
}


def _step(node: yaml.Node) -> tuple[yaml.ScalarNode, yaml.ScalarNode, yaml.Node] | None:
    """``(module key, method key, parameters)`` of a 1.x entry, or ``None``."""
    if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
        return None
    module, body = node.value[0]
    if not (isinstance(module, yaml.ScalarNode) and "." in str(module.value)
            and isinstance(body, yaml.MappingNode) and len(body.value) == 1):
        return None
    method, parameters = body.value[0]
    if not isinstance(method, yaml.ScalarNode):
        return None
    return module, method, parameters


def is_httomo1(root: yaml.Node | None) -> bool:
    """Whether ``root`` is a pipeline in HTTomo 1.x's layout (its first entry is)."""
    return (isinstance(root, yaml.SequenceNode) and bool(root.value)
            and _step(root.value[0]) is not None
            and str(root.value[0].value[0][0].value) not in ("method", "module_path"))


def _scalar(text: str, like: yaml.Node) -> yaml.ScalarNode:
    return yaml.ScalarNode(_STR, text, like.start_mark, like.end_mark)


def _mapping(pairs: list[tuple[yaml.Node, yaml.Node]], like: yaml.Node) -> yaml.MappingNode:
    return yaml.MappingNode(_MAP, pairs, like.start_mark, like.end_mark)


def _names(node: yaml.Node) -> list[str] | None:
    """A ``data_*`` value as a list of names (``None``: not names)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return [str(node.value)]
    if isinstance(node, yaml.SequenceNode) and all(
            isinstance(item, yaml.ScalarNode) and item.tag == _STR for item in node.value):
        return [str(item.value) for item in node.value]
    return None


class _RefusedError(Exception):
    """An entry that does not fit the 1.x form; ``node`` locates it."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node


def to_httomo2(root: yaml.SequenceNode, source: str) -> yaml.SequenceNode:
    """The HTTomo 2.0 entries ``root`` (1.x's layout) stands for; :class:`ConfigError` in
    one line where an entry cannot be read so."""
    dataset = "tomo"
    defined: dict[str, str] = {}  # 1.x result name → "${{id.side_outputs.name}}"
    entries: list[yaml.Node] = []
    for index, node in enumerate(root.value):
        try:
            step = _step(node)
            if step is None:
                raise _RefusedError(node, "expected an HTTomo 1.x step '- module.path: {method: "
                               "{...}}' like the pipeline's first")
            module, method, parameters = step
            if str(module.value) == _LOADER:
                entries.append(_loader(node, module, method, parameters))
                dataset = _loader_name(parameters) or dataset
                continue
            entries.append(_method(index, node, step, dataset=dataset, defined=defined))
        except _RefusedError as refused:
            line = refused.node.start_mark.line + 1
            raise ConfigError(f"{source}:{line}: pipeline[{index}]: HTTomo 1.x layout: "
                              f"{refused}") from None
    return yaml.SequenceNode(root.tag, entries, root.start_mark, root.end_mark)


def _loader_name(parameters: yaml.Node) -> str | None:
    for key, value in parameters.value if isinstance(parameters, yaml.MappingNode) else []:
        if key.value == "name" and isinstance(value, yaml.ScalarNode):
            return str(value.value)
    return None


def _loader(node: yaml.Node, module: yaml.ScalarNode, method: yaml.ScalarNode,
            parameters: yaml.Node) -> yaml.MappingNode:
    pairs: list[tuple[yaml.Node, yaml.Node]] = []
    given = parameters.value if isinstance(parameters, yaml.MappingNode) else []
    for key, value in given:
        is_list = key.value == "preview" and isinstance(value, yaml.SequenceNode)
        pairs.append((key, _preview(value) if is_list else value))
    if not any(key.value == "rotation_angles" for key, _ in given):
        angles = _mapping([(_scalar("data_path", node), _scalar(_ANGLES_1X, node))], node)
        pairs.append((_scalar("rotation_angles", node), angles))
    return _entry(node, module, method, _mapping(pairs, parameters))


def _preview(value: yaml.SequenceNode) -> yaml.MappingNode:
    """1.x's ``[angles, detector_y, detector_x]`` list as 2.0's mapping (null: all)."""
    if len(value.value) > len(_PREVIEW_AXES):
        raise _RefusedError(value, f"preview: expected at most 3 items (angles, detector_y, "
                       f"detector_x), got {len(value.value)}")
    pairs: list[tuple[yaml.Node, yaml.Node]] = [
        (_scalar(axis, item), item)
        for axis, item in zip(_PREVIEW_AXES, value.value, strict=False)
        if not (isinstance(item, yaml.ScalarNode) and item.tag == _NULL)]
    return _mapping(pairs, value)


def _method(index: int, node: yaml.Node, step: tuple[yaml.ScalarNode, yaml.ScalarNode,
                                                     yaml.Node], *, dataset: str,
            defined: dict[str, str]) -> yaml.MappingNode:
    module, method, parameters = step
    given = parameters.value if isinstance(parameters, yaml.MappingNode) else []
    pairs: list[tuple[yaml.Node, yaml.Node]] = []
    outputs: list[str] = []
    for key, value in given:
        if key.value in _DATA_KEYS:
            names = _names(value)
            if names is None:
                raise _RefusedError(key, f"{key.value}: expected a dataset name or a list of "
                               "them")
            if key.value.endswith("_multi") and names != [dataset]:
                raise _RefusedError(key, f"{key.value}: {names}: HTTomo 1.x applied the method "
                               "to each of those datasets; here it acts on the projections "
                               f"only: write data_in: {dataset}, data_out: {dataset} to "
                               "accept that (the darks and flats are then not filtered)")
            if key.value == "data_in" and names != [dataset]:
                raise _RefusedError(key, f"data_in: expected {dataset!r} (the loader's dataset), "
                               f"got {names}")
            if key.value == "data_out" and names != [dataset]:
                outputs = names
            continue
        used = isinstance(value, yaml.ScalarNode) and value.tag == _STR and (
            value.value in defined)
        pairs.append((key, _scalar(defined[str(value.value)], value) if used else value))
    entry = _entry(node, module, method, _mapping(pairs, parameters))
    if outputs:
        entry.value.extend(_side_outputs(index, method, outputs, defined))
    return entry


def _side_outputs(index: int, method: yaml.ScalarNode, outputs: list[str],
                  defined: dict[str, str]) -> list[tuple[yaml.Node, yaml.Node]]:
    """``id`` + ``side_outputs`` for a 1.x ``data_out`` naming results, recorded in
    ``defined`` for the parameters after it."""
    order = _SIDE_OUTPUT_ORDER.get(str(method.value), ("cor",))
    if len(outputs) > len(order):
        raise _RefusedError(method, f"data_out: {outputs}: {method.value} gives "
                       f"{', '.join(order)}")
    entry_id = f"{method.value}_{index}"
    pairs: list[tuple[yaml.Node, yaml.Node]] = []
    for output, name in zip(order, outputs, strict=False):
        pairs.append((_scalar(output, method), _scalar(name, method)))
        defined[name] = f"${{{{{entry_id}.side_outputs.{name}}}}}"
    return [(_scalar("id", method), _scalar(entry_id, method)),
            (_scalar("side_outputs", method), _mapping(pairs, method))]


def _entry(node: yaml.Node, module: yaml.ScalarNode, method: yaml.ScalarNode,
           parameters: yaml.MappingNode) -> yaml.MappingNode:
    return _mapping([(_scalar("method", method), _scalar(str(method.value), method)),
                     (_scalar("module_path", module), _scalar(str(module.value), module)),
                     (_scalar("parameters", parameters), parameters)], node)
