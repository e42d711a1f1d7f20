//! One report type for every benchmark: a titled table printed aligned for
//! the terminal and again as Markdown rows for BENCHMARKS.md, with notes
//! that say what the columns mean.

use super::RunResult;

/// A table of figures.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    /// An empty table with `title` and `columns`.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Adds a row; cells beyond the columns are dropped, missing ones empty.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// Adds a line printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([c.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The table aligned for a terminal, then its notes.
    pub fn text(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| match i {
                    0 => format!("{c:<w$}"),
                    _ => format!("{c:>w$}"),
                })
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.columns));
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
    }

    /// The table as Markdown (first column left-aligned, the rest right).
    pub fn markdown(&self) -> String {
        let row = |cells: &[String]| format!("| {} |", cells.join(" | "));
        let rule: Vec<String> = (0..self.columns.len())
            .map(|i| if i == 0 { "---" } else { "---:" }.to_string())
            .collect();
        let mut out = format!("{}\n{}\n", row(&self.columns), row(&rule));
        for r in &self.rows {
            out.push_str(&row(r));
            out.push('\n');
        }
        out
    }
}

/// Prints every table for the terminal, then all of them as Markdown.
pub fn print_all(tables: &[&Table]) {
    for t in tables.iter().filter(|t| !t.is_empty()) {
        println!();
        print!("{}", t.text());
    }
    println!();
    println!("Markdown:");
    for t in tables.iter().filter(|t| !t.is_empty()) {
        println!();
        print!("{}", t.markdown());
    }
}

/// `rate`, p50, p99 and CPU ms per operation of a run, as cells.
pub fn run_cells(r: &RunResult) -> Vec<String> {
    vec![
        format!("{:.0}", r.rate()),
        format!("{:.2}", r.p50_ms),
        format!("{:.2}", r.p99_ms),
        format!("{:.2}", r.cpu_ms_per_op()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_aligns_and_markdown_keeps_every_row() {
        let mut t = Table::new("T", &["clients", "flows/s"]);
        t.row(vec!["1".into(), "1234".into()]);
        t.row(vec!["64".into()]);
        t.note("n");
        assert_eq!(
            t.text(),
            "T\nclients | flows/s\n1       |    1234\n64      |        \nn\n"
        );
        assert_eq!(
            t.markdown(),
            "| clients | flows/s |\n| --- | ---: |\n| 1 | 1234 |\n| 64 |  |\n"
        );
    }
}
