"""The ids of the rules by which a reader MUST reject a file (FORMAT.md, "What a reader MUST
reject"), in one place.

Every :class:`~slcodec.errors.FormatError` carries one of them as ``.rule``; ``slcodec verify``
and the tests key on them, so the format layer and the reader name them by these constants,
never by a string typed again (tests/test_reject_rules.py checks FORMAT.md's table against
:data:`MUST_REJECT`, both ways, and that no layer spells an unknown id).
"""

# the preamble
TRUNCATED = "truncated"
MAGIC = "magic"
PREAMBLE_CRC = "preamble-crc"
VERSION = "version"
REQUIRED_FLAGS = "required-flags"
PREAMBLE_RESERVED = "preamble-reserved"
# the header
HEADER_BOUNDS = "header-bounds"
HEADER_CRC = "header-crc"
HEADER_SYNTAX = "header-syntax"
HEADER_SCHEMA = "header-schema"
# sections
SECTION_LAYOUT = "section-layout"
SECTION_CONTENT = "section-content"
SECTION_CRC = "section-crc"
# what the sections mean
LABELS = "labels"
CODEC = "codec"
CODEC_PARAMS = "codec-params"
CODEC_STREAMS = "codec-streams"
# sharded sets (format 1.1)
MANIFEST = "manifest"
EXTERNAL_PARAMS = "external-params"
SHARD_MISSING = "shard-missing"
SHARD_MISMATCH = "shard-mismatch"

#: every rule of FORMAT.md's MUST-reject table, in its order
MUST_REJECT = (TRUNCATED, MAGIC, PREAMBLE_CRC, VERSION, REQUIRED_FLAGS, PREAMBLE_RESERVED, HEADER_BOUNDS, HEADER_CRC,
               HEADER_SYNTAX, HEADER_SCHEMA, SECTION_LAYOUT, SECTION_CONTENT, SECTION_CRC, LABELS, CODEC,
               CODEC_PARAMS, CODEC_STREAMS, MANIFEST, EXTERNAL_PARAMS, SHARD_MISSING, SHARD_MISMATCH)

# Not rules of the format - no file is rejected by them - but ids a FormatError can carry:
#: a section a caller asked for is not in the file (the codec's checks name what a file lacks first)
MISSING_SECTION = "missing-section"
#: a file slcodec has just written failed its own verification (a bug in slcodec, not a bad input)
SELF_CHECK = "self-check"
#: FormatError's default, for a caller that names no rule
UNSPECIFIED = "format"

#: every id a FormatError may carry
ALL = MUST_REJECT + (MISSING_SECTION, SELF_CHECK, UNSPECIFIED)
