#!/usr/bin/env python3
"""Greeter gRPC client: makes unary calls and one server stream, prints one JSON line per
result, and exits non-zero on any RPC error.

Lines: {"rpc": "SayHello" | "StreamGreetings", "index", "message", "server"} per reply,
{"rpc": ..., "error": CODE, "details": ...} on failure, {"rpc": "done", ...} at the end.
"""

import argparse
import json
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
protos, services = grpc.protos_and_services("greeter.proto")

# Bounds on what one run may ask for.
MAX_UNARY = 1_000
MAX_STREAM = 10_000


def emit(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def reply_line(rpc, reply):
    emit(rpc=rpc, index=reply.index, message=reply.message, server=reply.server)


def run(stub, args):
    for _ in range(min(args.unary, MAX_UNARY)):
        reply = stub.SayHello(protos.HelloRequest(name=args.name), timeout=args.timeout)
        reply_line("SayHello", reply)
    count = min(args.stream, MAX_STREAM)
    if count > 0:
        request = protos.StreamRequest(name=args.name, count=count, interval_ms=args.interval_ms)
        received = 0
        for reply in stub.StreamGreetings(request, timeout=args.timeout):
            reply_line("StreamGreetings", reply)
            received += 1
        if received != count:
            emit(rpc="StreamGreetings", error="INCOMPLETE", details=f"{received}/{count}")
            return 1
    emit(rpc="done", unary=min(args.unary, MAX_UNARY), stream=count)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="server address, HOST:PORT")
    parser.add_argument("--name", default="edgeward", help="name sent in every request")
    parser.add_argument("--unary", type=int, default=1, help="number of SayHello calls")
    parser.add_argument("--stream", type=int, default=3, help="replies asked of the stream")
    parser.add_argument("--interval-ms", type=int, default=0, help="gap between replies")
    parser.add_argument("--timeout", type=float, default=20.0, help="deadline per call (s)")
    args = parser.parse_args()

    # The lab's traffic must go straight to the target, never to an HTTP proxy from the env.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = services.GreeterStub(channel)
        try:
            return run(stub, args)
        except grpc.RpcError as error:
            emit(rpc="error", error=error.code().name, details=error.details())
            return 1


if __name__ == "__main__":
    sys.exit(main())
