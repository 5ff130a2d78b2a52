"""What a release says about itself, and the device's three questions before it installs one: is it for me
(the rollout cohort), can I run it (its needs), is it newer than what I run.

A release is one entry of the repository's signed index (`releases.json`, a TUF target like the bundles):
version (a whole number, the publisher's, only ever growing), the bundle's archive (target path), its id, what it
needs, its rollout percentage and the publisher's canary floor.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass, field

from edgecls import __version__
from edgecls.bundle import BUNDLE_VERSION, Bundle
from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY

INDEX = "releases.json"
INDEX_FORMAT = "edgecls-releases"
# The first edgecls that reads each bundle version (all so far: 0.1.0); a release needs at least that one.
READS_SINCE = {1: "0.1.0", 2: "0.1.0", 3: "0.1.0"}
# Which importable module runs each family on a device (device/model/runtime.py loads them the same way).
RUNTIME_MODULES = {"tflite": ("ai_edge_litert", "tflite_runtime"), "onnx": ("onnxruntime",)}


def version_tuple(text: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", text.split("+")[0])
    if not nums:
        raise EdgeclsError(f"not a version: {text!r}")
    return tuple(int(n) for n in nums[:3])


@dataclass
class Release:
    version: int
    target: str                    # the archive's path in the repository's targets
    bundle_id: str
    needs: dict
    rollout_percent: float = 100.0
    min_agreement_with_current: float | None = None   # the publisher's floor for the canary (fraction 0..1)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": self.version, "target": self.target, "bundle_id": self.bundle_id, "needs": self.needs,
                "rollout_percent": self.rollout_percent,
                "min_agreement_with_current": self.min_agreement_with_current, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "Release":
        try:
            known = {k: d[k] for k in ("version", "target", "bundle_id", "needs")}
            rel = cls(**known, rollout_percent=float(d.get("rollout_percent", 100.0)),
                      min_agreement_with_current=d.get("min_agreement_with_current"),
                      extra={k: v for k, v in d.items() if k not in cls.__dataclass_fields__})
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeclsError(f"the repository's release index has a bad entry: {e}") from None
        if not isinstance(rel.version, int) or rel.version < 1 or not 0 <= rel.rollout_percent <= 100:
            raise EdgeclsError(f"the repository's release index has a bad entry: version {rel.version!r}, "
                               f"rollout {rel.rollout_percent!r}")
        return rel


def needs_of(bundle: Bundle, min_edgecls: str | None = None) -> dict:
    """What a device must have to run `bundle`: a reader of its format version, an edgecls at least this new,
    and a runtime for its default artifact (other artifacts are optional)."""
    version = int(bundle.meta.get("version", 1))
    default = bundle.meta.get("default_artifact") or next(iter(bundle.artifacts))
    return {"bundle_version": version, "min_edgecls": min_edgecls or READS_SINCE.get(version, __version__),
            "family": BY_KEY[default].family, "default_artifact": default}


def why_not_runnable(needs: dict) -> str | None:
    """None when this device can run a release with these needs, else the reason in a few words."""
    try:
        if int(needs["bundle_version"]) > BUNDLE_VERSION:
            return (f"bundle format version {needs['bundle_version']} is newer than this edgecls reads "
                    f"({BUNDLE_VERSION}): upgrade edgecls on the device")
        if version_tuple(str(needs["min_edgecls"])) > version_tuple(__version__):
            return f"needs edgecls {needs['min_edgecls']} or newer (this device has {__version__})"
        modules = RUNTIME_MODULES.get(needs["family"])
    except (KeyError, TypeError, ValueError, EdgeclsError) as e:
        return f"its needs cannot be read ({e})"
    if modules is None:
        return f"its model family {needs['family']!r} is unknown to this edgecls"
    if not any(importlib.util.find_spec(m) for m in modules):
        return f"no runtime for its {needs['family']} model on this device (pip install {modules[0].replace('_', '-')})"
    return None


def in_rollout(device_id: str, release: Release) -> bool:
    """Whether this device is in the release's first `rollout_percent` percent. A stable hash of the device id
    and the version: the same devices each time for one release (10% → 50% keeps the first 10%), other devices
    first for the next release."""
    digest = hashlib.sha256(f"{device_id}:{release.version}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000 / 100   # 0.00 … 99.99
    return bucket < release.rollout_percent


def parse_index(data: bytes) -> list[Release]:
    import json

    try:
        doc = json.loads(data)
        if doc.get("format") != INDEX_FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}")
        return [Release.from_dict(r) for r in doc["releases"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise EdgeclsError(f"the repository's release index is unreadable: {e}") from None


def index_bytes(releases: list[Release]) -> bytes:
    import json

    doc = {"format": INDEX_FORMAT, "releases": [r.to_dict() for r in sorted(releases, key=lambda r: r.version)]}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
