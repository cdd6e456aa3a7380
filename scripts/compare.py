#!/usr/bin/python3
"""zeroblk against the peers users would pick instead, in one run.

On this host, over NBD with fio's nbd engine: zeroblk (on a real S3
server: moto, or Garage, one node with its data in memory, with --s3 garage),
qemu-nbd and nbdkit's file plugin on a raw file, nbdkit's
memory plugin, s3backer on the same S3 server (its FUSE file, served by
nbdkit's file plugin, since Debian's s3backer 1.5.4 predates its NBD mode),
and ZeroFS 0.19.1 from crates.io on the same S3 server (its NBD server).
In the VM (Debian's 6.12 kernel): zeroblk over ublk, zeroblk over the
kernel NBD client, rublk's loop target (crates.io 0.2.15, the reference
ublk daemon) and the kernel loop device on a file
(scripts/compare-vm.sh). The profiles of fio-profiles/ run interleaved:
each profile against every target in turn; a profile with a target runs
three passes and each target's median pass counts. Then reads of a
working set four times zeroblk's memory cache, from its disk cache; cold
reads (caches dropped), write amplification and peak memory. And zeroblk
serve over TLS against plaintext (tls_comparison).

    scripts/compare.sh [--runtime 10] [--size 256M] [--out docs/benchmarks] [--s3 garage|moto]
    scripts/compare.sh --tls-only   # only TLS against plaintext (tls.json)
    scripts/compare.sh --encryption-only   # only encrypted against clear and s3backer (encryption.json)

Writes results.json, README.md (tables of ratios) and PNG plots to --out.
"""
import argparse
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZEROBLK = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/zeroblk"
PROFILES = [
    "randread-4k-qd1",
    "randread-4k-qd32",
    "randwrite-4k-qd32",
    "seqread-1m",
    "seqwrite-1m",
    "randrw-70-30-4k-qd32",
    "fdatasync-4k",
]
# Warm profiles with a target: three passes each, peers interleaved, and
# the median counts. A 6-second pass on a shared two-core machine swings by
# a third; one pass measured the machine as much as the peer.
TARGET_PROFILES = {"randread-4k-qd32", "seqread-1m", "randwrite-4k-qd32", "seqwrite-1m"}
WARM_PASSES = 3
# Cold reads: one pass each, as (profile name, fio rw, block size, depth).
COLD_PROFILES = [("seqread-1m", "read", "1m", 8), ("randread-4k-qd32", "randread", "4k", 32)]
# Cold passes per peer and profile; the median counts.
COLD_PASSES = 3
# Beyond memory: a working set four times zeroblk's memory cache, all of it
# in the disk cache, against nbdkit's file plugin on the same bytes.
BEYOND_MEMORY_CACHE = "256M"
BEYOND_MEMORY_SIZE = "1G"
BEYOND_MEMORY_PROFILES = ["randread-4k-qd32", "seqread-1m"]
CHUNK = 1 << 20
# TLS against plaintext, on zeroblk serve: the profiles, and passes per mode.
TLS_PROFILES = ["randread-4k-qd32", "seqread-1m"]
TLS_PASSES = 3
# Garage's key format (GK and 24 hex digits, a 64-digit secret); moto takes any.
ACCESS_KEY = "GK" + "7a" * 12
SECRET_KEY = "5e" * 32
PASSWORD = "zeroblk-bench"
ZEROBLK_ENCRYPTED = "zeroblk (encrypted)"
ENV_S3 = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}


