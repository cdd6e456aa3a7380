#!/usr/bin/python3
"""How soon a read-only follower reads what the writer wrote.

Two `zeroblk serve` processes share one volume on a store: the writer
(`serve data`) and a follower (`serve --read-only --follow data`). Each
round waits a random moment (so rounds fall anywhere in the writer's
commit timer and the follower's poll), writes one 4 KiB block with a new
tag to the writer, flushes, and reads the block from the follower every
10 ms until it holds the tag. Two measures:

- write to follower: the writer flushes to its local log
  (`--durability local`, the default) and commits within its commit
  interval; the time from the flush to the follower's read is what a
  user sees: the target is one commit interval plus one second;
- commit to follower: the writer flushes with `--durability remote`, so
  the flush returns once the commit landed in the store; the time from
  there is the follower's own delay (its poll, and reading the new root).

    scripts/follow_latency.py [--rounds 20] [--store moto|file]
        [--commit-interval 2s] [--follow-interval 1s] [--json FILE]

Needs a release build (target/release/zeroblk), python3-libnbd and, for
moto, moto_server. Prints a Markdown table.
"""
import argparse
import http.client
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nbd

ROOT = Path(__file__).resolve().parent.parent
ZEROBLK = os.environ.get("ZEROBLK", str(ROOT / "target/release/zeroblk"))
ACCESS_KEY, SECRET_KEY = "zeroblk-bench", "zeroblk-bench-secret"
BLOCK = 4096


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                sys.exit(f"a process exited before listening on {port}")
            time.sleep(0.1)
    sys.exit(f"nothing listened on {port}")


class Store:
    """The store both processes use: a bucket on a fresh moto, or a dir."""

    def __init__(self, kind, work):
        self.moto = None
        self.env = dict(os.environ)
        if kind == "file":
            self.url = f"file://{work}/store"
            return
        port = free_port()
        self.moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, self.moto)
        bucket = f"follow-{uuid.uuid4().hex[:12]}"
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("PUT", f"/{bucket}")
        assert conn.getresponse().status == 200
        self.url = f"s3://{bucket}/zeroblk"
        self.env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID=ACCESS_KEY,
                        AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")

    def stop(self):
        if self.moto:
            self.moto.terminate()
            self.moto.wait()


class Serve:
    """One `zeroblk serve` process, stopped with SIGTERM."""

    def __init__(self, store, cache, args, log):
        self.port = free_port()
        self.process = subprocess.Popen(
            [ZEROBLK, "--store", store.url, "--cache-dir", str(cache), "serve",
             "--listen", f"127.0.0.1:{self.port}", *args],
            env=store.env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
        wait_for_port(self.port, self.process)
        self.handle = nbd.NBD()
        self.handle.connect_uri(f"nbd://127.0.0.1:{self.port}/data")

    def stop(self):
        self.handle.shutdown()
        self.process.terminate()
        if self.process.wait() != 0:
            sys.exit("zeroblk serve exited non-zero")


def block(tag):
    return struct.pack("<Q", tag) * (BLOCK // 8)


def rounds(writer, follower, count, first_tag, longest_pause):
    """Seconds from each flush to the follower's read of it."""
    seen = []
    for tag in range(first_tag, first_tag + count):
        time.sleep(random.uniform(0, longest_pause))
        writer.pwrite(block(tag), 0)
        writer.flush()
        flushed = time.monotonic()
        while follower.pread(BLOCK, 0) != block(tag):
            if time.monotonic() - flushed > 60:
                sys.exit(f"the follower did not read tag {tag} within 60 s")
            time.sleep(0.01)
        seen.append(time.monotonic() - flushed)
        print(f"  {seen[-1]:.3f} s", file=sys.stderr, flush=True)
    return seen


def summary(seconds):
    ordered = sorted(seconds)
    return {"rounds": len(ordered), "median_s": round(statistics.median(ordered), 3),
            "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3), "max_s": round(ordered[-1], 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--store", choices=["moto", "file"], default="moto")
    parser.add_argument("--commit-interval", default="2s")
    parser.add_argument("--follow-interval", default="1s")
    parser.add_argument("--json")
    args = parser.parse_args()
    interval = float(args.commit_interval.rstrip("s"))
    work = Path(tempfile.mkdtemp(prefix="zeroblk-follow-"))
    store = Store(args.store, work)
    cache, log = work / "cache", work / "serve.log"
    subprocess.run([ZEROBLK, "--store", store.url, "--cache-dir", str(cache), "volume", "create", "data",
                    "--size", "1G"], env=store.env, check=True, stdout=subprocess.DEVNULL)
    results = {"store": args.store, "commit_interval": args.commit_interval,
               "follow_interval": args.follow_interval}
    follower = Serve(store, cache, ["--read-only", "--follow", "--follow-interval", args.follow_interval,
                                    "data"], log)
    for measure, durability, first_tag in [("write to follower", "local", 1),
                                           ("commit to follower", "remote", 100_000)]:
        print(f"{measure} (--durability {durability}):", file=sys.stderr)
        writer = Serve(store, cache, ["--commit-interval", args.commit_interval, "--durability", durability,
                                      "data"], log)
        seconds = rounds(writer.handle, follower.handle, args.rounds, first_tag, interval + 1)
        writer.stop()
        results[measure] = summary(seconds)
    follower.stop()
    store.stop()
    target = interval + float(args.follow_interval.rstrip("s"))
    results["target_s"] = target
    print(f"{args.store}, commit interval {args.commit_interval}, follow interval {args.follow_interval}, "
          f"{args.rounds} rounds each\n")
    print("| measure | median | p90 | max | target |\n|---|---:|---:|---:|---|")
    for measure in ["write to follower", "commit to follower"]:
        r = results[measure]
        goal = f"<= {target:g} s" if measure == "write to follower" else "-"
        print(f"| {measure} | {r['median_s']:.2f} s | {r['p90_s']:.2f} s | {r['max_s']:.2f} s | {goal} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
