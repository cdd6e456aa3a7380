"""Reads zeroblk's metrics endpoint with Prometheus's own parser.

Usage: metrics.py URL

Fails (exit 1, saying why) unless the exposition parses, every family has
a HELP and a known TYPE, and each histogram's buckets rise to its count.
Prints every sample as JSON: {"name{label=value,...}": value}.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main(url):
    with urllib.request.urlopen(url, timeout=30) as reply:
        content_type = reply.headers.get("Content-Type", "")
        text = reply.read().decode("utf-8")
    if not content_type.startswith("text/plain; version=0.0.4"):
        sys.exit(f"Content-Type is {content_type!r}, not Prometheus's text format")
    samples = {}
    for family in text_string_to_metric_families(text):
        if not family.documentation:
            sys.exit(f"{family.name} has no HELP")
        if family.type not in ("counter", "gauge", "histogram"):
            sys.exit(f"{family.name} has type {family.type}")
        if not family.name.startswith("zeroblk_"):
            sys.exit(f"{family.name} lacks the zeroblk_ prefix")
        check_histograms(family)
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    print(json.dumps(samples, sort_keys=True))


def check_histograms(family):
    if family.type != "histogram":
        return
    series = {}
    for sample in family.samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        entry = series.setdefault(key, {"buckets": [], "count": None})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
    for key, entry in series.items():
        counts = [n for _, n in sorted(entry["buckets"])]
        if counts != sorted(counts):
            sys.exit(f"{family.name}{dict(key)}: buckets fall: {counts}")
        if not counts or counts[-1] != entry["count"]:
            sys.exit(f"{family.name}{dict(key)}: +Inf bucket {counts[-1:]} is not the count {entry['count']}")


if __name__ == "__main__":
    main(sys.argv[1])
