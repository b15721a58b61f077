"""``--help`` and user errors answer without loading the heavy libraries.

Every command used to import algotom, SciPy, h5py and the whole stage registry before
parsing (3 s for ``--help``). The check is on what is imported, not on a duration: a
fresh interpreter parses the arguments and lists the modules it then holds."""

from __future__ import annotations

import json
import subprocess

import pytest

HEAVY = ("algotom", "scipy", "h5py", "stages", "aiohttp", "tifffile", "pywt", "finufft",
         "streamer.live.feed", "streamer.run.from_file")

PROBE = """
import contextlib, io, json, sys
from streamer.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["run", "--help"],
    ["recon", "--help"],
    ["replay", "--help"],
    ["run", "/no/such/pipeline.yaml"],
    ["recon", "/no/such/scan.h5", "-o", "x.h5"],
    ["simulate", "--bind", "tcp://[127.0.0.1]:5999"],
    ["ingest", "--max-frame-bytes", "0"],
])
def test_help_and_user_errors_load_no_heavy_library(argv: list[str], python: str,
                                                    cli_env: dict[str, str]) -> None:
    result = subprocess.run([python, "-c", PROBE, *argv], env=cli_env, text=True,
                            capture_output=True, timeout=120, check=True)
    answer = json.loads(result.stdout)
    assert answer["code"] in (0, 2)
    loaded = [name for name in answer["modules"]
              if any(name == heavy or name.startswith(heavy + ".") for heavy in HEAVY)]
    assert loaded == [], f"{argv}: {loaded[:10]}"
