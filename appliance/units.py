"""Byte units, so sizes read as what they are."""

MiB = 1 << 20
