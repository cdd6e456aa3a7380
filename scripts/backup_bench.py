"""`zeroblk backup`: what an incremental push uploads, and how fast a
restore reads its chain, against the comparison's cold sequential read on
the same S3 server (moto).

The targets:
  1. an incremental push after changing 1% of a 1 GiB subvolume uploads at
     most 1.2x the size of the `btrfs send -p` stream;
  2. restore reads the chain at no less than half of what the comparison's
     cold sequential read does on the same store.

Everything lives in a tmpfs (--work-dir, /dev/shm): the loop files, moto's
objects (as compare.py keeps them), zeroblk's cache dirs.

Setup, once: a 3 GiB sparse file on a loop device, mkfs.btrfs,
mounted, with the subvolumes zeroblk provisions (`@`, `@home`,
`@snapshots`). `@home` gets 1 GiB: 90% random bytes (incompressible) in
files of 2 to 6 MiB, 10% text (random words and numbers, about 3x
compressible with zstd) in files of 256 KiB to 2 MiB, under a few
directories.

Then RUNS runs, each on a fresh moto (scripts/compare.py's), with the
pushes going through the comparison's counting proxy
(tests/faults/s3_proxy.py) and everything else straight to moto:

  full push     `backup push MOUNT --subvolume @home --to s3://B/plain`
                (a new snapshot), and the same snapshot to s3://B/age
                with --age-recipient (`--snapshot`): both full, timed
  1% changed    about 10 MiB: random bytes written over 36 pieces of 64
                to 448 KiB at random offsets of random files, 256 KiB of
                text over one text file, a new 1 MiB text file
  incremental   both pushed again (the age one with --snapshot, so both
                send the same two snapshots); the PUT bodies the proxy saw
                for each, against `btrfs send -q -p PARENT NEW | wc -c`
  restore       `backup restore URL --snapshot NEWEST --to DIR` into a
                fresh loop btrfs, cold: a fresh process, an empty cache
                dir, the page cache dropped; wall clock, bytes = the
                chain's stream bytes (full + incremental). The first
                restore of a run is checked with `diff -r` against the
                snapshot.
  cold read     the comparison's cold sequential read (compare.Zeroblk and
                compare.run_fio_once: `zeroblk serve` on a volume of 1 MiB
                chunks, zstd:3, its cache dir wiped, page cache dropped, fio
                1M reads at depth 8 over NBD) of a volume in the same
                bucket holding the same 1 GiB (the files of @home, end to
                end). Restores and cold reads alternate, --pairs of each.
  then          the age chain restored, both verified (`backup verify URL
                --snapshot NEWEST`), cold, timed; and `btrfs receive` alone
                of the same two streams from files (a restore's floor)

Target 2 is the median restore over the median cold read, all pairs of all
runs; each pair's ratio is kept too. The host is shared: --quiet N waits up
to N seconds before each cold step for the machine to be under 15% busy,
and how busy it was is kept with each step.

  /usr/bin/python3 scripts/backup_bench.py [--runs 3] [--pairs 3] [--quiet 30] [--out docs/benchmarks/backup.json]

Needs root, loop devices, btrfs-progs, age, zstd, moto_server, nbdcopy and fio
(scripts/compare.sh and scripts/test.sh install them), and a release build.
"""
import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (its S3 server, cold read, proxy, ports and binary path)

MIB = 1 << 20
GIB = 1 << 30
LOOP_SIZE = 3 * GIB
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will what more out up can "
         "block device volume chunk store snapshot commit backup restore stream kernel queue request page cache "
         "write read flush sync error retry timeout bucket object upload download send receive parent chain "
         "zero one two three four five six seven eight nine ten alpha beta gamma delta epsilon").split()


def run(*command, **kwargs):
    return subprocess.run([str(c) for c in command], check=True, stdout=subprocess.PIPE, text=True, **kwargs).stdout


