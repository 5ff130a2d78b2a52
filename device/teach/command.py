"""`edgecls teach BUNDLE --label NEW --source SRC`: the device learns a new class itself, in seconds, without
TensorFlow (docs/teach.md).

The bundle's own model computes the photos' embeddings (its second output, convert/embeddings.py); the classifier
is rebuilt in NumPy (device/teach/head.py: the new class imprinted from its normalised mean, then a few steps of
L2-regularised softmax regression over the stored embeddings of every class); the unknown rule is re-calibrated
(device/model/unknown.py); and a new bundle version is written beside the old one (device/teach/version.py), which is
kept, untouched, for going back. `--more LABEL` adds photos to a class, `--forget LABEL` removes one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from edgecls.bundle import Bundle, load_bundle
from edgecls.errors import EdgeclsError

REEXPORT = ("was exported before edgecls could teach (its models have no embedding output and it holds no "
            "teach set): re-export it from its run with this edgecls (`edgecls export RUN_DIR`), then teach")


@dataclass
class TeachState:
    """A bundle version's classifier and stored embeddings, in its label order."""
    labels: list[str]
    base_labels: list[str]        # the labels the model file itself answers for
    kernel: np.ndarray            # (D, C)
    bias: np.ndarray              # (C,)
    arrays: dict[str, np.ndarray]  # teach.npz: embeddings/classes (training), calib_embeddings/calib_classes (held out)

    @classmethod
    def of(cls, bundle: Bundle) -> TeachState:
        from edgecls.device.teach.head import base_labels, load_npz

        if "teach" not in bundle.meta or not any("embedding" in (a.meta.get("outputs") or {})
                                                 for a in bundle.artifacts.values()):
            raise EdgeclsError(f"bundle {bundle.root} {REEXPORT}")
        arrays = load_npz(bundle.root, bundle.meta["teach"], "teach")
        head = load_npz(bundle.root, bundle.meta["head"], "head") if "head" in bundle.meta else arrays
        needed = ("embeddings", "classes", "calib_embeddings", "calib_classes", "kernel", "bias")
        if any(k not in arrays for k in needed) or any(k not in head for k in ("kernel", "bias")):
            raise EdgeclsError(f"{bundle.root}: its teach set lacks {', '.join(k for k in needed if k not in arrays)}"
                               f": not one edgecls wrote; re-export")
        kernel, bias = head["kernel"].astype(np.float32), head["bias"].astype(np.float32)
        if kernel.shape[1] != len(bundle.labels):
            raise EdgeclsError(f"{bundle.root}: its classifier answers for {kernel.shape[1]} classes, the bundle "
                               f"lists {len(bundle.labels)}: edited by hand; re-export")
        return cls(list(bundle.labels), base_labels(bundle), kernel, bias, arrays)


def check_request(state: TeachState, label: str, more: bool, forget: bool) -> None:
    from edgecls.device.data.photos import check_label

    check_label(label, flag="--forget" if forget else ("--more" if more else "--label"))
    known = label in state.labels
    if forget or more:
        if not known:
            raise EdgeclsError(f"{label!r} is not one of the bundle's classes ({', '.join(state.labels)})")
        if forget and len(state.labels) <= 2:
            raise EdgeclsError(f"cannot forget {label!r}: a classifier needs at least 2 classes")
    elif known:
        raise EdgeclsError(f"the bundle already has a class {label!r}: --more {label} adds photos to it, "
                           f"--forget {label} removes it")


def stored(state: TeachState, new: np.ndarray, index: int) -> dict[str, np.ndarray]:
    """The teach set with `new` embeddings added to class `index` (a new class: the next index). They join the
    held-out set too, where a taught class has nothing else to be calibrated on (they flatter it: docs/teach.md)."""
    a = dict(state.arrays)
    for emb, cls in (("embeddings", "classes"), ("calib_embeddings", "calib_classes")):
        a[emb] = np.concatenate([a[emb], new.astype(np.float16)])
        a[cls] = np.concatenate([a[cls], np.full(len(new), index, np.int16)])
    return a


def add_class(state: TeachState, label: str, emb: np.ndarray) -> TeachState:
    from edgecls.device.teach.head import fit_head, imprint

    kernel, bias = imprint(state.kernel, state.bias, emb)
    arrays = stored(state, emb, len(state.labels))
    kernel, bias = fit_head(kernel, bias, arrays["embeddings"], arrays["classes"].astype(int))
    return TeachState([*state.labels, label], state.base_labels, kernel, bias, {**arrays, "kernel": kernel, "bias": bias})


def add_photos(state: TeachState, label: str, emb: np.ndarray) -> TeachState:
    from edgecls.device.teach.head import fit_head

    arrays = stored(state, emb, state.labels.index(label))
    kernel, bias = fit_head(state.kernel, state.bias, arrays["embeddings"], arrays["classes"].astype(int))
    return TeachState(state.labels, state.base_labels, kernel, bias, {**arrays, "kernel": kernel, "bias": bias})


def forget_class(state: TeachState, label: str) -> TeachState:
    """Its column and its stored embeddings go; every other class keeps its weights (softmax over the others is
    exactly the old classifier's answer among them)."""
    c = state.labels.index(label)
    keep = [i for i in range(len(state.labels)) if i != c]
    renumber = np.full(len(state.labels), -1, np.int16)
    renumber[keep] = np.arange(len(keep))
    a = dict(state.arrays)
    for emb, cls in (("embeddings", "classes"), ("calib_embeddings", "calib_classes")):
        rows = a[cls] != c
        a[emb], a[cls] = a[emb][rows], renumber[a[cls][rows]]
    kernel, bias = state.kernel[:, keep], state.bias[keep]
    return TeachState([state.labels[i] for i in keep], state.base_labels, kernel, bias,
                      {**a, "kernel": kernel, "bias": bias})


