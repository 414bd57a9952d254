#!/usr/bin/env python3
"""Greeter gRPC client: the real gRPC caller of the edgeward end-to-end tests and benchmark.

Modes (--mode):
  basic       unary calls, then one server stream (the default, as the first tests use it);
              one JSON line per reply, exit status 1 on any RPC error.
  stream      one long server stream (--duration, --interval-ms); checks that every sequence
              number arrives once and in order and reports the gaps.
  load        --calls unary calls at a fixed --rate, each timed, every failure with its status.
  idle        a unary call, --idle-s seconds of silence, another call on the same channel.
  throughput  a server stream of --payload-bytes messages as fast as they come, for --duration.

Every mode but basic writes JSON lines with an "event" field, to --out (or stdout), flushed
line by line so a test can follow a run while it lasts. Times ("t", "start") are
time.monotonic() seconds, which on Linux is CLOCK_MONOTONIC, the clock the Rust lab reads: the
lab lines them up with the moments it impaired the link. An error carries how long it took to
appear: "latency_ms" for a unary call, "elapsed_s" (since the call began) and "silent_s" (since
the last message) for a stream.
"""

import argparse
import json
import os
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
protos, services = grpc.protos_and_services("greeter.proto")

# Bounds on what one run may ask for, so no typo makes a run endless.
MAX_UNARY = 10_000
MAX_STREAM = 10_000
MAX_SECONDS = 600.0
MAX_RATE = 1_000.0

# Extra time a stream's deadline grants beyond its nominal length, for stalls to recover from.
STREAM_DEADLINE_SLACK_S = 30.0


class Output:
    """JSON lines to a file or stdout, one whole line per write, safe across threads."""

    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8") if path else sys.stdout
        self.lock = threading.Lock()

    def emit(self, **fields):
        line = json.dumps(fields, sort_keys=True) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()


