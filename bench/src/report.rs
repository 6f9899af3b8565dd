//! A scenario's figures, printed as a table (figure, value, target, met?) or as JSON.

use serde::Serialize;
use serde_json::{Map, Value};

/// How a value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    Bytes,
    PerSecond,
    Millis,
    Micros,
    Seconds,
    Count,
    Ratio,
    Percent,
    CpuSeconds,
    /// CPU-seconds per wall second: how many cores a process kept busy.
    Cores,
}

impl Unit {
    fn show(self, value: f64) -> String {
        match self {
            Self::Bytes => {
                let (scaled, unit) = if value.abs() >= 1024.0 * 1024.0 {
                    (value / (1024.0 * 1024.0), "MiB")
                } else if value.abs() >= 1024.0 {
                    (value / 1024.0, "KiB")
                } else {
                    (value, "B")
                };
                format!("{scaled:.2} {unit}")
            }
            Self::PerSecond => format!("{} /s", thousands(value)),
            Self::Millis => format!("{value:.2} ms"),
            Self::Micros => format!("{value:.2} µs"),
            Self::Seconds => format!("{value:.2} s"),
            Self::Count => thousands(value),
            Self::Ratio => format!("{value:.2}×"),
            Self::Percent => format!("{value:.1} %"),
            Self::CpuSeconds => format!("{value:.3} CPU-s"),
            Self::Cores => format!("{value:.2} cores"),
        }
    }
}

/// `12,345` (rounded to a whole number).
pub(crate) fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// What a figure should be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Self::AtMost(bound) => value <= bound,
            Self::AtLeast(bound) => value >= bound,
            Self::Below(bound) => value < bound,
        }
    }

    fn show(self, unit: Unit) -> String {
        match self {
            Self::AtMost(bound) => format!("≤ {}", unit.show(bound)),
            Self::AtLeast(bound) => format!("≥ {}", unit.show(bound)),
            Self::Below(bound) => format!("< {}", unit.show(bound)),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    figure: String,
    value: Option<f64>,
    unit: Unit,
    display: String,
    target: Option<String>,
    met: Option<bool>,
}

/// Rows of values, such as samples over time, printed under the figures: one JSON value per
/// cell (a number, or null for one that could not be read).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Series {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// A scenario's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    scenario: String,
    title: String,
    smoke: bool,
    params: Map<String, Value>,
    figures: Vec<Figure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    series: Option<Series>,
    notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(scenario: &str, title: impl Into<String>, smoke: bool) -> Self {
        Self {
            scenario: scenario.to_owned(),
            title: title.into(),
            smoke,
            params: Map::new(),
            figures: Vec::new(),
            series: None,
            notes: Vec::new(),
        }
    }

    /// Sets the rows printed under the figures, one cell per column.
    pub(crate) fn series(&mut self, columns: &[&str], rows: Vec<Vec<Value>>) {
        self.series = Some(Series {
            columns: columns.iter().map(|&c| c.to_owned()).collect(),
            rows,
        });
    }

    /// Records a parameter of the run (shown in JSON and under the table).
    pub(crate) fn param(&mut self, name: &str, value: impl Serialize) {
        self.params.insert(
            name.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// Adds a figure without a target.
    pub(crate) fn add(&mut self, figure: &str, value: f64, unit: Unit) {
        self.push(figure, Some(value), unit, None, None);
    }

    /// Adds a figure with a target.
    pub(crate) fn add_target(&mut self, figure: &str, value: f64, unit: Unit, target: Target) {
        self.push(figure, Some(value), unit, Some(target), None);
    }

    /// Adds a figure that could not be measured, saying why.
    pub(crate) fn unavailable(
        &mut self,
        figure: &str,
        why: &str,
        unit: Unit,
        target: Option<Target>,
    ) {
        self.push(figure, None, unit, target, Some(why));
    }

    fn push(
        &mut self,
        figure: &str,
        value: Option<f64>,
        unit: Unit,
        target: Option<Target>,
        why: Option<&str>,
    ) {
        let value = value.filter(|v| v.is_finite());
        self.figures.push(Figure {
            figure: figure.to_owned(),
            value,
            unit,
            display: match (value, why) {
                (Some(v), _) => unit.show(v),
                (None, Some(why)) => why.to_owned(),
                (None, None) => "unavailable".to_owned(),
            },
            target: target.map(|t| t.show(unit)),
            met: target.zip(value).map(|(t, v)| t.met(v)),
        });
    }

    /// Adds a line printed under the table.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The report as a table.
    pub(crate) fn table(&self) -> String {
        let smoke = if self.smoke {
            " — SMOKE RUN: proves the scenario works; figures are not comparable to the targets"
        } else {
            ""
        };
        let mut out = format!("\n== {}: {}{smoke} ==\n", self.scenario, self.title);
        let rows: Vec<[String; 4]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.figure.clone(),
                    f.display.clone(),
                    f.target.clone().unwrap_or_else(|| "—".into()),
                    match f.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "—".into(),
                    },
                ]
            })
            .collect();
        let header = ["figure", "value", "target", "met?"].map(str::to_owned);
        out.push_str(&aligned(&header, &rows));
        if let Some(series) = &self.series {
            let cells: Vec<Vec<String>> = series
                .rows
                .iter()
                .map(|row| row.iter().map(cell).collect())
                .collect();
            out.push('\n');
            out.push_str(&aligned(&series.columns, &cells));
            out.push('\n');
        }
        if !self.params.is_empty() {
            let params: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("parameters: {}\n", params.join(" ")));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

/// A series cell as text: numbers as they are, null as "—".
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `header` and `rows` in columns as wide as their widest cell, one line each.
fn aligned<R: AsRef<[String]>>(header: &[String], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(AsRef::as_ref)) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| {
                let pad = width.saturating_sub(cell.chars().count());
                format!("{cell}{}", " ".repeat(pad))
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_with_their_units() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(Unit::Bytes.show(4096.0), "4.00 KiB");
        assert_eq!(Unit::PerSecond.show(12000.0), "12,000 /s");
        assert_eq!(Unit::Cores.show(1.456), "1.46 cores");
    }

    #[test]
    fn table_and_json_carry_targets_and_verdicts() {
        let mut report = Report::new("idle", "test", true);
        report.add_target("rss", 5000.0, Unit::Bytes, Target::AtMost(4096.0));
        report.add_target("rate", 20000.0, Unit::PerSecond, Target::AtLeast(10000.0));
        report.unavailable("x", "not available yet", Unit::Seconds, None);
        let table = report.table();
        assert!(table.contains("≤ 4.00 KiB"), "{table}");
        assert!(table.contains("NO"), "{table}");
        assert!(table.contains("not available yet"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["figures"][1]["met"], true);
        assert_eq!(json["figures"][2]["value"], Value::Null);
    }

    #[test]
    fn a_series_is_printed_in_columns_and_kept_as_values_in_json() {
        let mut report = Report::new("soak", "test", true);
        report.series(
            &["time", "RSS MiB"],
            vec![
                vec![Value::from("0:00"), Value::from(12.5)],
                vec![Value::from("0:30"), Value::Null],
            ],
        );
        let table = report.table();
        assert!(
            table.contains("time  RSS MiB\n0:00  12.5\n0:30  —\n"),
            "{table}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["series"]["rows"][0][1], 12.5);
    }
}
