//! Reading the Prometheus text that the proxies and the control plane serve: one sample's value
//! by metric name and label set, so tests assert on counts rather than on substrings.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::mesh::Mesh;
use crate::wait;

/// Where a metric is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Node `k`'s proxy (127.0.0.1:15020 in the node namespace).
    Proxy(usize),
    /// The control plane (127.0.0.1:15014 in the control namespace).
    Control,
}

/// One sample of a mesh's metrics: where it is served, its name and its exact labels.
#[derive(Clone, Debug)]
pub struct Counter {
    /// Who serves it.
    pub source: Source,
    /// Full metric name, prefix included.
    pub name: String,
    /// Every label of the sample.
    pub labels: Vec<(String, String)>,
}

impl Counter {
    /// The sample `name{labels}` served by `source`.
    pub fn new(source: Source, name: &str, labels: &[(&str, &str)]) -> Counter {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Counter {
            source,
            name: name.to_owned(),
            labels: labels.collect(),
        }
    }

    /// The whole Prometheus text of the sample's source.
    pub fn text(&self, mesh: &Mesh) -> Result<String> {
        match self.source {
            Source::Proxy(k) => mesh.metrics(k),
            Source::Control => mesh.control_metrics(),
        }
    }

    /// The value now (0 if never counted).
    pub fn read(&self, mesh: &Mesh) -> Result<f64> {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        value(&self.text(mesh)?, &self.name, &labels)
    }

    /// Waits until the value reaches `target`, at most `timeout`; gives the value reached. On
    /// timeout the error carries the source's whole metrics text.
    pub fn wait_at_least(&self, mesh: &Mesh, target: f64, timeout: Duration) -> Result<f64> {
        let what = format!("{} to reach {target}", self.describe());
        let reached = wait::until(&what, timeout, || {
            let value = self.read(mesh)?;
            Ok((value >= target).then_some(value))
        });
        reached.map_err(|e| {
            let text = self.text(mesh).unwrap_or_else(|e| format!("({e:#})"));
            anyhow!("{e:#}\n----- metrics of {:?} -----\n{text}", self.source)
        })
    }

    /// Checks that the value went from `before` up by exactly `by` (waiting at most `timeout`
    /// for it, since a peer may see a refusal just before it is counted).
    pub fn expect_increase(
        &self,
        mesh: &Mesh,
        before: f64,
        by: f64,
        timeout: Duration,
    ) -> Result<()> {
        let value = self.wait_at_least(mesh, before + by, timeout)?;
        ensure!(
            value == before + by,
            "{} went from {before} to {value}, expected +{by}",
            self.describe()
        );
        Ok(())
    }

    /// `name{k="v",...}` as Prometheus writes it.
    pub fn describe(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// The value of the sample `name` whose labels are exactly `labels` (in any order), or 0 when
/// there is no such sample: a labelled counter that never counted is simply not exposed.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).with_context(|| format!("metrics line {line:?}"))?;
        if sample.name == name && same_labels(&sample.labels, labels) {
            return Ok(sample.value);
        }
    }
    Ok(0.0)
}

/// One parsed sample line.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn same_labels(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // A sample may carry a timestamp after the value; the value is the first field.
    let Some(value) = rest.split_whitespace().next() else {
        bail!("no value");
    };
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `key="value",...}` and gives the labels and what follows the closing brace.
fn parse_labels(mut body: &str) -> Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        body = body.trim_start_matches([',', ' ']);
        if let Some(after) = body.strip_prefix('}') {
            return Ok((labels, after));
        }
        let Some((key, after_key)) = body.split_once("=\"") else {
            bail!("label without a quoted value at {body:?}");
        };
        let (value, after_value) = parse_quoted(after_key)?;
        labels.push((key.trim().to_owned(), value));
        body = after_value;
    }
}

/// Reads an escaped label value up to its closing quote; gives it and the text after the quote.
fn parse_quoted(text: &str) -> Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    bail!("unterminated label value {text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP edgeward_tls_handshake_failures_total Failed TLS handshakes
# TYPE edgeward_tls_handshake_failures_total counter
edgeward_tls_handshake_failures_total{direction=\"inbound\",reason=\"not_tls\"} 2
edgeward_tls_handshake_failures_total{direction=\"outbound\",reason=\"not_tls\"} 5
edgeward_snapshot_version 7
odd{path=\"a\\\"b,c}\",x=\"1\"} 3 1700000000
";

    #[test]
    fn finds_a_sample_by_name_and_labels_in_any_order() {
        let inbound = [("reason", "not_tls"), ("direction", "inbound")];
        let name = "edgeward_tls_handshake_failures_total";
        assert_eq!(value(TEXT, name, &inbound).unwrap(), 2.0);
        let outbound = [("direction", "outbound"), ("reason", "not_tls")];
        assert_eq!(value(TEXT, name, &outbound).unwrap(), 5.0);
        assert_eq!(value(TEXT, "edgeward_snapshot_version", &[]).unwrap(), 7.0);
    }

    #[test]
    fn absent_samples_read_as_zero_and_partial_label_sets_do_not_match() {
        let name = "edgeward_tls_handshake_failures_total";
        assert_eq!(value(TEXT, name, &[("direction", "inbound")]).unwrap(), 0.0);
        let other = [("direction", "inbound"), ("reason", "expired")];
        assert_eq!(value(TEXT, name, &other).unwrap(), 0.0);
        assert_eq!(value(TEXT, "edgeward_snapshot", &[]).unwrap(), 0.0);
    }

    #[test]
    fn counters_describe_themselves_as_prometheus_does() {
        let counter = Counter::new(Source::Control, "x_total", &[("call", "Join"), ("r", "a")]);
        assert_eq!(counter.describe(), "x_total{call=\"Join\",r=\"a\"}");
    }

    #[test]
    fn reads_escaped_label_values_and_ignores_timestamps() {
        let labels = [("path", "a\"b,c}"), ("x", "1")];
        assert_eq!(value(TEXT, "odd", &labels).unwrap(), 3.0);
        assert!(value("broken{a=\"1} 2", "broken", &[]).is_err());
    }
}