def status_of(error):
    """The gRPC status name and details of an RpcError (or of anything else raised)."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code().name, error.details() or ""
    return "CLIENT_ERROR", repr(error)


def run_basic(stub, args, out):
    def reply_line(rpc, reply):
        out.emit(rpc=rpc, index=reply.index, message=reply.message, server=reply.server)

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
            out.emit(rpc="StreamGreetings", error="INCOMPLETE", details=f"{received}/{count}")
            return 1
    out.emit(rpc="done", unary=min(args.unary, MAX_UNARY), stream=count)
    return 0


class Sequence:
    """What arrived of a stream numbered 0..expected-1: duplicates, reorderings, gaps."""

    def __init__(self, expected):
        self.expected = expected
        self.seen = set()
        self.highest = -1
        self.duplicates = 0
        self.out_of_order = 0

    def add(self, index):
        if index in self.seen:
            self.duplicates += 1
            return
        if index < self.highest:
            self.out_of_order += 1
        self.seen.add(index)
        self.highest = max(self.highest, index)

    def missing(self):
        """Missing sequence numbers as [first, last] ranges."""
        ranges, start = [], None
        for index in range(self.expected):
            if index in self.seen:
                if start is not None:
                    ranges.append([start, index - 1])
                    start = None
            elif start is None:
                start = index
        if start is not None:
            ranges.append([start, self.expected - 1])
        return ranges


def run_stream(stub, args, out):
    interval_ms = max(1, args.interval_ms)
    count = min(int(args.duration * 1000 / interval_ms), MAX_STREAM)
    deadline = args.timeout or args.duration + STREAM_DEADLINE_SLACK_S
    request = protos.StreamRequest(name=args.name, count=count, interval_ms=interval_ms)
    sequence = Sequence(count)
    status, details = "OK", ""
    started = last = time.monotonic()
    try:
        for reply in stub.StreamGreetings(request, timeout=deadline):
            last = time.monotonic()
            sequence.add(reply.index)
            out.emit(event="message", seq=reply.index, t=last)
    except Exception as error:  # every failure must reach the report, whatever raised it
        status, details = status_of(error)
    ended = time.monotonic()
    out.emit(
        event="stream_end",
        expected=count,
        received=len(sequence.seen),
        missing=sequence.missing(),
        duplicates=sequence.duplicates,
        out_of_order=sequence.out_of_order,
        status=status,
        details=details,
        started=started,
        t=ended,
        elapsed_s=ended - started,
        silent_s=ended - last,
    )
    clean = not (sequence.missing() or sequence.duplicates or sequence.out_of_order)
    return 0 if status == "OK" and clean else 1


class Calls:
    """Unary calls in flight, each reported when it ends."""

    def __init__(self, out, name):
        self.out = out
        self.name = name
        self.lock = threading.Lock()
        self.failed = 0
        self.finished = threading.Condition(self.lock)
        self.pending = 0

    def start(self, stub, index, deadline):
        begun = time.monotonic()
        future = stub.SayHello.future(protos.HelloRequest(name=self.name), timeout=deadline)
        with self.lock:
            self.pending += 1
        future.add_done_callback(lambda f: self.done(f, index, begun))

    def done(self, future, index, begun):
        ended = time.monotonic()
        error = future.exception()
        status, details = ("OK", "") if error is None else status_of(error)
        # A reply that does not echo the name is as wrong as no reply.
        if status == "OK" and self.name not in future.result().message:
            status, details = "BAD_REPLY", future.result().message
        self.out.emit(
            event="call",
            i=index,
            start=begun,
            t=ended,
            latency_ms=(ended - begun) * 1000.0,
            status=status,
            details=details,
        )
        with self.lock:
            self.failed += status != "OK"
            self.pending -= 1
            self.finished.notify_all()

    def wait(self, timeout):
        """Waits until no call is in flight; gives how many are still in flight."""
        end = time.monotonic() + timeout
        with self.lock:
            while self.pending and time.monotonic() < end:
                self.finished.wait(max(0.0, end - time.monotonic()))
            return self.pending


def run_load(stub, args, out):
    calls = max(0, min(args.calls, MAX_UNARY))
    rate = max(0.1, min(args.rate, MAX_RATE))
    deadline = args.timeout or 10.0
    tracker = Calls(out, args.name)
    # Open loop: call i starts at start + i/rate whether or not earlier calls have ended, so
    # a stalled call does not hide the calls that would have queued up behind it.
    start = time.monotonic()
    for index in range(calls):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        tracker.start(stub, index, deadline)
    stuck = tracker.wait(deadline + 5.0)
    out.emit(
        event="load_end", calls=calls, failed=tracker.failed, stuck=stuck, t=time.monotonic()
    )
    return 0 if tracker.failed == 0 and stuck == 0 else 1


def run_idle(stub, args, out):
    deadline = args.timeout or 10.0
    tracker = Calls(out, args.name)
    for index in range(2):
        if index:
            time.sleep(min(args.idle_s, MAX_SECONDS))
        tracker.start(stub, index, deadline)
        tracker.wait(deadline + 5.0)
    out.emit(event="idle_end", failed=tracker.failed, t=time.monotonic())
    return 0 if tracker.failed == 0 else 1


def run_throughput(stub, args, out):
    duration = min(args.duration, MAX_SECONDS)
    request = protos.StreamRequest(
        name=args.name, count=MAX_STREAM, interval_ms=0, payload_bytes=args.payload_bytes
    )
    messages = received_bytes = 0
    status, details = "OK", ""
    started = time.monotonic()
    call = stub.StreamGreetings(request, timeout=args.timeout or duration + STREAM_DEADLINE_SLACK_S)
    try:
        for reply in call:
            messages += 1
            received_bytes += len(reply.payload)
            if time.monotonic() - started >= duration:
                break
    except Exception as error:  # every failure must reach the report, whatever raised it
        status, details = status_of(error)
    elapsed = time.monotonic() - started
    call.cancel()
    out.emit(
        event="throughput",
        messages=messages,
        bytes=received_bytes,
        elapsed_s=elapsed,
        status=status,
        details=details,
        t=time.monotonic(),
    )
    return 0 if status == "OK" else 1


MODES = {
    "stream": run_stream,
    "load": run_load,
    "idle": run_idle,
    "throughput": run_throughput,
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="server address, HOST:PORT")
    parser.add_argument("--mode", default="basic", choices=["basic", *MODES])
    parser.add_argument("--name", default="edgeward", help="name sent in every request")
    parser.add_argument("--out", help="file to append the JSON lines to (default stdout)")
    parser.add_argument("--timeout", type=float, help="deadline per call, seconds (per mode)")
    basic = parser.add_argument_group("basic")
    basic.add_argument("--unary", type=int, default=1, help="number of SayHello calls")
    basic.add_argument("--stream", type=int, default=3, help="replies asked of the stream")
    parser.add_argument("--interval-ms", type=int, default=0, help="gap between stream replies")
    parser.add_argument("--duration", type=float, default=30.0, help="stream length, seconds")
    parser.add_argument("--calls", type=int, default=200, help="load: number of calls")
    parser.add_argument("--rate", type=float, default=20.0, help="load: calls per second")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle: silence, seconds")
    parser.add_argument("--payload-bytes", type=int, default=65536, help="throughput: size")
    args = parser.parse_args()
    if args.mode == "basic" and args.timeout is None:
        args.timeout = 20.0
    return args


def main():
    args = parse_args()
    out = Output(args.out)
    # The lab's traffic must go straight to the target, never to an HTTP proxy from the env.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = services.GreeterStub(channel)
        if args.mode == "basic":
            try:
                return run_basic(stub, args, out)
            except grpc.RpcError as error:
                out.emit(rpc="error", error=error.code().name, details=error.details())
                return 1
        out.emit(event="start", mode=args.mode, t=time.monotonic())
        code = MODES[args.mode](stub, args, out)
        out.emit(event="done", ok=code == 0, t=time.monotonic())
        return code


if __name__ == "__main__":
    sys.exit(main())
