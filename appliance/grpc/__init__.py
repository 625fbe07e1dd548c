"""The Open Inference Protocol over gRPC: a front door beside `appliance.rest`, on the same data
plane, served by grpc.aio in the event loop that serves HTTP."""

from appliance.grpc.server import GrpcBindFailed, GrpcServer
from appliance.grpc.service import GrpcContext

__all__ = ["GrpcBindFailed", "GrpcContext", "GrpcServer"]
