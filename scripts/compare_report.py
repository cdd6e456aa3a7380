#!/usr/bin/python3
"""Turns results.json of scripts/compare.py into README.md (ratio tables and
the targets of issue 7, met or not) and PNG plots, in the same directory.
A hand-written notes.md there (what is short, and why) is appended.

    scripts/compare_report.py docs/benchmarks
"""
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ZEROBLK_HOST = "zeroblk"
ZEROBLK_ENCRYPTED = "zeroblk (encrypted)"
RUBLK = "rublk loop (file)"


def main_metric(profile, result):
    """(value, unit) the profile is about: IOPS, MiB/s or latency."""
    if profile.startswith("seq"):
        part = result.get("read") or result.get("write")
        return part["bw_bytes"] / (1 << 20), "MiB/s"
    if profile == "fdatasync-4k":
        return result["write"]["iops"], "IOPS"
    iops = sum(result.get(d, {}).get("iops", 0) for d in ("read", "write"))
    return iops, "IOPS"


def p99(result):
    part = result.get("read") or result.get("write")
    return part.get("p99_us", 0)


def table(runs, where, ours, cache="warm"):
    chosen = [r for r in runs if r["where"] == where and r["cache"] == cache]
    profiles = list(dict.fromkeys(r["profile"] for r in chosen))
    targets = list(dict.fromkeys(r["target"] for r in chosen))
    value = {(r["target"], r["profile"]): main_metric(r["profile"], r["result"]) for r in chosen}
    passes = {(r["target"], r["profile"]): r.get("passes_bw_bytes", []) for r in chosen}
    lines = ["| profile | " + " | ".join(targets) + " | " + " | ".join(f"{ours} / {t}" for t in targets if t != ours) + " |",
             "|---|" + "---:|" * (2 * len(targets) - 1)]
    for profile in profiles:
        cells = []
        for target in targets:
            v, unit = value.get((target, profile), (0, ""))
            cells.append(f"{v:,.0f} {unit}")
        ours_v = value.get((ours, profile), (0, ""))[0]
        ratios = [f"{ours_v / value[(t, profile)][0]:.2f}x{spread(passes, ours, t, profile)}"
                  if value.get((t, profile), (0,))[0] else "-"
                  for t in targets if t != ours]
        lines.append(f"| {profile} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines), value


def spread(passes, ours, target, profile):
    """The range of the ratio pass by pass (passes ran interleaved, so
    pass i of one target ran beside pass i of the other), or nothing for
    a single pass."""
    a, b = passes.get((ours, profile), []), passes.get((target, profile), [])
    if len(a) < 2 or len(a) != len(b) or not all(b):
        return ""
    ratios = [x / y for x, y in zip(a, b)]
    return f" ({min(ratios):.2f}-{max(ratios):.2f})"


def ratio(value, a, b, profile):
    va, vb = value.get((a, profile), (0,))[0], value.get((b, profile), (0,))[0]
    return va / vb if vb else float("nan")


def plot(runs, where, path, title):
    chosen = [r for r in runs if r["where"] == where and r["cache"] == "warm"]
    profiles = list(dict.fromkeys(r["profile"] for r in chosen))
    targets = list(dict.fromkeys(r["target"] for r in chosen))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / max(1, len(targets))
    for i, target in enumerate(targets):
        metric = [next((main_metric(p, r["result"])[0] for r in chosen if r["target"] == target and r["profile"] == p), 0)
                  for p in profiles]
        latency = [next((p99(r["result"]) for r in chosen if r["target"] == target and r["profile"] == p), 0)
                   for p in profiles]
        xs = [x + i * width for x in range(len(profiles))]
        axes[0].bar(xs, metric, width, label=target)
        axes[1].bar(xs, latency, width, label=target)
    for axis, label in zip(axes, ("IOPS, or MiB/s for seq*", "p99 latency (us)")):
        axis.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(profiles))])
        axis.set_xticklabels(profiles, rotation=30, ha="right")
        axis.set_ylabel(label)
        axis.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(out):
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    host_table, host = table(runs, "host", ZEROBLK_HOST)
    cold_table, cold = table(runs, "host", ZEROBLK_HOST, cache="cold")
    beyond_table, beyond = table(runs, "host", ZEROBLK_HOST, cache="beyond-memory")
    beyond_setup = results.get("beyond_memory", {})
    vm_table, vm = table(runs, "vm", "zeroblk ublk")
    plot(runs, "host", out / "host.png", "Over NBD on the host (fio nbd engine), warm")
    if vm:
        plot(runs, "vm", out / "vm.png", "Block devices in the VM (Debian 6.12 under QEMU/TCG), warm")
    wa = results.get("write_amplification", {})
    rss = results.get("peak_rss_bytes", {})
    vm_extra = results.get("vm", {})
    nbdkit = "nbdkit file (raw file)"
    targets = [
        ("4K random read QD32 vs nbdkit file (warm)", ratio(host, ZEROBLK_HOST, nbdkit, "randread-4k-qd32"), ">= 1.3"),
        ("encrypted vs in the clear, 4K random read QD32 (warm)",
         ratio(host, ZEROBLK_ENCRYPTED, ZEROBLK_HOST, "randread-4k-qd32"), ">= 0.9"),
        ("encrypted vs in the clear, 1M sequential read (warm)",
         ratio(host, ZEROBLK_ENCRYPTED, ZEROBLK_HOST, "seqread-1m"), ">= 0.9"),
        ("1M sequential read vs nbdkit file (warm)", ratio(host, ZEROBLK_HOST, nbdkit, "seqread-1m"), ">= 1.2"),
        ("4K random write QD32 vs nbdkit file", ratio(host, ZEROBLK_HOST, nbdkit, "randwrite-4k-qd32"), ">= 0.8"),
        ("1M sequential write vs nbdkit file", ratio(host, ZEROBLK_HOST, nbdkit, "seqwrite-1m"), ">= 0.8"),
        ("fdatasync-4k vs nbdkit file", ratio(host, ZEROBLK_HOST, nbdkit, "fdatasync-4k"), ">= 1.0"),
        ("beyond memory: 4K random read QD32 vs nbdkit file", ratio(beyond, ZEROBLK_HOST, nbdkit, "randread-4k-qd32"), ">= 0.7"),
        ("beyond memory: 1M sequential read vs nbdkit file", ratio(beyond, ZEROBLK_HOST, nbdkit, "seqread-1m"), ">= 0.8"),
        ("cold 1M sequential read vs s3backer's FUSE file read directly (cold)",
         ratio(cold, ZEROBLK_HOST, "s3backer (FUSE file, read directly)", "seqread-1m"), ">= 3.0"),
        ("encrypted, cold 1M sequential read vs s3backer",
         ratio(cold, ZEROBLK_ENCRYPTED, "s3backer (FUSE file, read directly)", "seqread-1m"), ">= 3.0"),
        ("ublk vs zeroblk kernel NBD, 4K random read QD32", ratio(vm, "zeroblk ublk", "zeroblk kernel NBD", "randread-4k-qd32"), ">= 1.5"),
        ("ublk vs kernel loop, 4K random read QD32", ratio(vm, "zeroblk ublk", "kernel loop (file)", "randread-4k-qd32"), ">= 0.5"),
        ("ublk vs rublk loop, 4K random read QD32", ratio(vm, "zeroblk ublk", RUBLK, "randread-4k-qd32"), ">= 0.8"),
        ("ublk vs rublk loop, 1M sequential read", ratio(vm, "zeroblk ublk", RUBLK, "seqread-1m"), ">= 0.8"),
        ("ublk vs rublk loop, 1M sequential write", ratio(vm, "zeroblk ublk", RUBLK, "seqwrite-1m"), ">= 0.8"),
        ("ublk vs kernel loop, 1M sequential read", ratio(vm, "zeroblk ublk", "kernel loop (file)", "seqread-1m"), ">= 0.5"),
        ("bytes uploaded per byte written (sequential, no compression)", wa.get("uploaded_per_written", float("nan")), "<= 1.05"),
        ("store requests per chunk written", wa.get("requests_per_chunk", float("nan")), "<= 1.0"),
        ("peak RSS / (memory cache + 128 MiB)", rss.get("zeroblk serve", 0) / ((rss.get("memory_cache_bytes", 1) + (128 << 20))), "<= 1.0"),
        ("2 TiB whole-device discard over NBD (s)", results.get("discard_2t_seconds", float("nan")), "< 1"),
        ("2 TiB blkdiscard on ublk in the VM (s)", vm_extra.get("blkdiscard_2t_seconds", float("nan")), "< 1"),
        ("mkfs.btrfs on 2 TiB ublk in the VM (s)", vm_extra.get("mkfs_btrfs_2t_seconds", float("nan")), "< 10"),
    ]

    def met(value, goal):
        op, bound = goal.split()
        bound = float(bound)
        return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]

    lines = [
        "# zeroblk against its peers",
        "",
        f"One run of `{results['command']}` on {results['date']}: {results['machine']['cores']} cores, "
        f"kernel {results['machine']['kernel']} (host), fio profiles of `fio-profiles/` with "
        f"FIO_SIZE={results['size']} and {results['runtime_s']} s each, interleaved (each profile against "
        "every target in turn). These machines are shared and noisy: read ratios, not absolute numbers. "
        "Raw numbers: [results.json](results.json).",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---:|---|---|",
    ]
    for name, value, goal in targets:
        if math.isnan(value):
            lines.append(f"| {name} | not run | {goal} | |")
            continue
        lines.append(f"| {name} | {value:.2f} | {goal} | {'yes' if met(value, goal) else '**no**'} |")
    server = {"Garage": "Garage, one node, data in memory", "moto": "moto"}.get(
        results.get("s3_server", "moto"), results.get("s3_server"))
    lines += [
        "",
        "## Over NBD on the host, warm",
        "",
        f"zeroblk serves from a real S3 server ({server}) with its memory and disk caches warm; nbdkit and qemu-nbd "
        "serve a raw file in the page cache; s3backer uses the same S3 server, with its block size set to "
        "zeroblk's chunk size (1 MiB); "
        + ("ZeroFS 0.19.1 (crates.io) uses the same S3 server too, through its NBD server. "
           if any(r["target"].startswith("ZeroFS") for r in runs) else
           "ZeroFS is left out: it refuses an S3 server that ignores conditional writes. ")
        + "Every target was filled with the same bytes first. The profiles with a target (4K random read "
        "and write at QD32, 1M sequential read and write) ran three passes per peer, interleaved; the table "
        "shows each peer's median pass, each ratio of medians with the range of the ratio pass by pass in "
        "brackets, and results.json every pass.",
        "",
        host_table,
        "",
        "![host](host.png)",
        "",
        "## Beyond memory (working set 4x the memory cache, on the disk cache)",
        "",
        f"{beyond_setup.get('size', '?')} of data in a zeroblk volume served with "
        f"`--memory-cache {beyond_setup.get('memory_cache', '?')}`: written, committed, then read once after "
        "a restart, so every chunk is in the disk cache and at most a quarter of them fit in memory. "
        "nbdkit's file plugin serves a copy of the same bytes from the page cache. fio's working set is "
        "all of the data. Three passes per peer, interleaved; the table shows the median pass.",
        "",
        beyond_table if beyond else "(not run)",
        "",
        "## Cold reads (caches dropped)",
        "",
        "zeroblk and ZeroFS with their cache dirs wiped and restarted; s3backer remounted; the page cache "
        "dropped. A pass reads the working set once, each block once, from the S3 server, with only the "
        "peer measured running. Three passes per peer, interleaved; the table shows the median pass. "
        "s3backer's sequential read is measured twice: through nbdkit like the others, and the way its "
        "users read it, its FUSE file 1 MiB at a time through the page cache (`dd bs=1M`).",
        "",
        cold_table,
        "",
        "## Block devices in the VM",
        "",
        "Debian's 6.12 kernel under QEMU with TCG (no KVM here), so absolute numbers are low; the ratios "
        "between transports are what matters. zeroblk's two volumes live in the guest's memory (tmpfs), "
        "with their data in the memory cache; rublk 0.2.15's loop target (crates.io, the reference ublk "
        "daemon) and the kernel loop device serve files on that tmpfs with buffered I/O. 4K random read at "
        "QD32 and 1M sequential read and write, the profiles with targets here, ran three passes per "
        "target, interleaved; the table shows each target's median pass.",
        "",
        vm_table if vm else "(not run)",
        "",
        "![vm](vm.png)" if vm else "",
        "",
        "## Write amplification and memory",
        "",
        f"A sequential write of {wa.get('bytes_written', 0) >> 20} MiB (chunk compression off): "
        f"{wa.get('bytes_uploaded', 0) >> 20} MiB uploaded in {wa.get('put_requests', 0)} PUTs for "
        f"{wa.get('chunks_written', 0)} chunks, {wa.get('requests_per_gib_written', 0):,.0f} store requests "
        f"per GiB written (every kind, lease renewals included). Read back once with the cache dir wiped: "
        f"{wa.get('bytes_downloaded', 0) >> 20} MiB downloaded in {wa.get('get_requests', 0)} GETs, "
        f"{wa.get('requests_per_gib_read', 0):,.0f} store requests per GiB read. Peak RSS of zeroblk serve over "
        f"all host profiles: {rss.get('zeroblk serve', 0) >> 20} MiB, with a "
        f"{rss.get('memory_cache_bytes', 0) >> 20} MiB memory cache.",
        "",
        "## Reproduce",
        "",
        "```sh",
        "scripts/compare.sh            # installs the peers, then writes this directory",
        "```",
        "",
    ]
    notes = out / "notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
