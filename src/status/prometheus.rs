//! A daemon's status in Prometheus's text format (version 0.0.4), encoded
//! by the `prometheus-client` crate from one [`DaemonStatus`] snapshot.
//!
//! Names follow Prometheus's conventions: a `zeroblk_` prefix, base units
//! (`_bytes`, `_seconds`), `_total` on counters, histograms of seconds.
//! The store's figures are the daemon's (its volumes share one store); a
//! volume's carry a `volume` label.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::DaemonStatus;
use crate::engine::VolumeStatus;
use crate::histogram::Latencies;

/// A sample with no labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `status` as a Prometheus scrape's body.
pub fn encode(status: &DaemonStatus) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

#[derive(Debug)]
struct Snapshot(DaemonStatus);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut out = Families(&mut encoder);
        store_families(&mut out, &self.0)?;
        transport_families(&mut out, &self.0)?;
        volume_families(&mut out, &self.0.volumes)
    }
}

fn store_families(out: &mut Families<'_, '_>, status: &DaemonStatus) -> fmt::Result {
    let kinds = &status.store_requests;
    let op = |kind: &crate::store::KindCounters| [("op", kind.kind.name())];
    out.counter(
        "zeroblk_store_requests",
        "Requests made to the object store, each attempt counted.",
        kinds.iter().map(|k| (op(k), k.requests)),
    )?;
    out.counter(
        "zeroblk_store_errors",
        "Store requests that failed (not found and already exists are answers, not failures).",
        kinds.iter().map(|k| (op(k), k.errors)),
    )?;
    out.histogram(
        "zeroblk_store_request_duration_seconds",
        "How long the store took to answer (a GET: to its body's first byte).",
        kinds.iter().map(|k| (op(k), &k.latency)),
    )?;
    out.counter(
        "zeroblk_store_retries",
        "Store requests tried again after a failure that may pass.",
        [([("store", status.store.as_str())], status.store_retries)],
    )?;
    out.counter(
        "zeroblk_store_read_bytes",
        "Bytes of object bodies read from the store.",
        [([("store", status.store.as_str())], status.store_bytes_read)],
    )?;
    out.counter(
        "zeroblk_store_written_bytes",
        "Bytes sent to the store.",
        [(
            [("store", status.store.as_str())],
            status.store_bytes_written,
        )],
    )
}

fn transport_families(out: &mut Families<'_, '_>, status: &DaemonStatus) -> fmt::Result {
    if let Some(clients) = status.nbd_clients {
        out.gauge(
            "zeroblk_nbd_connections",
            "NBD connections open now, those still in their handshake included.",
            [(NO_LABELS, clients as f64)],
        )?;
    }
    if let (Some(queues), Some(depth)) = (status.ublk_queues, status.ublk_depth) {
        let device = [("device", status.device.as_deref().unwrap_or(""))];
        out.gauge(
            "zeroblk_ublk_queues",
            "Queues of the ublk device.",
            [(device, f64::from(queues))],
        )?;
        out.gauge(
            "zeroblk_ublk_queue_depth",
            "Requests each ublk queue takes at once.",
            [(device, f64::from(depth))],
        )?;
    }
    Ok(())
}

/// A metric's name and help, and how to read it off a volume.
type Figure<T> = (&'static str, &'static str, fn(&VolumeStatus) -> T);

