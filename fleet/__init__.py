"""edgecls.fleet — signed bundle updates for many devices, with no TensorFlow.

The publisher's side (`edgecls keygen`, `edgecls publish`, `edgecls release`) keeps a static update repository
of plain files signed with The Update Framework (python-tuf): any web server, bucket or USB stick can hold it.
The device's side (`edgecls update`, `edgecls status`) fetches it through TUF's client, which refuses bad
signatures, rollbacks, frozen (expired) and mixed metadata, then installs a bundle into the second of two slots
and promotes it only after its own checks. docs/fleet.md is the user's guide.
"""
