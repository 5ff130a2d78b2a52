"""CLI commands of the fleet (registered by edgecls.cli): keygen, publish, release (the publisher's side);
update, status (the device's side). python-tuf is imported inside the functions."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from edgecls.errors import EdgeclsError


def _percent(value: float, flag: str) -> float:
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise EdgeclsError(f"{flag} must be a percentage from 0 to 100 (got {value})")
    return value


def _days(value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= 366):
        raise EdgeclsError(f"--timestamp-days must be more than 0 and at most 366 (got {value})")
    return value


def keygen(keydir: Path = typer.Argument(..., help="Folder for the publisher's keys (made if missing).")):
    """Make the publisher's signing keys: one ed25519 key per TUF role (docs/fleet.md: where each should live)."""
    from edgecls.fleet.keys import keygen as make

    for path in make(keydir):
        typer.echo(path)
    typer.echo(f"keep {keydir / 'root.pem'} offline: it is needed only to make a repository or change its keys",
               err=True)


def publish(
    bundle: Path = typer.Argument(..., help="Bundle folder from `edgecls export`."),
    repo: Path = typer.Argument(..., help="Update repository folder (made on first use; serve it as plain files)."),
    keys: Path = typer.Option(..., "--keys", help="Folder of `edgecls keygen` (the root key only for a new repository)."),
    rollout: float = typer.Option(100.0, "--rollout", help="Percentage of devices that take this release."),
    min_agreement_with_current: Optional[float] = typer.Option(
        None, "--min-agreement-with-current",
        help="Canary floor: the share of live frames (0..1) on which the new model must answer as the running one."),
    min_edgecls: Optional[str] = typer.Option(None, "--min-edgecls", help="Oldest edgecls on a device that may take it."),
    timestamp_days: float = typer.Option(7.0, "--timestamp-days", help="Devices refuse the repository this many "
                                         "days after the last signing (run `edgecls release REPO --refresh` sooner)."),
    notify: Optional[str] = typer.Option(None, "--notify", help="Then wake the devices: mqtt://BROKER/TOPIC "
                                         "(their `run --update-topic`, default edgecls/updates)."),
    json_out: bool = typer.Option(False, "--json", help="Print the release as JSON."),
):
    """Add a bundle to an update repository as its next version, signed."""
    from edgecls.fleet.publish import publish as add

    _percent(rollout, "--rollout")
    if min_agreement_with_current is not None and not 0 <= min_agreement_with_current <= 1:
        raise EdgeclsError("--min-agreement-with-current is a fraction from 0 to 1")
    if notify is not None:   # checked before anything is signed
        from edgecls.device.sinks.mqtt_sink import parse_mqtt_url
        parse_mqtt_url(notify)
    release = add(bundle, repo, keys, rollout, min_agreement_with_current, min_edgecls, _days(timestamp_days))
    if notify is not None:
        from edgecls.fleet.notify import notify as wake

        wake(notify, release.version)
    if json_out:
        print(json.dumps(release.to_dict(), indent=2))
    else:
        typer.echo(f"published {bundle} as version {release.version} of {repo} ({release.rollout_percent:g}% of devices)")


def release(
    repo: Path = typer.Argument(..., help="Update repository folder."),
    keys: Path = typer.Option(..., "--keys", help="Folder of `edgecls keygen`."),
    version: Optional[int] = typer.Option(None, "--version", help="The release whose rollout to change."),
    rollout: Optional[float] = typer.Option(None, "--rollout", help="Its new percentage of devices."),
    refresh: bool = typer.Option(False, "--refresh", help="Only sign the repository again with a later expiry."),
    timestamp_days: float = typer.Option(7.0, "--timestamp-days", help="Days until devices refuse it as stale."),
):
    """Change a release's rollout (10 → 100%), or refresh the repository's signatures (a timer's job)."""
    from edgecls.fleet.publish import refresh as resign
    from edgecls.fleet.publish import set_rollout

    days = _days(timestamp_days)
    if refresh == (version is not None or rollout is not None):
        raise EdgeclsError("give either --refresh, or --version N with --rollout PCT")
    if refresh:
        typer.echo(f"{repo}: signed again, valid until {resign(repo, keys, days).isoformat()}")
        return
    if version is None or rollout is None:
        raise EdgeclsError("--version and --rollout go together")
    r = set_rollout(repo, keys, version, _percent(rollout, "--rollout"), days)
    typer.echo(f"{repo}: version {r.version} now goes to {r.rollout_percent:g}% of devices")


def update(
    url: str = typer.Argument(..., help="The repository's base URL (http(s)://…, or file:///… for a USB stick)."),
    device_dir: Path = typer.Option(..., "--device-dir", help="The device's folder: slots, state, trusted metadata."),
    root: Optional[Path] = typer.Option(None, "--root", help="First use only: the repository's 1.root.json, "
                                        "brought to the device (the trust anchor)."),
    json_out: bool = typer.Option(False, "--json", help="Print the outcome as one JSON line."),
):
    """Check an update repository once and exit (a systemd timer repeats it; `run --updates` polls by itself);
    install and promote a newer signed bundle that passes its checks here."""
    from edgecls.fleet.update import check_once

    out = check_once(url, device_dir, root)
    if json_out:
        print(json.dumps(out.to_dict()), flush=True)
    elif out.action == "refused":
        typer.echo(f"edgecls: update refused: {out.reason}", err=True)
    else:
        cur = out.state.get("current") or {}
        typer.echo(f"{out.action}: version {cur.get('version', 'none')} runs from {device_dir / 'current'}")
    if out.action == "refused":
        raise typer.Exit(1)


def status(
    device_dir: Path = typer.Argument(..., help="The device's folder (`edgecls update --device-dir`)."),
    json_out: bool = typer.Option(False, "--json", help="Print the state as JSON."),
):
    """The device's slots, versions, last check and last refusal."""
    from edgecls.fleet.slots import DeviceDir

    dev = DeviceDir(device_dir)
    if not dev.path.is_dir():
        raise EdgeclsError(f"{device_dir} is not a device folder")
    state = dev.state()
    if json_out:
        print(json.dumps(state, indent=2))
        return
    for name in ("current", "previous"):
        s = state.get(name)
        taught = f", taught on this device: {s['taught']['label']!r}" if s and s.get("taught") else ""
        typer.echo(f"{name:9} " + (f"version {s['version']} (bundle {s['bundle_id']}) in slot {s['slot']}{taught}"
                                   if s else "none"))
    typer.echo(f"last check {state.get('last_check', 'never')}: {state.get('last_result', '')}")
    if state.get("last_refusal"):
        r = state["last_refusal"]
        typer.echo(f"last refusal {r['at']}: version {r['version']}: {r['reason']}")


def register(app) -> None:
    for name, fn in (("keygen", keygen), ("publish", publish), ("release", release), ("update", update),
                     ("status", status)):
        app.command(name)(fn)
