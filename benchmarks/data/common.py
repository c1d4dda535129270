"""Helpers shared by the data scripts of this folder."""
import hashlib


def sha256_file(path) -> str:
    """sha256 of a file, read in 1 MiB pieces (recorded in each data set's provenance JSON)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
