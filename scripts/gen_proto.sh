#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from src/fedloom/transport/fedloom.proto.
set -euo pipefail
cd "$(dirname "$0")/../src"
uv run python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
    fedloom/transport/fedloom.proto
