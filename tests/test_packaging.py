"""What the wheel carries besides code: the licence and the example pipelines.

Building a wheel here would need the network (build isolation), so the test checks the
pieces the build uses: the package-data globs, the ``streamer/configs`` link onto
``configs/``, and the licence file named in ``pyproject.toml``. (Checked by hand: the
wheel holds ``streamer/configs/*.yaml`` and ``dist-info/licenses/LICENSE``, and
``check configs/standard.yaml`` from the unpacked wheel uses the shipped file.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamer.shipped import SHIPPED_DIR, shipped_names, shipped_pipeline
from tests.conftest import REPO


def test_the_licence_is_apache_2_and_goes_into_the_wheel() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_every_example_pipeline_is_package_data() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["streamer"]
    assert "configs/*.yaml" in package_data
    assert (REPO / "configs").resolve() == SHIPPED_DIR.resolve()
    in_repo = sorted(path.stem for path in (REPO / "configs").glob("*.yaml"))
    assert in_repo and shipped_names() == in_repo
    shipped = shipped_pipeline("standard")
    assert shipped is not None
    assert shipped.read_text() == (REPO / "configs" / "standard.yaml").read_text()
    assert shipped_pipeline("standard.yaml") == shipped
    assert shipped_pipeline("no-such-pipeline") is None


def test_the_shipped_folder_is_the_repository_configs_folder() -> None:
    link = REPO / "streamer" / "configs"
    assert link.is_symlink() and Path(link.readlink()) == Path("../configs")


def test_the_viewer_static_files_are_package_data() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["streamer"]
    package = REPO / "streamer"
    static = sorted((package / "live" / "viewer" / "static").iterdir())
    assert [path.name for path in static] == ["index.html", "viewer.css", "viewer.js"]
    packaged = {path for glob in package_data for path in package.glob(glob)}
    assert set(static) <= packaged
