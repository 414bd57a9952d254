#!/usr/bin/env python3
"""Greeter gRPC server: the real gRPC peer behind the mesh in the edgeward end-to-end tests.

greeter.proto is loaded at run time (grpc.protos_and_services, from grpcio-tools), so no
generated code is kept in the repository. Prints "greeter listening on ADDR:PORT" once it
accepts connections, and one line per call it serves.
"""

import argparse
import os
import sys
import time
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
protos, services = grpc.protos_and_services("greeter.proto")

# Streams are bounded in count, time and size whatever a client asks for.
MAX_STREAM_REPLIES = 10_000
MAX_INTERVAL_MS = 10_000
MAX_PAYLOAD_BYTES = 1 << 20


class Greeter(services.GreeterServicer):
    """Answers with the caller's name, so a payload marker travels in both directions."""

    def __init__(self, name):
        self.name = name

    def SayHello(self, request, context):
        print(f"served SayHello for {context.peer()}", flush=True)
        return protos.HelloReply(message=f"Hello, {request.name}!", index=0, server=self.name)

    def StreamGreetings(self, request, context):
        count = max(0, min(request.count, MAX_STREAM_REPLIES))
        interval = max(0, min(request.interval_ms, MAX_INTERVAL_MS)) / 1000.0
        # Random, so that no compression on the way could make the filler cheap to carry.
        payload = os.urandom(max(0, min(request.payload_bytes, MAX_PAYLOAD_BYTES)))
        print(f"serving StreamGreetings x{count} for {context.peer()}", flush=True)
        # Paced against a start time rather than by a fixed sleep, so that a long stream
        # keeps its rate (one reply every interval) however long each send takes.
        start = time.monotonic()
        for index in range(count):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not context.is_active():
                return
            message = f"Hello, {request.name}! (#{index})"
            yield protos.HelloReply(
                message=message, index=index, server=self.name, payload=payload
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=50051, help="port to listen on")
    parser.add_argument("--name", default="greeter", help="server name put in every reply")
    args = parser.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    services.add_GreeterServicer_to_server(Greeter(args.name), server)
    address = f"{args.bind}:{args.port}"
    if server.add_insecure_port(address) == 0:
        sys.exit(f"greeter: cannot listen on {address}")
    server.start()
    print(f"greeter listening on {address}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
