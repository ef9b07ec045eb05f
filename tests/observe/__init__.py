"""Tests of observability: traces (and, from other branches, metrics and logs)."""