@dataclass
class TeachRequest:
    bundle: Path
    label: str
    source: str | None = None
    count: int = 20
    every: int = 1
    more: bool = False
    forget: bool = False
    out: Path | None = None
    photos: object | None = None   # device/teach/photos.py: TeachPhotos already prepared (the web page's frames)


def teach(req: TeachRequest) -> dict:
    """Teach (or --more, --forget); returns what was written. Nothing is written unless all of it is."""
    from edgecls.device.model.runtime import load_model
    from edgecls.device.teach.head import embed_all
    from edgecls.device.teach.photos import collect
    from edgecls.device.teach.version import next_version, write_version
    from edgecls.device.model.unknown import calibrate

    t0 = time.perf_counter()
    bundle = load_bundle(req.bundle)
    state = TeachState.of(bundle)
    check_request(state, req.label, req.more, req.forget)
    out = Path(req.out) if req.out else next_version(bundle.root)
    if out.exists():
        raise EdgeclsError(f"--out {out} exists: a bundle version is never overwritten; choose another folder")
    photos, emb = None, None
    if not req.forget:
        if req.photos is None and not req.source:
            raise EdgeclsError("--source is required (a folder, image files, a video or a camera)")
        photos = req.photos if req.photos is not None else collect(req.source, bundle.spec, req.count, req.every)
        source_key = bundle.meta["teach"].get("source_artifact")
        fmt = bundle.artifacts[source_key].fmt if source_key in bundle.artifacts else None
        model = load_model(bundle, fmt.family if fmt else None, fmt.precision if fmt else None, threads=1)
        emb = embed_all(model, photos.pixels)
    if req.forget:
        new = forget_class(state, req.label)
    elif req.more:
        new = add_photos(state, req.label, emb)
    else:
        new = add_class(state, req.label, emb)
    rule = calibrate({**new.arrays, "kernel": new.kernel})   # a taught class: its own photos, leave-one-out
    action = "forget" if req.forget else ("more" if req.more else "teach")
    written = write_version(bundle, out, new, rule, action, req.label, photos)
    written["seconds"] = round(time.perf_counter() - t0, 2)
    return written


def install_version(device: Path, written: dict) -> dict:
    """The version `teach` wrote (its reply, `written`) into the device folder's free slot, current: the folder's
    new state (fleet/slots.py: DeviceDir.install_taught). `teach --install` and the page's "Run it now" there."""
    from edgecls.fleet.slots import DeviceDir

    return DeviceDir(device).install_taught(Path(written["bundle"]), {k: written[k] for k in ("label", "action",
                                                                                               "labels")})


def teach_command(
    bundle: Path = typer.Argument(..., help="Bundle folder (from `edgecls export`, or a version teach wrote)."),
    label: Optional[str] = typer.Option(None, "--label", help="The new class's name."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Photos of it: a folder, image files, a video "
                                         "file or a camera (usb:N, /dev/videoN, picam, csi://N, rtsp://…)."),
    count: int = typer.Option(20, "--count", help="How many photos (a folder: evenly spaced over it)."),
    every: int = typer.Option(1, "--every", help="Video or camera: take every Nth frame."),
    more: Optional[str] = typer.Option(None, "--more", help="Add the photos to this existing class instead."),
    forget: Optional[str] = typer.Option(None, "--forget", help="Remove this class (no photos needed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the new bundle version (default: BUNDLE-vN "
                                       "beside it)."),
    install: bool = typer.Option(False, "--install", help="BUNDLE is DEVICE_DIR/current of `edgecls update`: put "
                                 "the new version into its free slot (`run` takes it at its next start)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON on stdout."),
):
    """Teach the bundle a new class on this device (no TensorFlow); writes a new bundle version beside it."""
    import json

    from edgecls.fleet.live import device_dir_of

    chosen = [(name, v) for name, v in (("--label", label), ("--more", more), ("--forget", forget)) if v is not None]
    if len(chosen) != 1:
        raise EdgeclsError("give exactly one of --label NEW, --more LABEL, --forget LABEL")
    device = device_dir_of(bundle) if install else None
    if install and device is None:   # refused before anything is taught or written
        raise EdgeclsError(f"--install puts the new version into a device folder's free slot: give DEVICE_DIR/current "
                           f"of `edgecls update`, not {bundle}")
    req = TeachRequest(bundle, chosen[0][1], source, count, every, more=more is not None,
                       forget=forget is not None, out=out)
    written = teach(req)
    if device is not None:
        written["installed"] = {"device": str(device), "slot": install_version(device, written)["current"]["slot"]}
    if json_out:
        print(json.dumps(written))
    else:
        print(f"bundle version written: {written['bundle']}  ({written['action']} {written['label']!r}: "
              f"{written['photos']} photos, {len(written['labels'])} classes, {written['seconds']:.1f} s; "
              f"exam {written['exam']}; the previous version is kept at {written['parent']})")
        if device is not None:
            print(f"installed in slot {written['installed']['slot']} of {device}: `run {device / 'current'}` takes it "
                  "at its next start (the slot it came from is the one to go back to)")


def register(app) -> None:
    app.command("teach")(teach_command)