def machine_busy(seconds=1.0):
    """The share of every core's time spent busy over `seconds` (/proc/stat)."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]
    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle) / max(1, total2 - total)


def wait_for_quiet(limit):
    """Up to `limit` seconds until the machine is under 15% busy for a
    second (this host is shared: builds and VMs of other jobs come and go).
    Returns how busy it was last."""
    deadline = time.monotonic() + limit
    while True:
        busy = machine_busy()
        if busy < 0.15 or time.monotonic() >= deadline:
            return round(busy, 3)


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def text_bytes(rng, size):
    """Lines of random words and numbers: compressible about 3x with zstd."""
    out = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(WORDS, k=12)) + f" {rng.randrange(1 << 30)} {rng.random():.6f}\n"
        out.append(line)
        length += len(line)
    return "".join(out).encode()[:size]


class LoopBtrfs:
    """A sparse file on a loop device, btrfs, mounted."""

    def __init__(self, where, name):
        self.image = Path(where) / f"{name}.img"
        self.mount = Path(where) / name
        self.device = None
        self.mounted = False
        try:
            with open(self.image, "wb") as f:
                f.truncate(LOOP_SIZE)
            self.device = run("losetup", "-f", "--show", self.image).strip()
            run("mkfs.btrfs", "-q", "-f", self.device)
            self.mount.mkdir()
            run("mount", self.device, self.mount)
            self.mounted = True
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.mounted:
            if subprocess.run(["umount", str(self.mount)]).returncode != 0:
                # Busy: detach it lazily, so that nothing below deletes
                # through a mount still in use.
                subprocess.run(["umount", "-l", str(self.mount)])
            self.mounted = False
        if self.device:
            subprocess.run(["losetup", "-d", self.device])
            self.device = None
        self.image.unlink(missing_ok=True)
        if self.mount.is_dir() and not os.path.ismount(self.mount):
            shutil.rmtree(self.mount, ignore_errors=True)


class Source:
    """The provisioned layout, and @home's 1 GiB."""

    def __init__(self, shm):
        self.fs = LoopBtrfs(shm, "source")
        self.mount = self.fs.mount

    def fill(self, rng, image, data):
        for sub in ("@", "@home", "@snapshots"):
            run("btrfs", "subvolume", "create", self.mount / sub)
        self.home = self.mount / "@home"
        self.rng = rng
        self.random_files, self.text_files = [], []
        random_total, text_total = data * 9 // 10, data - data * 9 // 10
        written = 0
        with open(image, "wb") as whole:
            def put(path, data, kind):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                whole.write(data)
                kind.append(path)
                return len(data)

            n = 0
            while written < random_total:
                size = min(rng.randint(2 * MIB, 6 * MIB), random_total - written)
                written += put(self.home / f"media/d{n % 8}/f{n:04}.bin", os.urandom(size), self.random_files)
                n += 1
            n = 0
            while written < random_total + text_total:
                size = min(rng.randint(256 << 10, 2 * MIB), random_total + text_total - written)
                written += put(self.home / f"docs/d{n % 4}/t{n:04}.txt", text_bytes(rng, size), self.text_files)
                n += 1
        run("sync")
        sample = self.text_files[0].read_bytes()
        compressed = subprocess.run(["zstd", "-3", "-c"], input=sample, check=True, stdout=subprocess.PIPE).stdout
        self.text_zstd3_ratio = round(len(sample) / len(compressed), 2)

    def change(self, label):
        """About 1% of @home rewritten: random pieces of random files, some
        text, a new small file. Returns the bytes written."""
        rng = self.rng
        written = 0
        for _ in range(36):
            path = rng.choice(self.random_files)
            length = rng.randint(1, 7) * (64 << 10)
            size = path.stat().st_size
            offset = rng.randrange(0, max(1, size - length))
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(os.urandom(min(length, size - offset)))
            written += min(length, size - offset)
        path = rng.choice(self.text_files)
        size = path.stat().st_size
        length = min(256 << 10, size)
        offset = rng.randrange(0, size - length + 1)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(text_bytes(rng, length))
        written += length
        new = self.home / f"docs/new-{label}.txt"
        new.write_bytes(text_bytes(rng, MIB))
        written += MIB
        run("sync")
        return written

    def snapshot(self, name):
        return self.mount / "@snapshots" / name

    def close(self):
        self.fs.close()


