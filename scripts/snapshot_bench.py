"""How long `zeroblk volume snapshot create` and `volume clone` take on a
2 TiB volume holding 1 GiB of data, in an S3 bucket (moto), each command
timed whole, as a user runs it (process start, password-free open of the
superblock, the gc lease, the pin). The target: under a second each.

The volume (1 MiB chunks, zstd) gets 1 GiB of random bytes at its start
through `zeroblk serve` and nbdcopy; then five snapshots and five clones
(of the newest state and of a snapshot) are timed, and the medians
reported. Snapshots of an attached volume also commit through its daemon
first: that costs what a commit costs, and is not timed here.

  /usr/bin/python3 scripts/snapshot_bench.py [--data 1G] [--size 2T] [--out docs/benchmarks/snapshots.json]

Needs moto_server and nbdcopy (scripts/compare.sh installs them), and a
release build (cargo build --release).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (its S3 server, ports and binary path)

MIB = 1 << 20
ROUNDS = 5


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="1G")
    parser.add_argument("--size", default="2T")
    parser.add_argument("--out", default=str(compare.ROOT / "docs/benchmarks/snapshots.json"))
    args = parser.parse_args()
    data = compare.parse_size(args.data)
    moto = compare.Moto()
    with tempfile.TemporaryDirectory(prefix="zeroblk-snapshots.", dir="/var/tmp") as work:
        work = Path(work)
        env = dict(os.environ, **compare.ENV_S3, AWS_ENDPOINT_URL=moto.endpoint,
                   ZEROBLK_STORE=f"s3://{moto.bucket()}/vols", ZEROBLK_CACHE_DIR=str(work / "cache"))
        for name in ("ZEROBLK_CONFIG", "ZEROBLK_PASSWORD"):
            env.pop(name, None)

        def zeroblk(*command):
            return subprocess.run([compare.ZEROBLK, *command], env=env, check=True,
                                  stdout=subprocess.PIPE, text=True).stdout

        def timed(*command):
            started = time.monotonic()
            out = zeroblk(*command)
            return time.monotonic() - started, out.strip()

        try:
            zeroblk("volume", "create", "vol", "--size", args.size)
            compare.log(f"writing {args.data} of random bytes into a {args.size} volume")
            image = work / "image"
            with open(image, "wb") as f:
                for _ in range(data // MIB):
                    f.write(os.urandom(MIB))
            port = compare.free_port()
            server = subprocess.Popen([compare.ZEROBLK, "serve", "--listen", f"127.0.0.1:{port}", "vol"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
            compare.wait_for_port(port, server)
            subprocess.run(["nbdcopy", str(image), f"nbd://127.0.0.1:{port}/vol"], check=True)
            server.terminate()
            if server.wait(timeout=600) != 0:
                raise RuntimeError("zeroblk serve exited non-zero")
            image.unlink()
            info = json.loads(zeroblk("volume", "info", "vol", "--json"))
            compare.log(f"allocated {info['allocated_bytes']} bytes, stored {info['stored_bytes']}")
            snapshots = [timed("volume", "snapshot", "create", "vol", "--name", f"s{n}") for n in range(ROUNDS)]
            clones = [timed("volume", "clone", "vol", f"c{n}") for n in range(ROUNDS)]
            from_snapshot = [timed("volume", "clone", "vol@s0", f"d{n}") for n in range(ROUNDS)]
            listed = timed("volume", "snapshot", "list", "vol", "--json")
            verified = zeroblk("volume", "verify", "d0")
        finally:
            moto.stop()
    rows = {"snapshot create": [s for s, _ in snapshots], "clone (newest)": [s for s, _ in clones],
            "clone (of a snapshot)": [s for s, _ in from_snapshot], "snapshot list (with usage)": [listed[0]]}
    results = {"command": " ".join(["/usr/bin/python3 scripts/snapshot_bench.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": args.size, "data": args.data,
               "store": "moto (S3) on loopback", "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
               "allocated_bytes": info["allocated_bytes"], "verify_of_a_clone": verified.strip(),
               "seconds": {k: [round(s, 3) for s in v] for k, v in rows.items()}}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("| command | median | slowest | runs |")
    print("| --- | --- | --- | --- |")
    for name, seconds in rows.items():
        print(f"| {name} | {statistics.median(seconds):.3f} s | {max(seconds):.3f} s | {len(seconds)} |")


if __name__ == "__main__":
    main()
