"""The bundle: the folder `export` writes and the device reads.

`edgecls.json` is the single contract: labels, preprocessing, each artifact's file, sha256, input and
output dtype/shape/quantisation, and the measured metrics. The device reads nothing else.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY, Format, find
from edgecls.fsutil import sha256_file
from edgecls.metrics import MARGIN_QUANTILES
from edgecls.preprocess import LEGACY_RESAMPLER, PreprocessSpec

MANIFEST = "edgecls.json"
BUNDLE_FORMAT = "edgecls-bundle"
# 2: an int8 artifact's input may be fed as pixel codes (input.feed); a version-1 reader would feed it
# pixel values and answer nonsense, so it must refuse the bundle instead.
# 3: preprocessing.resampler is required ("exact": edgecls.resample, the same bytes on every CPU, or "opencv");
# a version-2 reader would ignore it and resize with OpenCV, so it must refuse. Versions 1-2 predate the field:
# their pixels came from OpenCV, and they are read as "opencv" (declaring anything else there is refused).
BUNDLE_VERSION = 3
RESAMPLER_SINCE = 3

# How the device fills an artifact's input tensor: edgecls.json artifacts.KEY.input.feed.
FEED_VALUES = "values"         # the default: pixel values (normalised first when the spec says it is not in the
                               # model), quantised with the tensor's scale and zero point when it is integer
PIXEL_CODES = "pixel-codes"    # each prepared 8-bit pixel p is the tensor's integer: uint8 p, int8 p − 128; the
                               # model folded its normalisation into that (convert/tflite.py, fold_plan)
INPUT_FEEDS = (FEED_VALUES, PIXEL_CODES)

# The labels, in order, as JSON inside each model file export writes: an ONNX metadata_props key and a TFLite
# metadata entry of this name. The device refuses a file whose labels are not edgecls.json's (runtime.load_model).
LABELS_META = "edgecls.labels"


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

    def select(self, family: str | None = None, precision: str | None = None) -> list[str]:
        """The keys of the artifacts matching --format/--precision (None: any), for commands that take several."""
        keys = [k for k, a in self.artifacts.items()
                if (family is None or a.fmt.family == family) and (precision is None or a.fmt.precision == precision)]
        if not keys:
            raise EdgeclsError(f"bundle {self.root} has no artifact matching --format {family or 'any'} "
                               f"--precision {precision or 'any'} (it has: {', '.join(self.artifacts) or 'none'})")
        return keys

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

    @property
    def float_margin(self) -> dict | None:
        """report.float_margin: the float reference's top-1 margin quantiles on the held-out photos (export
        records it since `run --shadow` exists; older bundles lack it)."""
        return (self.meta.get("report") or {}).get("float_margin")


def verify_artifact(art: Artifact) -> None:
    if not art.path.is_file():
        raise EdgeclsError(f"bundle file missing: {art.path}")
    want = art.meta.get("sha256")
    if not want:  # load_bundle requires one; an Artifact built by hand (export's candidates) is not checked
        raise EdgeclsError(f"bundle file {art.path.name} has no sha256 in {MANIFEST}")
    verify_file(art.path, want)


def verify_file(path: Path, want: str) -> None:
    if not path.is_file():
        raise EdgeclsError(f"bundle file missing: {path}")
    if sha256_file(path) != want:
        raise EdgeclsError(f"bundle file {path.name} does not match its sha256 in {MANIFEST} (corrupt or replaced)")


# ---------------------------------------------------------------- the one schema of edgecls.json
# Checked on every load, before anything is allocated or opened. Unknown extra keys are allowed (newer
# exports add fields: metrics, report, search steps...); the fields the device reads must be right.

OUTPUT_KINDS = ("probabilities",)   # every artifact export writes ends in its softmax
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_file(root: Path, entry, name: str, where: str) -> None:
    """A {"file", "sha256"} entry: a file name confined to the bundle folder, with a well-formed sha256."""
    if not isinstance(entry, dict):
        raise EdgeclsError(f"{where}: {name} must be an object")
    file = entry.get("file")
    if not isinstance(file, str) or not file or "\0" in file:
        raise EdgeclsError(f"{where}: {name}.file must be a file name")
    # Confined to the bundle folder: no absolute paths, no "..", no symlink pointing out of it.
    if Path(file).is_absolute() or not (root / file).resolve().is_relative_to(root.resolve()):
        raise EdgeclsError(f"{where}: {name}.file {file!r} points outside the bundle folder")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise EdgeclsError(f"{where}: {name}.sha256 must be the file's 64-hex-digit sha256 "
                           f"(got {sha!r}); every file the device reads is checked first")


def _check_artifact(root: Path, key: str, art, where: str) -> None:
    _check_file(root, art, f"artifacts.{key}", where)
    if art.get("output_kind", "probabilities") not in OUTPUT_KINDS:
        raise EdgeclsError(f"{where}: artifacts.{key}.output_kind must be one of {', '.join(OUTPUT_KINDS)}")
    for side in ("input", "output"):
        io = art.get(side, {})
        if not isinstance(io, dict):
            raise EdgeclsError(f"{where}: artifacts.{key}.{side} must be an object")
        if "scale" in io and not (_is_number(io["scale"]) and io["scale"] >= 0):
            raise EdgeclsError(f"{where}: artifacts.{key}.{side}.scale must be a finite number >= 0")
        if "zero_point" in io and not _is_int(io["zero_point"]):
            raise EdgeclsError(f"{where}: artifacts.{key}.{side}.zero_point must be a whole number")


def _check_unique(labels: list[str], where: str) -> None:
    """Two classes of one name cannot be told apart in any answer, event or kept photo (`daisy 93% (daisy 4%)`);
    a list with a repeat is a mixed-up edit, not a model (lists with homonyms name them apart: crane (bird))."""
    seen: set[str] = set()
    repeated = [x for x in labels if x in seen or seen.add(x)]
    if repeated:
        raise EdgeclsError(f"{where}: labels name {repeated[0]!r} more than once: every class needs its own name")


def labels_from_meta(raw, where: str) -> list[str] | None:
    """Labels as export records them (JSON text or bytes: a model file's LABELS_META value, golden/labels.json);
    None when there are none. `where` names the record in the error."""
    if raw is None:
        return None
    try:
        labels = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        labels = None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise EdgeclsError(f"{where} is not a JSON list of names: not what export wrote")
    return labels


def labels_difference(recorded: list[str], listed: list[str]) -> str:
    """Where labels recorded at export first differ from edgecls.json's: "class 3: 'roses' there, 'daisy' here"."""
    i = next((i for i, (a, b) in enumerate(zip(recorded, listed)) if a != b), min(len(recorded), len(listed)))

    def at(labels: list[str]) -> str:
        return repr(labels[i]) if i < len(labels) else "none"
    return f"class {i}: {at(recorded)} there, {at(listed)} in edgecls.json"


def _check_float_margin(report, where: str) -> None:
    """report.float_margin is optional (older bundles lack it); when present `run --shadow` judges drift by it."""
    fm = report.get("float_margin") if isinstance(report, dict) else None
    if fm is None:
        return
    keys = [f"p{q}" for q in MARGIN_QUANTILES]
    values = [fm.get(k) for k in keys] if isinstance(fm, dict) else []
    if (not values or not _is_int(fm.get("n")) or fm["n"] < 1
            or not all(_is_number(v) and 0 <= v <= 1 for v in values) or values != sorted(values)):
        raise EdgeclsError(f"{where}: report.float_margin must hold n >= 1 and the top-1 margin percentiles "
                           f"{', '.join(keys)}, rising, each within 0..1")


def validate_manifest(meta, root: Path, where: str) -> PreprocessSpec:
    """Check a parsed edgecls.json against the bundle schema; returns its preprocessing. EdgeclsError if wrong."""
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise EdgeclsError(f"{where} is not an edgecls bundle manifest")
    version = meta.get("version")
    if not _is_int(version) or version < 1:
        raise EdgeclsError(f"{where}: version must be a whole number >= 1 (got {version!r})")
    if version > BUNDLE_VERSION:
        raise EdgeclsError(f"{where} is bundle version {version}; this edgecls reads up to "
                           f"{BUNDLE_VERSION} — upgrade edgecls")
    labels = meta.get("labels")
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(x, str) and x.strip() for x in labels)):
        raise EdgeclsError(f"{where} has no valid labels list (at least 2 non-empty names)")
    _check_unique(labels, where)
    try:
        spec = PreprocessSpec.from_dict(meta.get("preprocessing"),
                                        implied_resampler=None if version >= RESAMPLER_SINCE else LEGACY_RESAMPLER)
        if version < RESAMPLER_SINCE and spec.resampler != LEGACY_RESAMPLER:
            raise EdgeclsError(f"resampler {spec.resampler!r} needs bundle version {RESAMPLER_SINCE} (a version-"
                               f"{version} reader would resize with {LEGACY_RESAMPLER})")
    except EdgeclsError as e:
        raise EdgeclsError(f"{where}: {e}") from None
    arts = meta.get("artifacts")
    if not isinstance(arts, dict) or not any(k in BY_KEY for k in arts):
        raise EdgeclsError(f"{where}: artifacts must name at least one of {', '.join(BY_KEY)}")
    for key, art in arts.items():
        if key in BY_KEY:  # an artifact kind this version does not know is left alone
            _check_artifact(root, key, art, where)
    _check_float_margin(meta.get("report"), where)
    default = meta.get("default_artifact")
    if default is not None and (default not in BY_KEY or default not in arts):
        raise EdgeclsError(f"{where}: default_artifact {default!r} is not one of its artifacts")
    if "golden" in meta:   # optional: bundles exported before the self-test have none
        _check_golden(root, meta["golden"], where)
    _check_teach(root, meta, where)
    return spec


