//! The bench's result table: one row per figure, with its ratio to the
//! ceiling it is measured against, as text or JSON.

use serde_json::{Value, json};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stable name for JSON (snake_case).
    pub key: &'static str,
    /// For people.
    pub label: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`/s`, `ms`, `µs`).
    pub unit: &'static str,
    /// The row key of the ceiling this figure is a fraction of, and the
    /// ratio.
    pub ratio: Option<(&'static str, f64)>,
}

/// Rows in the order measured.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The rows.
    pub rows: Vec<Row>,
}

impl Table {
    /// Adds a figure.
    pub fn add(
        &mut self,
        key: &'static str,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.rows.push(Row {
            key,
            label: label.into(),
            value,
            unit,
            ratio: None,
        });
    }

    /// Adds a figure with its ratio to the row `of` (already added).
    pub fn add_ratio(
        &mut self,
        key: &'static str,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
        of: &'static str,
    ) {
        let base = self.value(of).unwrap_or(f64::NAN);
        self.rows.push(Row {
            key,
            label: label.into(),
            value,
            unit,
            ratio: Some((of, value / base)),
        });
    }

    /// The median of several runs, row by row: each value and each ratio
    /// is the median of that row's values and ratios over the runs that
    /// measured it (a ratio is taken within its run, then the median).
    pub fn median(runs: &[Table]) -> Table {
        fn median(mut xs: Vec<f64>) -> f64 {
            xs.sort_by(f64::total_cmp);
            match xs.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => xs[n / 2],
                n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
            }
        }
        let mut out = Table::default();
        let Some(first) = runs.first() else {
            return out;
        };
        let mut keys: Vec<&Row> = first.rows.iter().collect();
        for t in &runs[1..] {
            for r in &t.rows {
                if !keys.iter().any(|k| k.key == r.key) {
                    keys.push(r);
                }
            }
        }
        for row in keys {
            let same: Vec<&Row> = runs
                .iter()
                .filter_map(|t| t.rows.iter().find(|r| r.key == row.key))
                .collect();
            out.rows.push(Row {
                key: row.key,
                label: row.label.clone(),
                value: median(same.iter().map(|r| r.value).collect()),
                unit: row.unit,
                ratio: row.ratio.map(|(of, _)| {
                    (
                        of,
                        median(
                            same.iter()
                                .filter_map(|r| r.ratio.map(|(_, x)| x))
                                .collect(),
                        ),
                    )
                }),
            });
        }
        out
    }

    /// This run's figures beside another run's (another backend, the same
    /// sitting): each row's ratio is its value ÷ the same row of `base`,
    /// named `of`. Rows `base` lacks have no ratio.
    pub fn versus(&self, base: &Table, of: &'static str) -> Table {
        Table {
            rows: self
                .rows
                .iter()
                .map(|r| Row {
                    ratio: base.value(r.key).map(|b| (of, r.value / b)),
                    ..r.clone()
                })
                .collect(),
        }
    }

    /// A row's value.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.key == key).map(|r| r.value)
    }

    /// The table for people.
    pub fn text(&self) -> String {
        // As wide as the longest label (at least 62 columns).
        let w = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(0)
            .max(62);
        let mut out = format!(
            "{:<w$} {:>12}  {:<4} {:>8}\n",
            "measure", "value", "unit", "ratio"
        );
        for r in &self.rows {
            let ratio = r.ratio.map_or(String::new(), |(_, x)| format!("{x:.3}"));
            out.push_str(&format!(
                "{:<w$} {:>12.3}  {:<4} {:>8}\n",
                r.label, r.value, r.unit, ratio
            ));
        }
        out
    }

    /// The table as JSON: `{"rows": [{key, label, value, unit, ratio,
    /// ratio_to}], "values": {key: value}}`.
    pub fn json(&self, extra: Value) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "key": r.key, "label": r.label, "value": r.value, "unit": r.unit,
                    "ratio": r.ratio.map(|(_, x)| x), "ratio_to": r.ratio.map(|(k, _)| k),
                })
            })
            .collect();
        let values: serde_json::Map<String, Value> = self
            .rows
            .iter()
            .map(|r| (r.key.to_owned(), json!(r.value)))
            .collect();
        json!({"rows": rows, "values": values, "run": extra})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_taken_row_by_row_and_ratios_within_runs() {
        let run = |base: f64, x: f64| {
            let mut t = Table::default();
            t.add("base", "base", base, "/s");
            t.add_ratio("x", "x", x, "/s", "base");
            t
        };
        let mut third = run(10.0, 9.0);
        third.add("only_once", "only once", 7.0, "/s");
        let m = Table::median(&[run(10.0, 5.0), run(20.0, 4.0), third]);
        assert_eq!(m.value("base"), Some(10.0));
        assert_eq!(m.value("x"), Some(5.0));
        // Ratios 0.5, 0.2 and 0.9: the median ratio, not 5 / 10.
        let x = m.rows.iter().find(|r| r.key == "x").unwrap();
        assert_eq!(x.ratio, Some(("base", 0.5)));
        assert_eq!(m.value("only_once"), Some(7.0));
        let even = Table::median(&[run(10.0, 1.0), run(30.0, 3.0)]);
        assert_eq!(even.value("base"), Some(20.0));
    }
}
