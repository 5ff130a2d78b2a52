"""The bundle's labels held to what export wrote: part of the bundle's exam (device/model/verify.py).

Labels are only names, so no answer of the exam can see them: a consistent edit of edgecls.json and labels.txt
(two lines swapped) keeps every shape and every probability, and names every answer wrong. Export keeps two
records of them outside edgecls.json: golden/labels.json (hashed, convert/golden.py) and each model file's own
metadata (edgecls.bundle.LABELS_META; device/model/runtime.py: load_model refuses a file carrying other labels).
A bundle exported before either existed still runs, with one line saying its labels are unbound.
"""
from __future__ import annotations

from edgecls.bundle import Bundle, labels_difference
from edgecls.formats import BY_KEY


def labels_check(bundle: Bundle, exported: list[str] | None, models: dict) -> dict:
    """The bundle's labels against the two records export keeps of them: `exported` (golden/labels.json; None in
    a bundle exported before it), and each examined model file's own (load_model refused a file carrying others).
    `unbound`: neither exists, so a consistent edit of edgecls.json and labels.txt cannot be seen."""
    files = {k: bool(getattr(m, "labels_bound", False)) for k, m in models.items()}
    problem = None
    if exported is not None and exported != bundle.labels:
        problem = (f"labels edited since export: {bundle.root}'s edgecls.json (and labels.txt) list "
                   f"{', '.join(bundle.labels[:4])}…, golden/labels.json the labels as exported "
                   f"{', '.join(exported[:4])}… ({labels_difference(exported, bundle.labels)}): every "
                   "answer would be named wrong — put the labels back or re-export")
    return {"golden": exported is not None, "files": files, "problem": problem,
            "unbound": exported is None and not all(files.values())}


UNBOUND = ("exported before edgecls bound them to the model file and the exam: an edit of edgecls.json and "
           "labels.txt cannot be caught — re-export to bind them")


def unbound_note(bundle: Bundle) -> str:
    return f"edgecls: note: {bundle.root}'s labels are unbound ({UNBOUND})"


def labels_line(lab: dict) -> str:
    """`edgecls verify`'s line for the labels (after "labels        ")."""
    if lab["problem"]:
        return "fail   " + lab["problem"]
    if lab["unbound"]:
        bare = [BY_KEY[k].filename for k, on in lab["files"].items() if not on]
        return f"unbound  {', '.join(bare)}: {UNBOUND}"
    sources = ["golden/labels.json"] * lab["golden"] + [BY_KEY[k].filename for k, on in lab["files"].items() if on]
    return f"pass   as exported ({', '.join(sources)})"