def _check_teach(root: Path, meta: dict, where: str) -> None:
    """The optional teach set and a taught version's head (device/teach/command.py): files like an artifact's; a head
    names the labels its model file was exported with."""
    for name in ("teach", "head"):
        if name in meta:
            _check_file(root, meta[name], name, where)
    base = meta["head"].get("base_labels") if "head" in meta else []
    if not isinstance(base, list) or not all(isinstance(x, str) for x in base):
        raise EdgeclsError(f"{where}: head.base_labels must list the model file's own labels")


# ---------------------------------------------------------------- the bundle's own exam (edgecls.json golden)
# Written by convert/golden.py, run by device/model/verify.py. Every file is an entry like an artifact's.
GOLDEN_FILES = ("images", "photos_prepared", "float")   # golden.<name>: one array file each
GOLDEN_LABELS = "labels"   # golden.labels: the labels as exported (JSON); optional, bundles before it lack it


def golden_entries(golden: dict) -> dict[str, dict]:
    """Every file entry of a golden block, by where it sits in edgecls.json (for checks and hashing)."""
    out = {f"golden.{name}": golden[name] for name in (*GOLDEN_FILES, GOLDEN_LABELS) if name in golden}
    out.update({f"golden.photos[{i}]": p for i, p in enumerate(golden["photos"])})
    out.update({f"golden.outputs.{key}": e for key, e in golden["outputs"].items()})
    return out


