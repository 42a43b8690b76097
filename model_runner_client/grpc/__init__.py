"""Protobuf messages of the wire contract, under the import path model-runner-client 0.14 used."""