fn volume_families(out: &mut Families<'_, '_>, volumes: &[VolumeStatus]) -> fmt::Result {
    let volume = |v: &VolumeStatus| [("volume", v.name.clone())];
    let gauges: [Figure<f64>; 7] = [
        ("zeroblk_volume_size_bytes", "The volume's size.", |v| {
            v.size as f64
        }),
        (
            "zeroblk_volume_dirty_bytes",
            "Data written and not yet committed to the store.",
            |v| v.dirty_bytes as f64,
        ),
        (
            "zeroblk_volume_log_bytes",
            "The write-back log's records not yet committed.",
            |v| v.log_bytes as f64,
        ),
        (
            "zeroblk_volume_oldest_uncommitted_seconds",
            "How long the oldest write not yet committed has waited (0: none waits).",
            |v| v.oldest_uncommitted_ms.unwrap_or(0) as f64 / 1e3,
        ),
        (
            "zeroblk_volume_allocated_bytes",
            "Bytes of the volume in chunks that hold data.",
            |v| v.allocated_bytes as f64,
        ),
        (
            "zeroblk_volume_stored_bytes",
            "What the volume's chunks take in the store, compressed.",
            |v| v.stored_bytes as f64,
        ),
        (
            "zeroblk_volume_generation",
            "The committed generation reads see.",
            |v| v.generation as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.gauge(name, help, volumes.iter().map(|v| (volume(v), value(v))))?;
    }
    let counters: [Figure<u64>; 4] = [
        ("zeroblk_volume_commits", "Commits to the store.", |v| {
            v.requests.commits
        }),
        ("zeroblk_volume_read_bytes", "Bytes read by clients.", |v| {
            v.requests.bytes_read
        }),
        (
            "zeroblk_volume_written_bytes",
            "Bytes written by clients.",
            |v| v.requests.bytes_written,
        ),
        (
            "zeroblk_volume_log_syncs",
            "fdatasyncs of the write-back log (concurrent flushes share one).",
            |v| v.requests.log_syncs,
        ),
    ];
    for (name, help, value) in counters {
        out.counter(name, help, volumes.iter().map(|v| (volume(v), value(v))))?;
    }
    out.counter(
        "zeroblk_volume_requests",
        "Client requests, by kind.",
        volumes.iter().flat_map(|v| {
            let r = v.requests;
            [
                ("read", r.reads),
                ("write", r.writes),
                ("flush", r.flushes),
                ("zero", r.zeroes),
            ]
            .map(|(op, n)| ([("volume", v.name.clone()), ("op", op.to_string())], n))
        }),
    )?;
    out.histogram(
        "zeroblk_volume_commit_duration_seconds",
        "How long commits took.",
        volumes.iter().map(|v| (volume(v), &v.commit_latency)),
    )?;
    let committed: Vec<_> = volumes
        .iter()
        .filter(|v| v.last_commit_at_ms.is_some())
        .collect();
    out.gauge(
        "zeroblk_volume_last_commit_timestamp_seconds",
        "When the last commit ended, in seconds since the Unix epoch.",
        committed
            .iter()
            .map(|v| (volume(v), v.last_commit_at_ms.unwrap_or(0) as f64 / 1e3)),
    )?;
    cache_families(out, volumes)?;
    lease_families(out, volumes)
}

fn cache_families(out: &mut Families<'_, '_>, volumes: &[VolumeStatus]) -> fmt::Result {
    let tiers = |v: &VolumeStatus, pick: fn(&crate::cache::CacheCounters) -> [u64; 2]| {
        let [memory, disk] = pick(&v.cache);
        [("memory", memory), ("disk", disk)]
            .map(|(tier, n)| ([("volume", v.name.clone()), ("tier", tier.to_string())], n))
    };
    out.counter(
        "zeroblk_cache_hits",
        "Chunk reads the cache answered, by tier.",
        volumes
            .iter()
            .flat_map(|v| tiers(v, |c| [c.memory_hits, c.disk_hits])),
    )?;
    out.counter(
        "zeroblk_cache_misses",
        "Chunk reads the cache could not answer, by tier.",
        volumes
            .iter()
            .flat_map(|v| tiers(v, |c| [c.memory_misses, c.disk_misses])),
    )?;
    out.gauge(
        "zeroblk_cache_bytes",
        "Bytes the cache holds, by tier.",
        volumes.iter().flat_map(|v| {
            tiers(v, |c| [c.memory_bytes, c.disk_bytes]).map(|(labels, n)| (labels, n as f64))
        }),
    )
}

fn lease_families(out: &mut Families<'_, '_>, volumes: &[VolumeStatus]) -> fmt::Result {
    let leased: Vec<_> = volumes
        .iter()
        .filter_map(|v| Some((v, v.lease.as_ref()?)))
        .collect();
    out.gauge(
        "zeroblk_volume_lease_info",
        "The writer's lease: its holder, as a label (always 1).",
        leased.iter().map(|(v, lease)| {
            (
                [("volume", v.name.clone()), ("holder", lease.holder.clone())],
                1.0,
            )
        }),
    )?;
    out.gauge(
        "zeroblk_volume_lease_age_seconds",
        "How long this daemon has held the volume's lease.",
        leased
            .iter()
            .map(|(v, lease)| ([("volume", v.name.clone())], lease.held_ms as f64 / 1e3)),
    )?;
    out.gauge(
        "zeroblk_volume_lease_renewed_seconds_ago",
        "How long ago the lease's last renewal that went through was sent.",
        leased.iter().map(|(v, lease)| {
            (
                [("volume", v.name.clone())],
                lease.renewed_ms_ago as f64 / 1e3,
            )
        }),
    )
}

/// Writes metric families: a descriptor, then one sample per label set.
struct Families<'e, 'w>(&'e mut DescriptorEncoder<'w>);

impl Families<'_, '_> {
    fn counter<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    fn gauge<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, f64)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    fn histogram<'l, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, &'l Latencies)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, latencies) in samples {
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    latencies.sum_seconds(),
                    latencies.count(),
                    &latencies.buckets(),
                    None,
                )?;
        }
        Ok(())
    }
}
