"""edgecls: photos → int8 image classifier on a Raspberry Pi or Jetson, with the numbers to trust it.

Importing this package (and running `edgecls --help`) never imports TensorFlow.
The stages live in top-level folders of the source tree and install as subpackages:
`train/` → `edgecls.train`, `convert/` → `edgecls.convert`, `device/` → `edgecls.device`.
"""
__version__ = "0.1.0"
