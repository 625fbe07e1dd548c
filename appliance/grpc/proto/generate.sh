#!/usr/bin/env bash
# Regenerates the Python modules of inference.proto (committed, so hosts need no protoc).
# The descriptors go to a pool of their own, not protobuf's default one: a client in the same
# process (tritonclient.grpc, KServe's) registers the same `inference.*` names there, and the
# default pool refuses a second definition of a name.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
    appliance/grpc/proto/inference.proto
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
    appliance/grpc/proto/inference_pb2.py
grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile(' appliance/grpc/proto/inference_pb2.py
