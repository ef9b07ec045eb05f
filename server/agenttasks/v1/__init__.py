"""Generated from proto/agenttasks/v1 by scripts/gen_proto.py; do not edit."""
