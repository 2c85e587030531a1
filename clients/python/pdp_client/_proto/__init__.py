"""Generated protobuf and gRPC stubs of proto/pdp/v1 (scripts/gen_proto.py; do not edit)."""
