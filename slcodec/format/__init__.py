"""The format layer: the .vqsl container (preamble, header, sections, chunked streams, filters),
its schema and reject rules, shard sets and manifests, atomic output and bit accounting.

It knows bytes and sections, never tensors: it imports numpy, msgpack and zstandard only, never
torch and never the codecs (an architecture test checks this)."""
