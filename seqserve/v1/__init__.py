"""Generated protobuf and gRPC stubs for `protos/seqserve/v1/` (built by setup.py, never edited)."""
