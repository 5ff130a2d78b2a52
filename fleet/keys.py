"""The publisher's signing keys: one ed25519 key per TUF role, in a folder of the publisher's.

root.pem signs the repository's root of trust (who may sign what) and is needed only when a repository is made
or its keys change: keep it offline. targets.pem signs the releases, snapshot.pem and timestamp.pem the
repository's state and freshness (timestamp.pem is the one a timer uses every few days).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgecls.errors import EdgeclsError

ROLES = ("root", "targets", "snapshot", "timestamp")


def _paths(keydir: Path, role: str) -> tuple[Path, Path]:
    return keydir / f"{role}.pem", keydir / f"{role}.pub.json"


def keygen(keydir: Path) -> list[Path]:
    """Make one new ed25519 key pair per role in `keydir` (private keys mode 0600). Refuses to replace a key."""
    from securesystemslib.signer import CryptoSigner

    keydir.mkdir(parents=True, exist_ok=True)
    existing = [p for role in ROLES for p in _paths(keydir, role) if p.exists()]
    if existing:
        raise EdgeclsError(f"{existing[0]} exists: keygen never replaces a key (a new root key locks out every "
                           "device that trusts the old one)")
    written = []
    for role in ROLES:
        signer = CryptoSigner.generate_ed25519()
        private, public = _paths(keydir, role)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
        public.write_text(json.dumps(signer.public_key.to_dict() | {"keyid": signer.public_key.keyid}, indent=2))
        written += [private, public]
    return written


def public_key(keydir: Path, role: str):
    from securesystemslib.signer import SSlibKey

    _, public = _paths(keydir, role)
    try:
        data = json.loads(public.read_text())
        keyid = data.pop("keyid")
        return SSlibKey.from_dict(keyid, data)
    except FileNotFoundError:
        raise EdgeclsError(f"no {role} public key at {public} (make keys with `edgecls keygen {keydir}`)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise EdgeclsError(f"{public} is not a public key written by `edgecls keygen`: {e}") from None


def signer(keydir: Path, role: str):
    """The signer for `role` from `keydir`; one line naming the file when it is missing or does not match."""
    from securesystemslib.signer import CryptoSigner

    private, _ = _paths(keydir, role)
    if not private.is_file():
        raise EdgeclsError(f"no {role} key at {private}: this step needs it"
                           + (" (the root key is kept offline: bring it for this step)" if role == "root" else ""))
    try:
        return CryptoSigner.from_priv_key_uri(f"file2:{private}", public_key(keydir, role))
    except EdgeclsError:
        raise
    except Exception as e:   # KeyMismatchError, bad PEM: securesystemslib raises several kinds
        raise EdgeclsError(f"{private} cannot sign as {role}: {type(e).__name__}: {e}") from None
