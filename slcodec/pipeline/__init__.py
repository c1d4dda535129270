"""The pipeline between the format and the codecs: reading inputs, choosing the device, the
streaming writer (the one encode path used by the API, the CLI and the distributed encoder) and
the reader that decodes by random access."""