def log(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def drop_caches():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def summarize(report):
    """The numbers we compare, from one fio JSON report."""
    job = report["jobs"][0]
    out = {"error": job["error"]}
    for direction in ("read", "write", "sync"):
        part = job.get(direction, {})
        if not part or (direction != "sync" and part.get("total_ios", 0) == 0):
            continue
        lat = part.get("lat_ns") or {}
        pct = lat.get("percentile") or {}
        out[direction] = {
            "iops": part.get("iops", 0),
            "bw_bytes": part.get("bw_bytes", 0),
            "lat_mean_us": lat.get("mean", 0) / 1000,
            **{f"p{k.split('.')[0] if k.endswith('.000000') else k.rstrip('0')}_us": v / 1000 for k, v in pct.items()},
        }
    return out


def run_fio_once(uri, rw, bs, iodepth, size, workdir):
    """One pass over `size` bytes, each block read once: what a cold read
    costs, before any cache can serve it again."""
    out = Path(workdir) / "fio.json"
    subprocess.run(
        ["fio", "--name=cold", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
         f"--iodepth={iodepth}", f"--size={size}", "--direct=1", "--lat_percentiles=1",
         "--percentile_list=50:90:99:99.9", "--output-format=json", f"--output={out}"],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return summarize(json.loads(out.read_text()))


def read_file_once(path, size, workdir):
    """One sequential pass over `size` bytes of a file, 1 MiB at a time,
    through the page cache: how `dd bs=1M` reads it, as a user of a FUSE
    file reads it."""
    out = Path(workdir) / "fio.json"
    subprocess.run(
        ["fio", "--name=cold-file", "--ioengine=psync", f"--filename={path}", "--rw=read", "--bs=1m",
         f"--size={size}", "--lat_percentiles=1", "--percentile_list=50:90:99:99.9",
         "--output-format=json", f"--output={out}"],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return summarize(json.loads(out.read_text()))


def run_fio(profile, section, target, size, runtime, workdir, env_extra=None):
    """One profile against one target; None (and a line saying why) when
    fio fails, so one peer's failure does not cost the whole comparison."""
    out = Path(workdir) / "fio.json"
    env = dict(os.environ, FIO_TARGET=target, FIO_SIZE=size, FIO_RUNTIME=str(runtime), **(env_extra or {}))
    try:
        ran = subprocess.run(
            ["fio", f"--section={section}", "--output-format=json", f"--output={out}",
             str(ROOT / "fio-profiles" / f"{profile}.fio")],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=runtime * 10 + 120,
        )
    except subprocess.TimeoutExpired:
        log(f"fio did not finish on {target} ({profile}) in {runtime * 10 + 120} s")
        return None
    if ran.returncode != 0:
        log(f"fio failed on {target} ({profile}): {ran.stderr.strip()[-500:]}")
        return None
    return summarize(json.loads(out.read_text()))


class Moto:
    """moto's S3 server: one Python process, objects in memory. moto keeps
    an object over 5 MiB in a temporary file: its TMPDIR is in /dev/shm, so
    that big objects (zeroblk's packs, ZeroFS's tables) stay in memory when
    the comparison drops the page cache, as small ones (s3backer's blocks)
    do. The store is not what is measured."""

    name = "moto"
    fences = True

    def __init__(self):
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="zeroblk-moto-", dir="/dev/shm"))
        self.process = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=dict(os.environ, TMPDIR=str(self.tmp)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def bucket(self):
        name = f"bench-{uuid.uuid4().hex[:12]}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("PUT", f"/{name}")
        assert conn.getresponse().status == 200
        return name

    def stop(self):
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Garage:
    """Garage (crates.io), a distributed object store, as one node. Its data
    and metadata live in /dev/shm, so that, like moto's, they stay in
    memory when the comparison drops the page cache: the store is not what
    is measured."""

    name = "Garage"
    fences = False  # it ignores If-None-Match and If-Match

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="zeroblk-garage-", dir="/dev/shm"))
        self.port, rpc = free_port(), free_port()
        self.config = self.dir / "garage.toml"
        self.config.write_text(f"""
metadata_dir = "{self.dir / 'meta'}"
data_dir = "{self.dir / 'data'}"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{'3c' * 32}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{self.port}"
root_domain = ".s3.garage.localhost"
""")
        self.log = open(self.dir / "garage.log", "w")
        self.process = subprocess.Popen(["garage", "-c", str(self.config), "server"],
                                        stdout=self.log, stderr=self.log)
        wait_for_port(self.port, self.process)
        node = self.garage("node", "id", "-q").split("@")[0]
        self.garage("layout", "assign", "-z", "dc1", "-c", "20G", node)
        self.garage("layout", "apply", "--version", "1")
        self.garage("key", "import", "--yes", "-n", "bench", ACCESS_KEY, SECRET_KEY)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def garage(self, *args):
        for _ in range(50):
            ran = subprocess.run(["garage", "-c", str(self.config), *args], capture_output=True, text=True)
            if ran.returncode == 0:
                return ran.stdout.strip()
            time.sleep(0.2)  # the node is still starting
        raise RuntimeError(f"garage {' '.join(args)} failed: {ran.stderr.strip()[-500:]}")

    def bucket(self):
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self.garage("bucket", "create", name)
        self.garage("bucket", "allow", "--read", "--write", "--owner", name, "--key", ACCESS_KEY)
        return name

    def stop(self):
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Zeroblk:
    """zeroblk serve on one volume of the S3 server; encrypted when given a
    password (as ZeroFS always is)."""

    needs_fill = True

    def __init__(self, work, endpoint, bucket, size, compression="zstd:3", serve_args=(),
                 name="zeroblk", password=None):
        self.name = name
        self.work = Path(work)
        self.serve_args = list(serve_args)
        self.slug = "zeroblk-encrypted" if password else "zeroblk"
        self.cache = self.work / f"{self.slug}-cache"
        self.env = dict(os.environ, **ENV_S3, AWS_ENDPOINT_URL=endpoint,
                        ZEROBLK_STORE=f"s3://{bucket}/zeroblk", ZEROBLK_CACHE_DIR=str(self.cache))
        self.env.pop("ZEROBLK_CONFIG", None)
        self.env.pop("ZEROBLK_PASSWORD", None)
        if password:
            self.env["ZEROBLK_PASSWORD"] = password
        subprocess.run([ZEROBLK, "volume", "create", "vol", "--size", size, "--chunk-size", "1M",
                        "--compression", compression], env=self.env, check=True, stdout=subprocess.DEVNULL)
        self.process = None
        self.start()

    def start(self):
        self.port = free_port()
        self.log = open(self.work / f"{self.slug}.log", "a")
        self.process = subprocess.Popen([ZEROBLK, "serve", "--listen", f"127.0.0.1:{self.port}", *self.serve_args,
                                         "vol"],
                                        env=self.env, stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for_port(self.port, self.process)

    def uri(self):
        return f"nbd://127.0.0.1:{self.port}/vol"

    def peak_rss(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        if self.process.wait(timeout=600) != 0:
            raise RuntimeError("zeroblk serve exited non-zero; see its log")

    def start_cold(self):
        shutil.rmtree(self.cache)
        drop_caches()
        self.start()


class Nbdkit:
    """nbdkit with a plugin; `needs_fill` when it does not serve the image
    already (the memory plugin)."""

    def __init__(self, name, plugin_args, needs_fill=False):
        self.name = name
        self.needs_fill = needs_fill
        self.port = free_port()
        self.process = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(self.port), *plugin_args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def uri(self):
        return f"nbd://127.0.0.1:{self.port}/"

    def stop(self):
        self.process.terminate()
        self.process.wait()


class QemuNbd(Nbdkit):
    def __init__(self, image):
        self.name = "qemu-nbd (raw file)"
        self.needs_fill = False
        self.port = free_port()
        self.process = subprocess.Popen(
            ["qemu-nbd", "-f", "raw", "-t", "-b", "127.0.0.1", "-p", str(self.port), "-x", "img",
             "--cache=writeback", "--aio=threads", str(image)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def uri(self):
        return f"nbd://127.0.0.1:{self.port}/img"


class S3backer:
    """s3backer's FUSE file on the S3 server, served by nbdkit's file plugin.
    Configured as its manual recommends for a block device: the block size
    equal to zeroblk's chunk size, its block cache on (its default, 1000
    blocks, 20 write-back threads), listBlocks off for a fresh bucket."""

    name = "s3backer (FUSE, via nbdkit)"
    # Its cold sequential read is also measured the way its users read it:
    # the FUSE file itself, 1 MiB at a time.
    file_name = "s3backer (FUSE file, read directly)"
    needs_fill = True

    def __init__(self, work, moto, size):
        self.mount = Path(work) / "s3backer"
        self.mount.mkdir()
        self.bucket = moto.bucket()
        self.moto = moto
        self.size = size
        self.start()

    def start(self):
        subprocess.run(
            ["s3backer", f"--baseURL={self.moto.endpoint}/", f"--accessId={ACCESS_KEY}", f"--accessKey={SECRET_KEY}",
             f"--blockSize={CHUNK}", f"--size={self.size}", "--force", self.bucket, str(self.mount)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.server = Nbdkit(self.name, ["file", f"file={self.mount / 'file'}"])

    def uri(self):
        return self.server.uri()

    def stop(self):
        self.server.stop()
        subprocess.run(["umount", str(self.mount)], check=True)
        # The daemon outlives the unmount while it writes its dirty blocks.
        deadline = time.time() + 600
        while subprocess.run(["pgrep", "-f", f"s3backer .*{self.mount}"], stdout=subprocess.DEVNULL).returncode == 0:
            if time.time() > deadline:
                raise RuntimeError("s3backer did not exit within 10 minutes of its unmount")
            time.sleep(0.2)

    def start_cold(self):
        drop_caches()
        self.start()

    def file(self):
        return self.mount / "file"


class ZeroFS:
    """ZeroFS 0.19.1 (crates.io) on the same S3 server, configured as its
    README shows, with the same memory cache as zeroblk. Its NBD devices are
    files in `.nbd/` of its own filesystem, made through its NFS server:
    libnfs's nfs-cp copies the image there, which creates the device and
    fills it with the same bytes (no NFS client is in this kernel)."""

    name = "ZeroFS (NBD)"
    needs_fill = False

    def __init__(self, work, moto, image):
        self.work = Path(work) / "zerofs"
        self.work.mkdir()
        self.cache = self.work / "cache"
        self.bucket = moto.bucket()
        self.endpoint = moto.endpoint
        self.start()
        nfs = f"nfs://127.0.0.1/.nbd/device?nfsport={self.nfs_port}&mountport={self.nfs_port}"
        subprocess.run(["nfs-cp", str(image), nfs], check=True, stdout=subprocess.DEVNULL)

    def start(self):
        self.nfs_port, self.nbd_port = free_port(), free_port()
        config = self.work / "zerofs.toml"
        config.write_text(f"""
[cache]
dir = "{self.cache}"
disk_size_gb = 10.0
memory_size_gb = 0.5

[storage]
url = "s3://{self.bucket}/zerofs"
encryption_password = "{PASSWORD}"

[servers.nfs]
addresses = ["127.0.0.1:{self.nfs_port}"]

[servers.nbd]
addresses = ["127.0.0.1:{self.nbd_port}"]

[aws]
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
endpoint = "{self.endpoint}"
default_region = "us-east-1"
allow_http = "true"
""")
        self.log = open(self.work / "zerofs.log", "a")
        self.process = subprocess.Popen(["zerofs", "run", "-c", str(config)],
                                        stdout=self.log, stderr=self.log)
        wait_for_port(self.nbd_port, self.process)
        wait_for_port(self.nfs_port, self.process)

    def uri(self):
        return f"nbd://127.0.0.1:{self.nbd_port}/device"

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def start_cold(self):
        shutil.rmtree(self.cache, ignore_errors=True)
        drop_caches()
        self.start()


def half_compressible(path, size):
    """Random, half compressible, never zero: like the profiles' data."""
    block = 64 << 10
    pattern = bytes(j % 251 + 1 for j in range(block // 2 + 251))
    with open(path, "wb") as f:
        for i in range(size // block):
            f.write(os.urandom(block // 2) + pattern[i % 251:i % 251 + block // 2])


def fill(uri, image):
    subprocess.run(["nbdcopy", str(image), uri], check=True)


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def host_comparison(args, work, results):
    moto = Garage() if args.s3 == "garage" else Moto()
    results["s3_server"] = moto.name
    volume_size = "2G"
    image = Path(work) / "fill.img"
    half_compressible(image, parse_size(args.size))
    raw = Path(work) / "raw.img"
    shutil.copy(image, raw)
    subprocess.run(["truncate", "-s", volume_size, str(raw)], check=True)
    raw2 = Path(work) / "raw2.img"
    shutil.copy(raw, raw2)
    zeroblk = Zeroblk(work, moto.endpoint, moto.bucket(), volume_size)
    encrypted = Zeroblk(work, moto.endpoint, moto.bucket(), volume_size, name=ZEROBLK_ENCRYPTED, password=PASSWORD)
    s3backer = S3backer(work, moto, volume_size)
    # ZeroFS refuses a store without conditional writes (it fences with
    # them), and Garage ignores them: it runs on moto only.
    zerofs = ZeroFS(work, moto, image) if moto.fences else None
    if zerofs is None:
        log(f"ZeroFS is left out: it refuses {moto.name}, which ignores conditional writes")
    peers = [
        zeroblk,
        encrypted,
        Nbdkit("nbdkit file (raw file)", ["file", f"file={raw}"]),
        QemuNbd(raw2),
        Nbdkit("nbdkit memory", ["memory", volume_size], needs_fill=True),
        s3backer,
        zerofs,
    ]
    peers = [peer for peer in peers if peer is not None]
    log("filling every target with the same bytes")
    for peer in peers:
        if peer.needs_fill:
            fill(peer.uri(), image)
    for profile in PROFILES:
        warm_runs(results, profile, peers, args, work)
    results["peak_rss_bytes"] = {"zeroblk serve": zeroblk.peak_rss(), "memory_cache_bytes": 512 << 20}
    beyond_memory(results, moto, work, args.runtime)
    cold_peers = [p for p in (zeroblk, encrypted, s3backer, zerofs) if p is not None]
    cold_reads(results, moto, cold_peers, args.size, work)
    for peer in peers:
        if peer not in cold_peers:
            peer.stop()
    results["discard_2t_seconds"] = discard_2t(work, moto)
    results["write_amplification"] = write_amplification(work, moto, image)
    moto.stop()


def warm_runs(results, profile, peers, args, work):
    """One profile against every peer, interleaved: WARM_PASSES passes when
    the profile has a target, and each peer's median pass (by bytes moved)
    is its result, with every pass's figure kept beside it."""
    count = WARM_PASSES if profile in TARGET_PROFILES else 1
    passes = {peer.name: [] for peer in peers}
    for n in range(count):
        for peer in peers:
            log(f"{profile}, pass {n + 1} of {count}: {peer.name}")
            result = run_fio(profile, "nbd", peer.uri(), args.size, args.runtime, work)
            if result is not None:
                passes[peer.name].append(result)
    for peer in peers:
        if passes[peer.name]:
            results["runs"].append(median_run("host", peer.name, profile, "warm", passes[peer.name]))


def beyond_memory(results, moto, work, runtime):
    """A working set four times zeroblk's memory cache, all of it in its
    disk cache: written, committed, then read once after a restart (each
    chunk fetched from the store once, kept on disk), against nbdkit's file
    plugin on a copy of the same bytes in the page cache. Three passes of
    each profile, interleaved; the median pass counts."""
    log(f"beyond memory: {BEYOND_MEMORY_SIZE} of data, a {BEYOND_MEMORY_CACHE} memory cache")
    where = Path(work) / "beyond-memory"
    where.mkdir()
    image = where / "fill.img"
    half_compressible(image, parse_size(BEYOND_MEMORY_SIZE))
    raw = where / "raw.img"
    shutil.copy(image, raw)
    zeroblk = Zeroblk(where, moto.endpoint, moto.bucket(), "2G",
                      serve_args=["--memory-cache", BEYOND_MEMORY_CACHE])
    fill(zeroblk.uri(), image)
    zeroblk.stop()
    zeroblk.start()
    subprocess.run(["nbdcopy", zeroblk.uri(), "null:"], check=True)
    peers = [zeroblk, Nbdkit("nbdkit file (raw file)", ["file", f"file={raw}"])]
    for profile in BEYOND_MEMORY_PROFILES:
        passes = {peer.name: [] for peer in peers}
        for n in range(WARM_PASSES):
            for peer in peers:
                log(f"{profile}, beyond memory, pass {n + 1} of {WARM_PASSES}: {peer.name}")
                result = run_fio(profile, "nbd", peer.uri(), BEYOND_MEMORY_SIZE, runtime, where)
                if result is not None:
                    passes[peer.name].append(result)
        for peer in peers:
            if passes[peer.name]:
                results["runs"].append(median_run("host", peer.name, profile, "beyond-memory", passes[peer.name]))
    results["beyond_memory"] = {"size": BEYOND_MEMORY_SIZE, "memory_cache": BEYOND_MEMORY_CACHE}
    for peer in peers:
        peer.stop()


def median_run(where, target, profile, cache, passes):
    """The record of a target's median pass (by bytes moved), with every
    pass's figure beside it when there were several."""
    by_speed = sorted(passes, key=bytes_per_second)
    run = {"where": where, "target": target, "profile": profile, "cache": cache,
           "result": by_speed[len(by_speed) // 2]}
    if len(passes) > 1:
        run["passes_bw_bytes"] = [bytes_per_second(result) for result in passes]
    return run


def bytes_per_second(result):
    return sum(result.get(direction, {}).get("bw_bytes", 0) for direction in ("read", "write"))


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(server, timeout=120):
    """Until the S3 server used under 5% of a core for a second: what a
    stopped peer left it to do (deletes, a flush) must not slow the next."""
    deadline = time.time() + timeout
    before = cpu_seconds(server.process.pid)
    while time.time() < deadline:
        time.sleep(1)
        now = cpu_seconds(server.process.pid)
        if now - before < 0.05:
            return
        before = now
    log(f"{server.name} was still busy after {timeout} s; measuring anyway")


def cold_reads(results, moto, peers, size, work):
    """Each cold profile, COLD_PASSES times, peers interleaved; the median
    pass of each peer is its result. A pass is one peer alone on the S3
    server (the others stopped: ZeroFS compacts in the background), its
    caches wiped and the page cache dropped: a sub-second pass is easily
    disturbed, and one pass would measure the machine, not the peer."""
    for peer in peers:
        peer.stop()
    for profile, rw, bs, depth in COLD_PROFILES:
        passes = {peer.name: [] for peer in peers}
        for n in range(COLD_PASSES):
            for peer in peers:
                log(f"{profile}, cold, pass {n + 1} of {COLD_PASSES}: {peer.name}")
                wait_until_idle(moto)
                peer.start_cold()
                passes[peer.name].append(run_fio_once(peer.uri(), rw, bs, depth, size, work))
                peer.stop()
        for peer in peers:
            results["runs"].append(median_run("host", peer.name, profile, "cold", passes[peer.name]))
    files = [peer for peer in peers if hasattr(peer, "file")]
    for peer in files:
        passes = []
        for n in range(COLD_PASSES):
            log(f"seqread-1m, cold, pass {n + 1} of {COLD_PASSES}: {peer.file_name}")
            wait_until_idle(moto)
            peer.start_cold()
            passes.append(read_file_once(peer.file(), size, work))
            peer.stop()
        results["runs"].append(median_run("host", peer.file_name, "seqread-1m", "cold", passes))


def discard_2t(work, moto):
    """A whole 2 TiB volume trimmed in 2 GiB requests (tests/nbd/trim_all.py), timed."""
    log("a 2 TiB whole-device discard")
    where = Path(work) / "discard"
    where.mkdir()
    big = Zeroblk(where, moto.endpoint, moto.bucket(), "2T")
    timed = subprocess.run(["/usr/bin/python3", str(ROOT / "tests/nbd/trim_all.py"), big.uri()],
                           check=True, capture_output=True, text=True)
    seconds = float(timed.stdout.strip())
    big.stop()
    return seconds


def write_amplification(work, moto, image):
    """Bytes and requests the store gets, counted by a proxy in front of
    moto: for a sequential write of the image, then for reading it back
    once with the cache dir wiped. Chunk compression off, so that
    compression does not hide overhead."""
    log("store requests and bytes: a sequential write and a cold read through a counting proxy")
    wa = Path(work) / "wa"
    wa.mkdir()
    stats = wa / "requests"
    control = wa / "faults"
    control.write_text("ok")
    port = free_port()
    proxy = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests/faults/s3_proxy.py"), str(port), moto.endpoint,
                              str(control), "1", str(stats)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proxy)
    zeroblk = Zeroblk(wa, f"http://127.0.0.1:{port}", moto.bucket(), "2G", compression="none")
    stats.write_text("")
    fill(zeroblk.uri(), image)
    zeroblk.stop()
    writes = [line.split() for line in stats.read_text().splitlines()]
    shutil.rmtree(zeroblk.cache)
    zeroblk.start()
    stats.write_text("")
    subprocess.run(["nbdcopy", zeroblk.uri(), "null:"], check=True)
    reads = [line.split() for line in stats.read_text().splitlines()]
    zeroblk.stop()
    proxy.terminate()
    proxy.wait()
    size = image.stat().st_size
    puts = [r for r in writes if r[0] == "PUT"]
    gets = [r for r in reads if r[0] == "GET"]
    uploaded = sum(int(p[1]) for p in puts)
    downloaded = sum(int(g[2]) for g in gets)
    gib = size / (1 << 30)
    return {"bytes_written": size, "bytes_uploaded": uploaded, "put_requests": len(puts),
            "write_requests": len(writes), "chunks_written": size // CHUNK,
            "uploaded_per_written": uploaded / size, "requests_per_chunk": len(puts) / (size // CHUNK),
            "requests_per_gib_written": len(writes) / gib, "bytes_read": size,
            "bytes_downloaded": downloaded, "get_requests": len(gets), "read_requests": len(reads),
            "downloaded_per_read": downloaded / size, "requests_per_gib_read": len(reads) / gib}


def test_certificates(dir):
    """A CA and a server certificate for 127.0.0.1 (openssl CLI), and a
    HOME whose .pki/libnbd/ca-cert.pem makes libnbd trust that CA: fio's
    nbd engine takes a URI but no tls-certificates= (libnbd refuses local
    files unless the program allows them), so it finds the CA there."""
    dir.mkdir()
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=dir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2",
            "-subj", "/CN=zeroblk bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", *ec, "-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=localhost")
    (dir / "server.ext").write_text("keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server-cert.pem")
    (dir / "server-key.pem").chmod(0o600)
    home = dir / "home"
    (home / ".pki/libnbd").mkdir(parents=True)
    shutil.copy(dir / "ca-cert.pem", home / ".pki/libnbd/ca-cert.pem")
    return dir / "server-cert.pem", dir / "server-key.pem", home


def tls_comparison(args, work):
    """zeroblk serve over TLS (a server certificate) against the same server
    in plaintext, on a loopback port, warm (the data in its memory cache),
    with fio's nbd engine: libnbd is the client both times, its TLS is
    GnuTLS, the server's OpenSSL. What TLS costs is the encryption on both
    ends of one connection, on the same two cores: the numbers are of the
    pair, client and server. Modes interleave, TLS_PASSES times each; the
    median pass counts. The server's CPU seconds per pass are kept."""
    work = Path(work)
    cert, key, home = test_certificates(work / "tls")
    env = dict(os.environ, ZEROBLK_STORE=f"file://{work}/tls-store", ZEROBLK_CACHE_DIR=str(work / "tls-cache"),
               RUST_LOG="zeroblk::nbd::tls=debug")
    env.pop("ZEROBLK_CONFIG", None)
    subprocess.run([ZEROBLK, "volume", "create", "vol", "--size", "2G", "--chunk-size", "1M"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    image = work / "tls-fill.img"
    half_compressible(image, parse_size(args.size))
    modes = {"plaintext": ("nbd", []), "tls": ("nbds", ["--tls-cert", str(cert), "--tls-key", str(key)])}
    passes = {(mode, profile): [] for mode in modes for profile in TLS_PROFILES}
    server_log = work / "tls-serve.log"
    filled = False
    for n in range(TLS_PASSES):
        for mode, (scheme, flags) in modes.items():
            port = free_port()
            with open(server_log, "a") as log_file:
                server = subprocess.Popen([ZEROBLK, "serve", "--listen", f"127.0.0.1:{port}", *flags, "vol"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=log_file)
            wait_for_port(port, server)
            uri = f"{scheme}://127.0.0.1:{port}/vol"
            client_env = {"HOME": str(home)}
            if not filled:
                subprocess.run(["nbdcopy", str(image), uri], env=dict(os.environ, **client_env), check=True)
                filled = True
            for profile in TLS_PROFILES:
                log(f"TLS against plaintext, pass {n + 1} of {TLS_PASSES}: {profile}, {mode}")
                # A short pass first: the restarted server's memory cache fills.
                run_fio(profile, "nbd", uri, args.size, 2, work, client_env)
                before = cpu_seconds(server.pid)
                result = run_fio(profile, "nbd", uri, args.size, args.runtime, work, client_env)
                if result is not None:
                    result["server_cpu_s"] = cpu_seconds(server.pid) - before
                    passes[(mode, profile)].append(result)
            server.send_signal(signal.SIGTERM)
            if server.wait(timeout=600) != 0:
                raise RuntimeError(f"zeroblk serve exited non-zero; see {server_log}")
    handshakes = [line for line in server_log.read_text().splitlines() if "TLS handshake done" in line]
    negotiated = handshakes[-1].split("TLS handshake done", 1)[1].strip() if handshakes else "unknown"
    runs = [median_run("host", f"zeroblk serve ({mode})", profile, "warm", results)
            for (mode, profile), results in passes.items() if results]
    return {"negotiated": negotiated, "runs": runs}


def tls_table(tls):
    """The TLS section as text: one line per profile and mode."""
    lines = [f"negotiated: {tls['negotiated']}"]
    for run in tls["runs"]:
        read = run["result"].get("read", {})
        lines.append(f"{run['profile']:<18} {run['target']:<26} {read.get('iops', 0):>10.0f} IOPS "
                     f"{read.get('bw_bytes', 0) / (1 << 20):>8.1f} MiB/s  p99 {read.get('p99_us', 0):>8.0f} us  "
                     f"server CPU {run['result'].get('server_cpu_s', 0):.1f} s  "
                     f"passes {[round(b / (1 << 20), 1) for b in run.get('passes_bw_bytes', [])]} MiB/s")
    return "\n".join(lines)


def vm_comparison(args, results):
    log("in the VM: ublk, kernel NBD, rublk and loop (Debian 6.12 under QEMU/TCG)")
    # The guest's /tmp, where the volumes live, is a tmpfs of half of it.
    env = dict(os.environ, ZEROBLK_VM_MEMORY="12G")
    rublk = shutil.which("rublk") or ""
    command = (f"ZEROBLK={ZEROBLK} RUBLK={rublk} FIO_SIZE={args.size} FIO_RUNTIME={args.runtime} "
               "scripts/compare-vm.sh")
    output = subprocess.run([str(ROOT / "scripts/vm-run.sh"), command], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    vm_log = Path("/var/tmp/zeroblk-compare-vm.log")
    vm_log.write_text(output.stdout + "\n--- stderr\n" + output.stderr)
    log(f"the VM's output is in {vm_log}")
    passes = {}
    found = False
    for line in output.stdout.splitlines():
        if line.startswith("RESULT "):
            found = True
            record = json.loads(line[len("RESULT "):])
            if "profile" in record:
                passes.setdefault((record["target"], record["profile"]), []).append(record["result"])
            else:
                results.setdefault("vm", {}).update(record)
    for (target, profile), results_of_target in passes.items():
        results["runs"].append(median_run("vm", target, profile, "warm", results_of_target))
    if not found:
        raise RuntimeError(f"the VM run produced no results:\n{output.stdout[-3000:]}\n{output.stderr[-3000:]}")


def encryption_comparison(args, work, results):
    """An encrypted zeroblk volume against the same in the clear (warm,
    interleaved passes), and its cold reads against s3backer's: the cost of
    encryption at rest, without the rest of the comparison."""
    moto = Moto()
    volume_size = "2G"
    image = Path(work) / "fill.img"
    half_compressible(image, parse_size(args.size))
    clear = Zeroblk(work, moto.endpoint, moto.bucket(), volume_size)
    encrypted = Zeroblk(work, moto.endpoint, moto.bucket(), volume_size, name=ZEROBLK_ENCRYPTED, password=PASSWORD)
    s3backer = S3backer(work, moto, volume_size)
    peers = [clear, encrypted, s3backer]
    log("filling every target with the same bytes")
    for peer in peers:
        if peer.needs_fill:
            fill(peer.uri(), image)
    for profile in ["randread-4k-qd32", "seqread-1m"]:
        warm_runs(results, profile, [clear, encrypted], args, work)
    cold_reads(results, moto, peers, args.size, work)
    moto.stop()


def encryption_table(results):
    value = {(r["target"], r["profile"], r["cache"]): bytes_per_second(r["result"]) for r in results["runs"]}
    rows = ["| measure | ratio |", "| --- | --- |"]
    for profile in ["randread-4k-qd32", "seqread-1m"]:
        a, b = value.get((ZEROBLK_ENCRYPTED, profile, "warm")), value.get(("zeroblk", profile, "warm"))
        rows.append(f"| {profile}, warm, encrypted / clear | {a / b:.2f}x |" if a and b else f"| {profile} | missing |")
    for profile in ["seqread-1m", "randread-4k-qd32"]:
        a = value.get((ZEROBLK_ENCRYPTED, profile, "cold"))
        b = value.get(("s3backer (FUSE, via nbdkit)", profile, "cold"))
        rows.append(f"| {profile}, cold, encrypted / s3backer over nbdkit | {a / b:.2f}x |" if a and b else f"| {profile} cold | missing |")
    a = value.get((ZEROBLK_ENCRYPTED, "seqread-1m", "cold"))
    b = value.get(("s3backer (FUSE file, read directly)", "seqread-1m", "cold"))
    if a and b:
        rows.append(f"| seqread-1m, cold, encrypted / s3backer's file read directly | {a / b:.2f}x |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", type=int, default=10)
    parser.add_argument("--size", default="256M")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks"))
    parser.add_argument("--skip-vm", action="store_true")
    parser.add_argument("--tls-only", action="store_true",
                        help="only TLS against plaintext on zeroblk serve (a few minutes): tls.json in --out")
    parser.add_argument("--encryption-only", action="store_true",
                        help="only an encrypted volume against one in the clear and s3backer (about 10 minutes): encryption.json in --out")
    parser.add_argument("--s3", choices=["moto", "garage"], default="moto",
                        help="the S3 server every S3 peer shares (ZeroFS refuses Garage, which cannot fence)")
    args = parser.parse_args()
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
        "command": " ".join(["scripts/compare.sh", *sys.argv[1:]]),
        "runtime_s": args.runtime, "size": args.size, "runs": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tls_only:
        with tempfile.TemporaryDirectory(prefix="zeroblk-compare.", dir="/var/tmp") as work:
            results["tls"] = tls_comparison(args, work)
        del results["runs"]
        (out / "tls.json").write_text(json.dumps(results, indent=2) + "\n")
        print(tls_table(results["tls"]))
        return
    if args.encryption_only:
        with tempfile.TemporaryDirectory(prefix="zeroblk-compare.", dir="/var/tmp") as work:
            encryption_comparison(args, work, results)
        (out / "encryption.json").write_text(json.dumps(results, indent=2) + "\n")
        print(encryption_table(results))
        return
    with tempfile.TemporaryDirectory(prefix="zeroblk-compare.", dir="/var/tmp") as work:
        host_comparison(args, work, results)
        results["tls"] = tls_comparison(args, work)
        log("TLS against plaintext:\n" + tls_table(results["tls"]))
    # Kept as soon as it is known: a failure in the VM keeps the host half.
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.skip_vm:
        vm_comparison(args, results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    subprocess.run(["/usr/bin/python3", str(ROOT / "scripts/compare_report.py"), str(out)], check=True)
    log(f"results in {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "summarize":
        print(json.dumps(summarize(json.loads(Path(sys.argv[2]).read_text()))))
    else:
        main()
