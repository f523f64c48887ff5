"""A Python gRPC client built from Python QTasks 1.7.3's own stubs (qtasks.v1) against the Rust
server: prints what it got as JSON.

usage: grpc_client.py <host:port>
"""
import json
import sys

import grpc

from qtasks.plugins.grpc.core import qtasks_pb2, qtasks_pb2_grpc

address = sys.argv[1]
out = {}
with grpc.insecure_channel(address) as channel:
    stub = qtasks_pb2_grpc.QTasksServiceStub(channel)
    added = stub.AddTask(
        qtasks_pb2.AddTaskRequest(
            name="interop_add", args_json="[2]", kwargs_json='{"b": 5}', timeout=10
        )
    )
    out["add"] = {"ok": added.ok, "uuid": added.uuid, "result_json": added.result_json}
    got = stub.GetTask(qtasks_pb2.GetTaskRequest(uuid=added.uuid, include_result=True))
    out["get"] = {"ok": got.ok, "status": got.status, "result_json": got.result_json}
    failed = stub.AddTask(qtasks_pb2.AddTaskRequest(name="interop_fail", timeout=10))
    out["fail"] = {"ok": failed.ok, "error": failed.error}
    try:
        stub.AddTask(qtasks_pb2.AddTaskRequest(name="interop_add", args_json="not json"))
        out["bad_json"] = "accepted"
    except grpc.RpcError as error:
        out["bad_json"] = error.code().name
print(json.dumps(out, ensure_ascii=False))
