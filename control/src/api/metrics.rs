//! Prometheus metrics at /metrics: request counts and latencies by verb, resource and
//! code, under kube-apiserver's metric names, and the number of open watches.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, in seconds (a subset of kube-apiserver's).
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; 11],
}

/// verb, group, resource, subresource.
type Key = (String, String, String, String);

#[derive(Default)]
pub struct Metrics {
    /// (verb, group, resource, subresource) → latencies; (… , code) → counts.
    durations: Mutex<BTreeMap<Key, Series>>,
    totals: Mutex<BTreeMap<(Key, u16), u64>>,
    pub watches: AtomicI64,
}

impl Metrics {
    pub fn observe(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        code: u16,
        took: Duration,
    ) {
        let key = (
            verb.to_string(),
            group.to_string(),
            resource.to_string(),
            subresource.to_string(),
        );
        {
            let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
            *totals.entry((key.clone(), code)).or_default() += 1;
        }
        // Watches last as long as the client wants; kube-apiserver leaves them out of
        // the latency histogram too.
        if verb == "WATCH" {
            return;
        }
        let secs = took.as_secs_f64();
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let s = d.entry(key).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, resource, subresource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for (((verb, group, resource, sub), code), n) in
            self.totals.lock().unwrap_or_else(|e| e.into_inner()).iter()
        {
            let _ = writeln!(
                out,
                "apiserver_request_total{{code=\"{code}\",group=\"{group}\",resource=\"{resource}\",subresource=\"{sub}\",verb=\"{verb}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, resource and subresource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, group, resource, sub), s) in self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let labels = format!(
                "group=\"{group}\",resource=\"{resource}\",subresource=\"{sub}\",verb=\"{verb}\""
            );
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests.\n");
        out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
        let _ = writeln!(
            out,
            "apiserver_longrunning_requests{{verb=\"WATCH\"}} {}",
            self.watches.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        m.observe("GET", "", "pods", "", 200, Duration::from_millis(3));
        m.observe("GET", "", "pods", "", 200, Duration::from_millis(30));
        m.observe(
            "LIST",
            "apps",
            "deployments",
            "",
            200,
            Duration::from_millis(300),
        );
        let text = m.render();
        assert!(text.contains("apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",subresource=\"\",verb=\"GET\"} 2"), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_bucket{group=\"\",resource=\"pods\",subresource=\"\",verb=\"GET\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_bucket{group=\"\",resource=\"pods\",subresource=\"\",verb=\"GET\",le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_count{group=\"apps\",resource=\"deployments\",subresource=\"\",verb=\"LIST\"} 1"), "{text}");
    }
}
