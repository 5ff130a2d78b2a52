"""`train --out`: where it may write, and `--force` replacing a run without losing it before the new one exists.
(What a run folder holds, and whether it can resume: edgecls/rundir.py.)

Rules (docs/guarantees.md):
- `--out` is never the data folder, inside it, or a folder that contains it.
- An existing, non-empty `--out` is only ever replaced when it is an edgecls run and `--force` is given.
- The old run is renamed to a hidden sibling (`.NAME.replaced`) just before the new run writes its first
  file, and deleted only when the new run has saved its first checkpoint (then it has something to
  resume from). A failure or Ctrl-C before that removes the new folder and renames the old run back.
  A process killed in that window leaves the sibling; the next `train` on NAME puts it back (or deletes
  it when NAME has a checkpoint by then).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.progress import say
from edgecls.rundir import has_checkpoint, is_complete, is_run


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path("/")


def check_out_dir(out: Path, data_dir: str | os.PathLike, force: bool) -> None:
    """Everything about --out that can be known before TensorFlow loads and before anything is written."""
    out_abs, data_abs = out.resolve(), Path(data_dir).resolve()
    if out_abs == data_abs or data_abs in out_abs.parents or out_abs in data_abs.parents:
        raise EdgeclsError(f"--out {out} must be outside the data folder {data_dir} and must not contain it")
    if out.exists() and not out.is_dir():
        raise EdgeclsError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_run(out):
            raise EdgeclsError(f"{out} exists and is not an edgecls run; choose another --out "
                               f"(train only ever replaces a run folder it wrote)")
        if not force:
            raise EdgeclsError(f"{out} already holds a run: `edgecls train --resume {out}` continues it, "
                               f"--force replaces it")
    base = _nearest_existing(out_abs.parent)
    if not base.is_dir():
        raise EdgeclsError(f"--out {out}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK) or (out.is_dir() and not os.access(out, os.W_OK | os.X_OK)):
        raise EdgeclsError(f"--out {out}: cannot write in {out if out.is_dir() else base} "
                           f"(read-only or no permission)")


def _aside(out: Path) -> Path:
    return out.with_name(f".{out.name}.replaced")


def recover_replaced(out: Path, quiet: bool = False) -> None:
    """Finish what a killed `--force` left: keep whichever of the two runs can be used."""
    aside = _aside(out)
    if not aside.is_dir():
        return
    if out.is_dir() and (has_checkpoint(out) or is_complete(out)):
        shutil.rmtree(aside, ignore_errors=True)
        return
    if out.exists():
        shutil.rmtree(out)
    os.replace(aside, out)
    say(f"warning: put back the run an interrupted `train --force` had set aside: {out}", quiet)


class Replacement:
    """The new run folder's life until its first checkpoint: created here, rolled back on failure."""

    def __init__(self, out: Path):
        self.out, self.aside = out, _aside(out)
        self.had_old = False
        self.existed_empty = False
        self.begun = self.committed = False

    def begin(self) -> None:
        try:
            if self.out.is_dir() and any(self.out.iterdir()):
                os.replace(self.out, self.aside)
                self.had_old = True
            else:
                self.existed_empty = self.out.is_dir()
            self.begun = True   # from here on whatever is at `out` is the new run's
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.rollback()
            raise EdgeclsError(f"cannot create the run folder {self.out}: {e.strerror or e}") from None

    def commit(self) -> None:
        """The new run has a checkpoint: the old one may go."""
        if not self.committed:
            self.committed = True
            shutil.rmtree(self.aside, ignore_errors=True)

    def rollback(self) -> None:
        """Failed before the first checkpoint: no stub is left; the old run, if any, is back in place."""
        if not self.begun or self.committed:
            return
        self.begun = False
        shutil.rmtree(self.out, ignore_errors=True)
        if self.had_old:
            os.replace(self.aside, self.out)
        elif self.existed_empty:  # the user's own empty folder stays
            self.out.mkdir(exist_ok=True)