def send_bytes(parent, snapshot):
    """`btrfs send -q [-p PARENT] SNAPSHOT | wc -c`, and the seconds it took."""
    command = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snapshot)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    total = 0
    while True:
        block = process.stdout.read(4 * MIB)
        if not block:
            break
        total += len(block)
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return total, time.monotonic() - started


class Run:
    """One run: a fresh moto, a counting proxy in front of it, the
    comparison's zeroblk volume holding the same bytes."""

    def __init__(self, n, work, shm, source, image, recipient, identity, data, pairs, quiet):
        self.n = n
        self.work = Path(work) / f"run{n}"
        self.work.mkdir()
        self.shm = shm
        self.source = source
        self.recipient = recipient
        self.identity = identity
        self.moto = self.proxy = self.volume = None
        self.image = image
        self.data = data
        self.pairs = pairs
        self.quiet = quiet
        self.row = {"run": n}

    def setup(self):
        self.moto = compare.Moto()
        self.bucket = self.moto.bucket()
        self.stats = self.work / "requests"
        control = self.work / "faults"
        control.write_text("ok")
        self.proxy_port = compare.free_port()
        self.proxy = subprocess.Popen(
            ["/usr/bin/python3", str(compare.ROOT / "tests/faults/s3_proxy.py"), str(self.proxy_port),
             self.moto.endpoint, str(control), "1", str(self.stats)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        compare.wait_for_port(self.proxy_port, self.proxy)
        self.urls = {"plain": f"s3://{self.bucket}/backups/plain", "age": f"s3://{self.bucket}/backups/age"}
        base = dict(os.environ, **compare.ENV_S3)
        for name in ("ZEROBLK_CONFIG", "ZEROBLK_PASSWORD", "ZEROBLK_STORE", "ZEROBLK_CACHE_DIR"):
            base.pop(name, None)
        self.push_env = dict(base, AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.proxy_port}")
        self.direct_env = dict(base, AWS_ENDPOINT_URL=self.moto.endpoint)
        self.push_cache = self.work / "push-cache"
        compare.log(f"run {self.n}: the comparison's volume, @home's bytes end to end through zeroblk serve")
        self.volume = compare.Zeroblk(self.work, self.moto.endpoint, self.bucket, str(self.data))
        compare.fill(self.volume.uri(), self.image)
        self.volume.stop()

    def zeroblk(self, *args, env=None, cache=None):
        return run(compare.ZEROBLK, "--store", "memory://", "--cache-dir", cache or self.push_cache, *args,
                   env=env or self.direct_env)

    def push(self, kind, snapshot=None):
        extra = ["--age-recipient", self.recipient] if kind == "age" else []
        if snapshot:
            extra += ["--snapshot", snapshot]
        self.stats.write_text("")
        cpu, moto_cpu = children_cpu(), compare.cpu_seconds(self.moto.process.pid)
        proxy_cpu = compare.cpu_seconds(self.proxy.pid)
        started = time.monotonic()
        report = json.loads(self.zeroblk("backup", "push", self.source.mount, "--subvolume", "@home",
                                         "--to", self.urls[kind], "--json", *extra, env=self.push_env))
        seconds = time.monotonic() - started
        lines = [line.split() for line in self.stats.read_text().splitlines()]
        puts = [line for line in lines if line[0] == "PUT"]
        return {"seconds": round(seconds, 3), "bytes_uploaded": sum(int(line[1]) for line in puts),
                "put_requests": len(puts), "requests": len(lines),
                "zeroblk_cpu_s": round(children_cpu() - cpu, 2),
                "moto_cpu_s": round(compare.cpu_seconds(self.moto.process.pid) - moto_cpu, 2),
                "proxy_cpu_s": round(compare.cpu_seconds(self.proxy.pid) - proxy_cpu, 2), "report": report}

    def cold(self, *args, cache_name):
        """A zeroblk command timed cold: page cache dropped, an empty cache
        dir, a fresh process, straight to moto."""
        cache = self.work / cache_name
        shutil.rmtree(cache, ignore_errors=True)
        compare.wait_until_idle(self.moto)
        busy = wait_for_quiet(self.quiet)
        compare.drop_caches()
        cpu, moto_cpu = children_cpu(), compare.cpu_seconds(self.moto.process.pid)
        started = time.monotonic()
        out = json.loads(self.zeroblk(*args, "--json", cache=cache))
        seconds = time.monotonic() - started
        return out, {"seconds": round(seconds, 3), "machine_busy_before": busy, "zeroblk_and_receive_cpu_s": round(children_cpu() - cpu, 2),
                     "moto_cpu_s": round(compare.cpu_seconds(self.moto.process.pid) - moto_cpu, 2)}

    def restore(self, kind, snapshot, check_against=None):
        target = LoopBtrfs(self.shm, f"restore-{self.n}-{kind}")
        try:
            extra = ["--age-identity", self.identity] if kind == "age" else []
            out, timing = self.cold("backup", "restore", self.urls[kind], "--snapshot", snapshot,
                                    "--to", target.mount / "restored", *extra, cache_name=f"restore-cache-{kind}")
            timing.update(stream_bytes=out["stream_bytes"], received=out["received"],
                          mb_per_s=round(out["stream_bytes"] / timing["seconds"] / 1e6, 1))
            if check_against is not None:
                subprocess.run(["diff", "-r", "-q", str(check_against), out["path"]], check=True)
                timing["diff_r"] = "same"
            return timing
        finally:
            target.close()

    def verify(self, kind, snapshot):
        extra = ["--age-identity", self.identity] if kind == "age" else []
        out, timing = self.cold("backup", "verify", self.urls[kind], "--snapshot", snapshot, *extra,
                                cache_name=f"verify-cache-{kind}")
        if out["bad"]:
            raise RuntimeError(f"backup verify found bad objects: {out['bad']}")
        timing.update(stream_bytes=out["stream_bytes"], objects=out["objects"],
                      mb_per_s=round(out["stream_bytes"] / timing["seconds"] / 1e6, 1))
        return timing

    def cold_read(self):
        """compare.py's cold sequential read of zeroblk, one pass."""
        compare.wait_until_idle(self.moto)
        busy = wait_for_quiet(self.quiet)
        self.volume.start_cold()
        result = compare.run_fio_once(self.volume.uri(), "read", "1m", 8, str(self.data), self.work)
        self.volume.stop()
        bw = result["read"]["bw_bytes"]
        return {"bw_bytes": bw, "machine_busy_before": busy, "mb_per_s": round(bw / 1e6, 1), "fio": result}

    def measure(self):
        row = self.row
        compare.log(f"run {self.n}: full pushes (plain, then age)")
        row["full_plain"] = self.push("plain")
        first = row["full_plain"]["report"]["snapshot"]
        row["full_age"] = self.push("age", snapshot=first)
        full_stream, full_send_s = send_bytes(None, self.source.snapshot(first))
        row["full_send"] = {"bytes": full_stream, "seconds": round(full_send_s, 2)}
        row["changed_bytes"] = self.source.change(f"run{self.n}")
        compare.log(f"run {self.n}: {row['changed_bytes']} bytes changed; incremental pushes")
        row["incremental_plain"] = self.push("plain")
        second = row["incremental_plain"]["report"]["snapshot"]
        row["incremental_age"] = self.push("age", snapshot=second)
        for kind in ("plain", "age"):
            report = row[f"incremental_{kind}"]["report"]
            if report["parent"] != first or report["snapshot"] != second:
                raise RuntimeError(f"the {kind} incremental push sent {report['snapshot']} against "
                                   f"{report['parent']}, not {second} against {first}")
        stream, send_s = send_bytes(self.source.snapshot(first), self.source.snapshot(second))
        row["send_p"] = {"bytes": stream, "seconds": round(send_s, 2)}
        for kind in ("plain", "age"):
            push = row[f"incremental_{kind}"]
            push["uploaded_per_send_p"] = round(push["bytes_uploaded"] / stream, 4)
            compare.log(f"run {self.n}: incremental {kind}: {push['bytes_uploaded']:,} bytes uploaded in "
                        f"{push['put_requests']} PUTs, send -p {stream:,}: {push['uploaded_per_send_p']:.4f}x")
        listed = json.loads(self.zeroblk("backup", "list", self.urls["plain"], "--json"))
        row["listed"] = [{k: s[k] for k in ("name", "parent", "stream_bytes", "stored_bytes")}
                         for s in listed["snapshots"]]
        compare.log(f"run {self.n}: restores and cold reads, interleaved, {self.pairs} of each; then age, verify")
        row["pairs"] = []
        for p in range(self.pairs):
            restored = self.restore("plain", second, check_against=self.source.snapshot(second) if p == 0 else None)
            cold = self.cold_read()
            row["pairs"].append({"restore_plain": restored, "cold_read": cold,
                                 "restore_per_cold_read": round(restored["mb_per_s"] / cold["mb_per_s"], 3)})
            compare.log(f"run {self.n}, pair {p + 1}: restore {restored['mb_per_s']} MB/s ({restored['seconds']} s), "
                        f"cold read {cold['mb_per_s']} MB/s")
        row["restore_age"] = self.restore("age", second)
        row["verify_plain"] = self.verify("plain", second)
        row["verify_age"] = self.verify("age", second)
        row["receive_only"] = self.receive_only(first, second)
        compare.log(f"run {self.n}: age restore {row['restore_age']['mb_per_s']} MB/s, verify "
                    f"{row['verify_plain']['mb_per_s']} MB/s (age {row['verify_age']['mb_per_s']}), btrfs receive "
                    f"alone {row['receive_only']['mb_per_s']} MB/s")
        return row

    def receive_only(self, first, second):
        """The floor of a restore: `btrfs receive` alone of the same two
        streams, from files in the tmpfs, into a fresh loop btrfs, cold."""
        streams = [Path(self.shm) / "full.stream", Path(self.shm) / "incremental.stream"]
        target = LoopBtrfs(self.shm, f"receive-{self.n}")
        try:
            total = 0
            for path, parent, snapshot in zip(streams, (None, first), (first, second)):
                with open(path, "wb") as out:
                    subprocess.run(["btrfs", "send", "-q", *(["-p", str(self.source.snapshot(parent))] if parent
                                                              else []), str(self.source.snapshot(snapshot))],
                                   stdout=out, check=True)
                total += path.stat().st_size
            busy = wait_for_quiet(self.quiet)
            compare.drop_caches()
            started = time.monotonic()
            for path in streams:
                with open(path, "rb") as stream:
                    subprocess.run(["btrfs", "receive", "-q", str(target.mount)], stdin=stream, check=True)
            seconds = time.monotonic() - started
            return {"seconds": round(seconds, 3), "machine_busy_before": busy, "stream_bytes": total, "mb_per_s": round(total / seconds / 1e6, 1)}
        finally:
            target.close()
            for path in streams:
                path.unlink(missing_ok=True)

    def close(self):
        if self.volume is not None and self.volume.process.poll() is None:
            self.volume.process.terminate()
            self.volume.process.wait()
        if self.proxy is not None:
            self.proxy.terminate()
            self.proxy.wait()
        if self.moto is not None:
            self.moto.stop()


def stat(values):
    return {"median": statistics.median(values), "runs": values}


def summary(rows):
    pairs = [pair for row in rows for pair in row["pairs"]]
    s = {"restore_plain_mb_per_s": stat([p["restore_plain"]["mb_per_s"] for p in pairs]),
         "cold_read_mb_per_s": stat([p["cold_read"]["mb_per_s"] for p in pairs]),
         "restore_per_cold_read_pairwise": stat([p["restore_per_cold_read"] for p in pairs]),
         "restore_plain_seconds": stat([p["restore_plain"]["seconds"] for p in pairs]),
         "restore_plain_cpu_s": stat([p["restore_plain"]["zeroblk_and_receive_cpu_s"] for p in pairs])}
    for name, (key, field) in {
        "incremental_plain_uploaded_per_send_p": ("incremental_plain", "uploaded_per_send_p"),
        "incremental_age_uploaded_per_send_p": ("incremental_age", "uploaded_per_send_p"),
        "restore_age_mb_per_s": ("restore_age", "mb_per_s"),
        "restore_age_cpu_s": ("restore_age", "zeroblk_and_receive_cpu_s"),
        "verify_plain_mb_per_s": ("verify_plain", "mb_per_s"),
        "verify_age_mb_per_s": ("verify_age", "mb_per_s"),
        "receive_only_mb_per_s": ("receive_only", "mb_per_s"),
        "full_plain_seconds": ("full_plain", "seconds"),
        "full_age_seconds": ("full_age", "seconds"),
        "incremental_plain_seconds": ("incremental_plain", "seconds"),
        "incremental_age_seconds": ("incremental_age", "seconds"),
    }.items():
        s[name] = stat([row[key][field] for row in rows])
    cold = s["cold_read_mb_per_s"]["median"]
    for name in ("restore_plain", "restore_age", "verify_plain", "verify_age", "receive_only"):
        s[f"{name}_per_cold_read_of_medians"] = round(s[f"{name}_mb_per_s"]["median"] / cold, 3)
    s["restore_plain_per_receive_only_of_medians"] = round(
        s["restore_plain_mb_per_s"]["median"] / s["receive_only_mb_per_s"]["median"], 3)
    s["target_1_met"] = max(s["incremental_plain_uploaded_per_send_p"]["runs"]
                            + s["incremental_age_uploaded_per_send_p"]["runs"]) <= 1.2
    s["target_2_met"] = s["restore_plain_per_cold_read_of_medians"] >= 0.5
    return s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", default="1G", help="what @home holds (the targets are for 1G)")
    parser.add_argument("--pairs", type=int, default=3, help="restores and cold reads per run, interleaved")
    parser.add_argument("--quiet", type=float, default=0, metavar="SECONDS",
                        help="before each cold step, wait up to this long for the machine to be under 15%% busy")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--work-dir", default="/dev/shm",
                        help="where the loop files, the image, moto's and zeroblk's caches go (a tmpfs: about 9 GiB)")
    parser.add_argument("--out", default=str(compare.ROOT / "docs/benchmarks/backup.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices, mount, btrfs send and receive)")
    rng = random.Random(args.seed)
    data = compare.parse_size(args.data)
    started = time.monotonic()
    load_before = os.getloadavg()
    built = compare.ZEROBLK.stat().st_mtime
    rows = []
    with tempfile.TemporaryDirectory(prefix="zeroblk-backup.", dir=args.work_dir) as work:
        source = None
        try:
            identity = Path(work) / "age.key"
            run("age-keygen", "-o", identity, stderr=subprocess.DEVNULL)
            recipient = run("age-keygen", "-y", identity).strip()
            image = Path(work) / "home.img"
            compare.log(f"a 3 GiB loop btrfs (@, @home, @snapshots); {args.data} into @home")
            source = Source(work)
            source.fill(rng, image, data)
            for n in range(1, args.runs + 1):
                each = Run(n, work, work, source, image, recipient, identity, data, args.pairs, args.quiet)
                try:
                    each.setup()
                    rows.append(each.measure())
                finally:
                    each.close()
        finally:
            if source is not None:
                source.close()
    s = summary(rows)
    results = {"command": " ".join(["/usr/bin/python3 scripts/backup_bench.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "head": run("git", "-C", compare.ROOT, "rev-parse", "--short", "HEAD").strip(),
               "binary_built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(built)),
               "binary_rebuilt_meanwhile": compare.ZEROBLK.stat().st_mtime != built,
               "machine": {"cores": os.cpu_count(), "kernel": os.uname().release,
                           "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": os.getloadavg()},
               "store": "moto (S3) on loopback, in /dev/shm; pushes through tests/faults/s3_proxy.py",
               "work_dir": args.work_dir,
               "subvolume": {"bytes": data, "random_files": len(source.random_files),
                             "text_files": len(source.text_files), "text_bytes": data - data * 9 // 10,
                             "text_zstd3_ratio_of_one_file": source.text_zstd3_ratio},
               "seconds_total": round(time.monotonic() - started, 1), "summary": s, "runs": rows}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("| measure | median | runs |")
    print("| --- | ---: | --- |")
    for name, value in s.items():
        if isinstance(value, dict):
            print(f"| {name} | {value['median']} | {value['runs']} |")
        else:
            print(f"| {name} | {value} | |")


if __name__ == "__main__":
    main()
