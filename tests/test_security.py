"""Security rules that hold for the whole code base (issue 8, item 7).

* Nothing deserialises code: no pickle/marshal/shelve, no eval/exec, no unsafe YAML
  loader, no ``allow_pickle=True`` — checked on the source of every module.
* Every command that binds a socket binds loopback unless told ``--allow-remote``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import zmq

from streamer.errors import ConfigError, TransportError
from streamer.wire.transport import Endpoint, open_socket

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*REPO.glob("streamer/**/*.py"), *REPO.glob("stages/**/*.py")])
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def test_the_sources_were_found() -> None:
    assert len(SOURCES) > 40


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_is_ever_deserialised(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
            assert not names & FORBIDDEN_MODULES, f"{where}: imports {names}"
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in FORBIDDEN_MODULES, where
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.id if isinstance(function, ast.Name) else (
                function.attr if isinstance(function, ast.Attribute) else "")
            builtin = isinstance(function, ast.Name)
            assert not (builtin and name in FORBIDDEN_CALLS), f"{where}: calls {name}()"
            if name in {"load", "load_all"} and isinstance(function, ast.Attribute) and \
                    isinstance(function.value, ast.Name) and function.value.id == "yaml":
                raise AssertionError(f"{where}: yaml.{name}() can build objects; use a "
                                     "safe loader")
            for keyword in node.keywords:
                if keyword.arg == "allow_pickle":
                    assert isinstance(keyword.value, ast.Constant) and \
                        keyword.value.value is False, f"{where}: allow_pickle must be False"
            if name in {"unpackb", "Unpacker"}:
                hooks = {k.arg: k.value for k in node.keywords}
                assert not {"object_hook", "object_pairs_hook", "list_hook"} & set(hooks), \
                    f"{where}: msgpack hooks build objects"
                ext = hooks.get("ext_hook")  # allowed only to refuse extension types
                assert ext is None or (isinstance(ext, ast.Name)
                                       and ext.id.startswith("_refuse")), where


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://192.0.2.1:*"])
def test_binding_off_host_needs_allow_remote(address: str) -> None:
    with zmq.Context() as context, pytest.raises((ConfigError, TransportError),
                                                 match=r"loopback|allow"):
        open_socket(context, "pull", Endpoint(address, bind=True), hwm=4)
