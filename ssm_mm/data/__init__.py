"""Data: the manifest (SPEC §4), dataset converters, featurizing, tokenizing, interleaving into
timed tokens and loading. Generated data (the built-in worlds, §5) lives in :mod:`ssm_mm.worlds`.

Modules (import them directly; this package import stays light, with no media or torch imports):

* ``manifest``   read / validate / write JSONL manifests (``read_manifest``, ``StreamSpec``, ...)
* ``convert``    AVE and MUSIC-AVQA annotations -> manifests
* ``featurize``, ``tokenizer``, ``interleave``, ``dataset``: features, text tokens, timed-token
  sequences and batches
"""

from ssm_mm.data.manifest import (
    Manifest,
    ManifestError,
    Segment,
    StreamSpec,
    Turn,
    read_manifest,
    write_manifest,
)

__all__ = ["Manifest", "ManifestError", "Segment", "StreamSpec", "Turn", "read_manifest", "write_manifest"]
