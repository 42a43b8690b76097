"""protobuf messages of proto/*.proto (scripts/generate_proto.py writes them)."""
