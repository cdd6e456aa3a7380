"""What `zeroblk volume copy` uploads, counted by the comparison's S3 proxy.

A 1 GiB volume (1 MiB chunks, stored uncompressed so that a changed
chunk's stored size is known: 1 MiB and its 16-byte header) in a local
directory is filled with random bytes and copied to moto through the
counting proxy (tests/faults/s3_proxy.py, as scripts/compare.py uses it).
Then 1% of it changes, twice, and is copied again each time:

  aligned    10 chunks rewritten whole, at random places
  scattered  160 writes of 64 KiB at random places (10 MiB; about 150
             chunks touched, each a changed chunk)

For each copy: the bytes and requests the proxy saw uploaded (PUT bodies),
the changed chunks' stored bytes, and their ratio (the target: at most
1.1). The destination is verified at the end (`zeroblk volume verify`).

  /usr/bin/python3 scripts/copy_bench.py [--size 1G] [--out docs/benchmarks/copy.json]

Needs moto_server, nbdcopy and qemu-io (scripts/compare.sh installs them),
and a release build (cargo build --release).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (its S3 server, ports and binary path)

MIB = 1 << 20
STORED_CHUNK = MIB + 16


class Bench:
    def __init__(self, work, size):
        self.work = Path(work)
        self.size = size
        self.moto = compare.Moto()
        self.stats = self.work / "requests"
        control = self.work / "faults"
        control.write_text("ok")
        self.proxy_port = compare.free_port()
        self.proxy = subprocess.Popen(
            ["/usr/bin/python3", str(compare.ROOT / "tests/faults/s3_proxy.py"), str(self.proxy_port),
             self.moto.endpoint, str(control), "1", str(self.stats)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        compare.wait_for_port(self.proxy_port, self.proxy)
        self.backup = f"s3://{self.moto.bucket()}/backup"
        self.env = dict(os.environ, **compare.ENV_S3, AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.proxy_port}",
                        ZEROBLK_STORE=f"file://{self.work}/source", ZEROBLK_CACHE_DIR=str(self.work / "cache"))
        for name in ("ZEROBLK_CONFIG", "ZEROBLK_PASSWORD"):
            self.env.pop(name, None)

    def zeroblk(self, *args, store=None):
        prefix = ["--store", store] if store else []
        done = subprocess.run([compare.ZEROBLK, *prefix, *args], env=self.env, check=True,
                              stdout=subprocess.PIPE, text=True)
        return done.stdout

    def serve(self):
        port = compare.free_port()
        log = open(self.work / "serve.log", "a")
        process = subprocess.Popen([compare.ZEROBLK, "serve", "--listen", f"127.0.0.1:{port}", "vol"],
                                   env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        compare.wait_for_port(port, process)
        return process, f"nbd://127.0.0.1:{port}/vol"

    @staticmethod
    def stop(process):
        process.terminate()
        if process.wait(timeout=600) != 0:
            raise RuntimeError("zeroblk serve exited non-zero; see serve.log")

    def fill(self):
        image = self.work / "image"
        with open(image, "wb") as f:
            for _ in range(self.size // MIB):
                f.write(os.urandom(MIB))
        process, uri = self.serve()
        subprocess.run(["nbdcopy", str(image), uri], check=True)
        self.stop(process)
        image.unlink()

    def change(self, writes):
        """Writes (offset, length) pieces, each a distinct byte pattern;
        returns the chunks they touched."""
        process, uri = self.serve()
        commands = []
        for n, (offset, length) in enumerate(writes):
            commands += ["-c", f"write -P {n % 250 + 1} {offset} {length}"]
        for start in range(0, len(commands), 200):
            subprocess.run(["qemu-io", "-f", "raw", *commands[start:start + 200], uri], check=True,
                           stdout=subprocess.DEVNULL)
        self.stop(process)
        return {offset // MIB for offset, _ in writes} | {(o + n - 1) // MIB for o, n in writes}

    def copy(self, label, changed_chunks):
        self.stats.write_text("")
        started = time.monotonic()
        report = json.loads(self.zeroblk("volume", "copy", "vol", "--to", self.backup, "--json"))
        seconds = time.monotonic() - started
        lines = [line.split() for line in self.stats.read_text().splitlines()]
        puts = [line for line in lines if line[0] == "PUT"]
        uploaded = sum(int(line[1]) for line in puts)
        changed = len(changed_chunks) * STORED_CHUNK if changed_chunks is not None else None
        row = {"copy": label, "seconds": round(seconds, 2), "bytes_uploaded": uploaded, "put_requests": len(puts),
               "requests": len(lines), "changed_chunks": len(changed_chunks) if changed_chunks is not None else None,
               "changed_chunk_bytes": changed, "uploaded_per_changed": round(uploaded / changed, 4) if changed else None,
               "report": report}
        compare.log(f"{label}: {uploaded} bytes in {len(puts)} PUTs ({len(lines)} requests), "
                    f"{seconds:.1f} s" + (f"; changed chunks {changed} bytes, ratio {uploaded / changed:.4f}"
                                          if changed else ""))
        return row

    def close(self):
        self.proxy.terminate()
        self.proxy.wait()
        self.moto.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--out", default=str(compare.ROOT / "docs/benchmarks/copy.json"))
    parser.add_argument("--seed", type=int, default=25)
    args = parser.parse_args()
    size = compare.parse_size(args.size)
    chunks = size // MIB
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="zeroblk-copy.", dir="/var/tmp") as work:
        bench = Bench(work, size)
        try:
            bench.zeroblk("volume", "create", "vol", "--size", args.size, "--chunk-size", "1M", "--compression", "none")
            compare.log(f"filling a {args.size} volume with random bytes")
            bench.fill()
            rows = [bench.copy("first", None)]
            one_percent = size // 100
            aligned = [(chunk * MIB, MIB) for chunk in rng.sample(range(chunks), one_percent // MIB)]
            rows.append(bench.copy("after 1% changed: whole chunks", bench.change(aligned)))
            piece = 64 << 10
            scattered = [(slot * piece, piece) for slot in rng.sample(range(size // piece), one_percent // piece)]
            rows.append(bench.copy("after 1% changed: 64 KiB writes", bench.change(scattered)))
            rows.append(bench.copy("nothing changed", set()))
            verified = bench.zeroblk("volume", "verify", "vol", store=bench.backup)
            compare.log(verified.strip())
        finally:
            bench.close()
    results = {"command": " ".join(["/usr/bin/python3 scripts/copy_bench.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": args.size,
               "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
               "verify": verified.strip(), "copies": rows}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("| copy | uploaded | PUTs | changed chunks | their stored bytes | uploaded / changed | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = f"{row['uploaded_per_changed']:.4f}" if row["uploaded_per_changed"] else "-"
        print(f"| {row['copy']} | {row['bytes_uploaded']:,} | {row['put_requests']} | {row['changed_chunks'] or '-'} "
              f"| {row['changed_chunk_bytes'] or '-'} | {ratio} | {row['seconds']} s |")


if __name__ == "__main__":
    main()
