"""The bundle: the folder `export` writes and the device reads.

`edgecls.json` is the single contract: labels, preprocessing, each artifact's file, sha256, input and
output dtype/shape/quantisation, and the measured metrics. The device reads nothing else.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY, Format, find
from edgecls.fsutil import sha256_file
from edgecls.preprocess import PreprocessSpec

MANIFEST = "edgecls.json"
BUNDLE_FORMAT = "edgecls-bundle"
# 2: an int8 artifact's input may be fed as pixel codes (input.feed); a version-1 reader would feed it
# pixel values and answer nonsense, so it must refuse the bundle instead.
BUNDLE_VERSION = 2

# How the device fills an artifact's input tensor: edgecls.json artifacts.KEY.input.feed.
FEED_VALUES = "values"         # the default: pixel values (normalised first when the spec says it is not in the
                               # model), quantised with the tensor's scale and zero point when it is integer
PIXEL_CODES = "pixel-codes"    # each prepared 8-bit pixel p is the tensor's integer: uint8 p, int8 p − 128; the
                               # model folded its normalisation into that (convert/tflite.py, fold_plan)
INPUT_FEEDS = (FEED_VALUES, PIXEL_CODES)


@dataclass
class Artifact:
    fmt: Format
    path: Path
    meta: dict

    @property
    def key(self) -> str:
        return self.fmt.key


@dataclass
class Bundle:
    root: Path
    meta: dict
    labels: list[str]
    spec: PreprocessSpec

    @property
    def artifacts(self) -> dict[str, Artifact]:
        return {k: Artifact(BY_KEY[k], self.root / v["file"], v)
                for k, v in self.meta.get("artifacts", {}).items() if k in BY_KEY}

    def artifact(self, family: str | None = None, precision: str | None = None, verify: bool = True) -> Artifact:
        """The artifact for --format/--precision; defaults to the bundle's recommended one."""
        arts = self.artifacts
        if family is None and precision is None:
            key = self.meta.get("default_artifact") or next(iter(arts), None)
        else:
            family = family or BY_KEY[self.meta.get("default_artifact", "tflite-int8")].family
            precision = precision or "int8"
            try:
                key = find(family, precision).key
            except KeyError:
                raise EdgeclsError(f"unknown format {family!r} / precision {precision!r}") from None
        if key not in arts:
            have = ", ".join(arts) or "none"
            raise EdgeclsError(f"bundle {self.root} has no {key} model (it has: {have})")
        art = arts[key]
        if verify:
            verify_artifact(art)
        return art


def verify_artifact(art: Artifact) -> None:
    if not art.path.is_file():
        raise EdgeclsError(f"bundle file missing: {art.path}")
    want = art.meta.get("sha256")
    if want and sha256_file(art.path) != want:
        raise EdgeclsError(f"bundle file {art.path.name} does not match its sha256 in {MANIFEST} (corrupt or replaced)")


def load_bundle(path: str | os.PathLike) -> Bundle:
    root = Path(path)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    manifest = root / MANIFEST
    if not root.exists():
        raise EdgeclsError(f"bundle not found: {root}")
    if not manifest.is_file():
        raise EdgeclsError(f"not a bundle: {root} has no {MANIFEST} (make one with `edgecls export RUN_DIR`)")
    try:
        meta = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeclsError(f"corrupt {manifest}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise EdgeclsError(f"{manifest} is not an edgecls bundle manifest")
    if int(meta.get("version", 0)) > BUNDLE_VERSION:
        raise EdgeclsError(f"{manifest} is bundle version {meta.get('version')}; this edgecls reads up to "
                           f"{BUNDLE_VERSION} — upgrade edgecls")
    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2:
        raise EdgeclsError(f"{manifest} has no valid labels list")
    spec = PreprocessSpec.from_dict(meta.get("preprocessing") or {})
    return Bundle(root=root, meta=meta, labels=[str(x) for x in labels], spec=spec)
