"""What the fleet tests share: a real nginx serving the repositories, the publisher's keys, and one test's
repository + device folder driven through the real `edgecls` command (tests/test_fleet*.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import cli
from webserver import serve_folder


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """nginx serving a folder on 127.0.0.1: (folder, base URL). Each test publishes into its own sub-folder."""
    srv = tmp_path_factory.mktemp("www")
    try:
        with serve_folder(srv) as url:
            yield srv, url
    except RuntimeError as e:
        if os.environ.get("CI") or "not installed" not in str(e):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys") / "keys"
    r = cli("keygen", d)
    assert r.returncode == 0, r.stderr
    return d


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def variant(bundle: Path, dest: Path, **meta) -> Path:
    """A copy of `bundle` whose edgecls.json differs by `meta` (a different bundle id; still a valid bundle)."""
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "edgecls.json").read_text())
    m.update(meta)
    (dest / "edgecls.json").write_text(json.dumps(m, indent=2))
    return dest


class Fleet:
    """One test's repository (served by nginx) and device folder."""

    def __init__(self, web, keys, tmp_path, name="repo"):
        srv, base = web
        self.repo, self.url, self.keys = srv / f"{tmp_path.name}-{name}", f"{base}/{tmp_path.name}-{name}", keys
        self.dev = tmp_path / "dev"

    def publish(self, bundle, *args):
        r = cli("publish", bundle, self.repo, "--keys", self.keys, "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def update(self, *args, url=None, env=None):
        root = ("--root", self.repo / "metadata" / "1.root.json") if not (self.dev / "tuf").is_dir() else ()
        r = cli("update", url or self.url, "--device-dir", self.dev, "--json", *root, *args, env=env)
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        assert lines, (r.returncode, r.stdout, r.stderr)
        return r, lines[-1]

    def current(self) -> dict[str, bytes]:
        return tree((self.dev / "current").resolve())


@pytest.fixture
def fleet(web, keys, tmp_path):
    return Fleet(web, keys, tmp_path)
