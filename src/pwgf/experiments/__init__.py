"""Experiments and CLI subcommands, built on the public library API (never imported by it)."""