def _check_golden(root: Path, golden, where: str) -> None:
    if not isinstance(golden, dict):
        raise EdgeclsError(f"{where}: golden must be an object")
    photos, outputs = golden.get("photos"), golden.get("outputs")
    if not isinstance(photos, list) or not isinstance(outputs, dict):
        raise EdgeclsError(f"{where}: golden.photos must be a list and golden.outputs an object")
    for key in outputs:
        if key not in BY_KEY:
            raise EdgeclsError(f"{where}: golden.outputs.{key} is not an artifact kind ({', '.join(BY_KEY)})")
    if any(name not in golden for name in GOLDEN_FILES):
        raise EdgeclsError(f"{where}: golden needs {', '.join(GOLDEN_FILES)}")
    for name, entry in golden_entries(golden).items():
        _check_file(root, entry, name, where)


def load_bundle(path: str | os.PathLike) -> Bundle:
    root = Path(path)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    manifest = root / MANIFEST
    if not root.exists():
        raise EdgeclsError(f"bundle not found: {root}")
    if not manifest.is_file():  # also refuses a FIFO named edgecls.json, whose read would block
        raise EdgeclsError(f"not a bundle: {root} has no {MANIFEST} (make one with `edgecls export RUN_DIR`)")
    try:
        meta = json.loads(manifest.read_text(), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise EdgeclsError(f"corrupt {manifest}: {e}") from None
    spec = validate_manifest(meta, root, str(manifest))
    check_labels_txt(root, meta["labels"])
    return Bundle(root=root, meta=meta, labels=list(meta["labels"]), spec=spec)


LABELS_TXT = "labels.txt"


def check_labels_txt(root: Path, labels: list[str]) -> None:
    """labels.txt is a copy of edgecls.json's labels for other tools; one that disagrees means a hand edit or a
    mixed-up bundle, and which of the two the device should believe cannot be known: refuse."""
    path = root / LABELS_TXT
    if path.is_file() and path.read_text(encoding="utf-8", errors="replace").splitlines() != list(labels):
        raise EdgeclsError(f"{path} does not list the labels of {root / MANIFEST} (edited by hand, or from another "
                           f"bundle): re-export, or fix one to match the other")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (a non-finite number)")
