//! Results: timed series, memory figures and "not measured" rows, the one table of
//! medians with min/max and podrun/peer ratios, and the JSON file kept for comparison.

use serde::Serialize;

/// One measured quantity of one system in one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub workload: String,
    pub metric: String,
    pub system: String,
    pub unit: String,
    pub samples: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Series {
    pub fn new(workload: &str, metric: &str, system: &str, unit: &str) -> Self {
        Series {
            workload: workload.into(),
            metric: metric.into(),
            system: system.into(),
            unit: unit.into(),
            samples: Vec::new(),
            note: None,
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

/// A workload or system that was not measured, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub workload: String,
    pub system: String,
    pub reason: String,
}

/// podrun's median over a peer's for the same workload and metric.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub workload: String,
    pub metric: String,
    pub peer: String,
    pub ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal_met: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub busy: bool,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub mode: String,
    pub conditions: Vec<String>,
    pub versions: Vec<(String, String)>,
    pub series: Vec<Series>,
    pub skipped: Vec<Skipped>,
    pub ratios: Vec<Ratio>,
    pub goals: Vec<Goal>,
}

/// One of the goals, checked against a measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// The ratio goal of a workload against a peer, if the issue sets one.
fn ratio_goal(workload: &str, metric: &str, peer: &str) -> Option<f64> {
    match (workload, metric, peer) {
        ("lifecycle", "run /bin/true", "crun") => Some(0.6),
        ("pod-start", "up", "podman") => Some(0.2),
        ("cri", "pod start (run+create+start)", "containerd") => Some(0.5),
        _ => None,
    }
}

impl Report {
    pub fn find(&self, workload: &str, metric: &str, system: &str) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.workload == workload && s.metric == metric && s.system == system)
    }

    /// Ratios of podrun to every peer measured on the same workload and metric.
    pub fn compute_ratios(&mut self) {
        let mut ratios = Vec::new();
        for s in self.series.iter().filter(|s| s.system != "podrun") {
            let Some(p) = self.find(&s.workload, &s.metric, "podrun") else {
                continue;
            };
            let (Some(pm), Some(sm)) = (p.median(), s.median()) else {
                continue;
            };
            if sm == 0.0 {
                continue;
            }
            let ratio = pm / sm;
            let goal = ratio_goal(&s.workload, &s.metric, &s.system);
            ratios.push(Ratio {
                workload: s.workload.clone(),
                metric: s.metric.clone(),
                peer: s.system.clone(),
                ratio,
                goal: goal.map(|g| format!("<= {g}x")),
                goal_met: goal.map(|g| ratio <= g),
            });
        }
        self.ratios = ratios;
    }

    pub fn ratio(&self, workload: &str, metric: &str, peer: &str) -> Option<&Ratio> {
        self.ratios
            .iter()
            .find(|r| r.workload == workload && r.metric == metric && r.peer == peer)
    }

    /// The plain-text table: one line per series, then what was not measured, then goals.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "podrun bench, {} ({}), {}\nmachine busy: {} (loadavg at start: {}; at end: {})\n",
            self.date,
            self.mode,
            self.machine,
            if self.busy { "yes" } else { "no" },
            self.loadavg_start,
            self.loadavg_end
        ));
        for c in &self.conditions {
            out.push_str(&format!("- {c}\n"));
        }
        out.push('\n');
        let header = [
            "workload",
            "metric",
            "system",
            "median",
            "min",
            "max",
            "unit",
            "n",
            "podrun/peer",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for s in &self.series {
            let ratio = if s.system == "podrun" {
                String::new()
            } else {
                match self.ratio(&s.workload, &s.metric, &s.system) {
                    Some(r) => match &r.goal {
                        Some(g) => format!(
                            "{:.2}x (goal {g}: {})",
                            r.ratio,
                            if r.goal_met == Some(true) {
                                "met"
                            } else {
                                "not met"
                            }
                        ),
                        None => format!("{:.2}x", r.ratio),
                    },
                    None => "-".into(),
                }
            };
            rows.push(vec![
                s.workload.clone(),
                s.metric.clone(),
                s.system.clone(),
                fmt(s.median()),
                fmt(s.min()),
                fmt(s.max()),
                s.unit.clone(),
                s.samples.len().to_string(),
                ratio,
            ]);
        }
        out.push_str(&markdown(&rows));
        if !self.skipped.is_empty() {
            out.push_str("\nnot measured:\n");
            for s in &self.skipped {
                out.push_str(&format!("- {} / {}: {}\n", s.workload, s.system, s.reason));
            }
        }
        if !self.goals.is_empty() {
            out.push_str("\ngoals (issue 6):\n");
            for g in &self.goals {
                let verdict = match g.met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "not measured",
                };
                out.push_str(&format!("- {}: {} -> {}\n", g.goal, g.measured, verdict));
            }
        }
        let notes: Vec<_> = self
            .series
            .iter()
            .filter_map(|s| {
                s.note
                    .as_ref()
                    .map(|n| format!("- {} {} {}: {n}\n", s.workload, s.metric, s.system))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            for n in notes {
                out.push_str(&n);
            }
        }
        out
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// A markdown table with padded columns, readable both raw and rendered.
fn markdown(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &Vec<String>| {
        let cells: Vec<String> = (0..cols)
            .map(|c| {
                let s = r.get(c).cloned().unwrap_or_default();
                format!("{s:<w$}", w = width[c])
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&line(r));
        if i == 0 {
            let dashes: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", dashes.join("-|-")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let mut s = Series::new("w", "m", "podrun", "ms");
        s.samples = vec![3.0, 1.0, 2.0, 10.0];
        assert_eq!(s.median(), Some(2.5));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(10.0));
    }

    #[test]
    fn ratios_against_goals() {
        let mut r = Report::default();
        let mut a = Series::new("lifecycle", "run /bin/true", "podrun", "ms");
        a.samples = vec![5.0];
        let mut b = Series::new("lifecycle", "run /bin/true", "crun", "ms");
        b.samples = vec![10.0];
        r.series = vec![a, b];
        r.compute_ratios();
        let ratio = r.ratio("lifecycle", "run /bin/true", "crun").unwrap();
        assert_eq!(ratio.ratio, 0.5);
        assert_eq!(ratio.goal_met, Some(true));
        assert!(r.table().contains("0.50x (goal <= 0.6x: met)"));
    }
}
