"""The neutral base both packages build on (q35local's runtime and the quantize converter): errors,
reading files, checked numbers and options, byte units, settings and per-user folders, the
thread→iterator bridge, and the version. It imports nothing from either package."""

VERSION = "0.1.0"
