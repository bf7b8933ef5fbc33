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

    /// A row's value.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.key == key).map(|r| r.value)
    }

    /// The table for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<62} {:>12}  {:<4} {:>8}\n",
            "measure", "value", "unit", "ratio"
        );
        for r in &self.rows {
            let ratio = r.ratio.map_or(String::new(), |(_, x)| format!("{x:.3}"));
            out.push_str(&format!(
                "{:<62} {:>12.3}  {:<4} {:>8}\n",
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
