"""Observability: traces, metrics and logs, each optional and each in a module of its own, so
that a server which turns none of them on pays nothing for them."""
