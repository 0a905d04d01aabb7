"""Deployment transport: federated rounds over gRPC with mutual TLS."""
