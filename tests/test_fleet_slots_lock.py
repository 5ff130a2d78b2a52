"""The device folder has several writers: the update checker (`edgecls update`, or run's checker thread),
`edgecls teach --install`, the page's "Run it now", and run's start-up record. Each reads state.json, then writes
it whole; without one lock between them an install can lose another's record, or two installs race for one slot.
Real processes, real renames, no mocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

WRITER = textwrap.dedent('''
    import sys
    import time
    from pathlib import Path
    from edgecls.fleet.slots import DeviceDir

    dev, tag, rounds = DeviceDir(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    Path(sys.argv[4]).touch()                          # ready
    while not Path(sys.argv[5]).exists():              # all start together
        time.sleep(0.001)
    for i in range(rounds):
        made = dev.new_slot()
        (made / "who.txt").write_text(f"{tag}-{i}")
        dev.install(made, {"version": i, "bundle_id": f"{tag}-{i}"})
        dev.note(**{f"done_{tag}": i})                 # a read-modify-write beside the other writer's
''')


def test_two_processes_installing_at_once_lose_nothing(tmp_path):
    dev = tmp_path / "device"
    rounds, tags = 40, ("x", "y")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(dev), tag, str(rounds), str(tmp_path / f"ready-{tag}"),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in tags]
    while not all((tmp_path / f"ready-{tag}").exists() for tag in tags):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]          # unlocked: two installs renaming into one slot fail here

    state = json.loads((dev / "state.json").read_text())
    assert {state[f"done_{tag}"] for tag in tags} == {rounds - 1}, state    # no writer's last record lost
    current, previous = state["current"], state["previous"]
    assert current["slot"] != previous["slot"], state
    for record in (current, previous):                 # each slot holds the bundle its record names
        assert (dev / "slots" / record["slot"] / "who.txt").read_text() == record["bundle_id"], state
    assert os.readlink(dev / "current") == f"slots/{current['slot']}"
    assert sorted(p.name for p in (dev / "slots").iterdir()) == ["a", "b"]   # nothing half-made left


def test_threads_and_nested_writes_share_the_lock(tmp_path):
    """In one process (run's checker thread beside the loop's confirm): the lock is re-entrant for the nested
    writes (install_taught → install, starting → revert) and makes the threads take turns."""
    from edgecls.fleet.slots import DeviceDir

    dev = DeviceDir(tmp_path)
    errors = []

    def writer(tag):
        try:
            for i in range(30):
                made = dev.new_slot()
                (made / "who.txt").write_text(f"{tag}-{i}")
                dev.install(made, {"version": i, "bundle_id": f"{tag}-{i}"})
                dev.note(**{f"done_{tag}": i})
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    state = dev.state()
    assert state["done_x"] == state["done_y"] == 29, state
    for record in (state["current"], state["previous"]):
        assert (tmp_path / "slots" / record["slot"] / "who.txt").read_text() == record["bundle_id"]
    with dev.locked():                                 # re-entrant: a held lock does not block its own writes
        assert dev.revert("test")["current"] == state["previous"]
