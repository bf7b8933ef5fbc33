//! The targets the bench's figures are held to (`bench --check`), from the
//! benchmark issues: pure, so the rule is tested apart from any run.

use super::Table;

/// A bound one row of the table must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The row's value is below this.
    Below(f64),
    /// The row's ratio to its ceiling is at least this.
    RatioAtLeast(f64),
}

/// A target: a row and its bound.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The row's key.
    pub key: &'static str,
    /// What is held, for people.
    pub what: &'static str,
    /// The bound.
    pub bound: Bound,
}

/// The targets (BENCHMARKS.md): enqueue → plugin start p99 under 5 ms at
/// half load; registrations and jobs each at least half their ceiling.
/// Registrations are counted as a bulk client sends them, over one
/// `SubmitStream` with 64 in flight: 64 unary callers spend as much CPU per
/// registration as the server does, on the same two cores.
pub const TARGETS: [Target; 3] = [
    Target {
        key: "start_p99",
        what: "enqueue → plugin start p99 at half load",
        bound: Bound::Below(5.0),
    },
    Target {
        key: "register_stream",
        what: "registrations (one SubmitStream, 64 in flight) ÷ strict verify on one core",
        bound: Bound::RatioAtLeast(0.5),
    },
    Target {
        key: "jobs",
        what: "jobs end to end ÷ bare gRPC ExecuteJob",
        bound: Bound::RatioAtLeast(0.5),
    },
];

/// Every target `table` misses, as a line for people (empty: all met). A
/// row the table lacks is a miss.
pub fn misses(table: &Table) -> Vec<String> {
    TARGETS
        .iter()
        .filter_map(|t| {
            let row = table.rows.iter().find(|r| r.key == t.key);
            let (got, met, want) = match (t.bound, row) {
                (_, None) => return Some(format!("{} ({}): not measured", t.what, t.key)),
                (Bound::Below(max), Some(r)) => (
                    format!("{:.3} {}", r.value, r.unit),
                    r.value < max,
                    format!("< {max} {}", r.unit),
                ),
                (Bound::RatioAtLeast(min), Some(r)) => {
                    let ratio = r.ratio.map_or(f64::NAN, |(_, x)| x);
                    (format!("{ratio:.3}×"), ratio >= min, format!("≥ {min}×"))
                }
            };
            (!met).then(|| format!("{} ({}): {got}, target {want}", t.what, t.key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(p99: f64, register: f64, jobs: f64) -> Table {
        let mut t = Table::default();
        t.add("verify_per_core", "verify", 100.0, "/s");
        t.add("bare_grpc", "bare", 100.0, "/s");
        t.add("start_p99", "p99", p99, "ms");
        t.add_ratio("register_stream", "reg", register, "/s", "verify_per_core");
        t.add_ratio("jobs", "jobs", jobs, "/s", "bare_grpc");
        t
    }

    #[test]
    fn every_target_met_is_no_miss() {
        assert!(misses(&table(4.9, 50.0, 60.0)).is_empty());
    }

    #[test]
    fn each_miss_names_the_figure_the_value_and_the_target() {
        let m = misses(&table(5.0, 49.0, 10.0));
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("start_p99") && m[0].contains("5.000 ms") && m[0].contains("< 5 ms"));
        assert!(m[1].contains("register_stream") && m[1].contains("0.490×"));
        assert!(m[2].contains("jobs") && m[2].contains("0.100×") && m[2].contains("≥ 0.5×"));
    }

    #[test]
    fn a_row_not_measured_is_a_miss() {
        let mut t = table(1.0, 60.0, 60.0);
        t.rows.retain(|r| r.key != "jobs");
        assert_eq!(
            misses(&t),
            vec!["jobs end to end ÷ bare gRPC ExecuteJob (jobs): not measured"]
        );
    }
}
