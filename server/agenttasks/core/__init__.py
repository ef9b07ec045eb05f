"""The transport- and storage-neutral core: task lifecycle, validation, watch fan-out.

Nothing here imports grpc, sqlite3 or psycopg (an import-linter contract checks it): the gRPC
layer calls in, and storage is reached through the `ports.Store` protocol.
"""
