//! What `mcplexerctl` prints on stdout: aligned tables for lists,
//! `field: value` lines for single objects, and JSON with `--json`.
//!
//! Text shown to a human comes from the vault and may have been written by
//! another user (a scope's name, an audited tool name), so control
//! characters are escaped before they reach the terminal. JSON output is
//! escaped by serde. Secret values never pass through here: the vault never
//! returns them.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

/// An aligned table with a header row; columns are separated by two spaces.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; each cell is cleaned, and an empty cell is shown as `-`.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    /// The table as text, one line per row, without trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(c);
                } else {
                    let pad = widths[i] - c.chars().count();
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table on stdout.
    pub fn print(&self) -> io::Result<()> {
        print_text(&self.render())
    }
}

/// `field: value` lines describing one object.
#[derive(Debug, Default)]
pub struct Fields {
    lines: Vec<(&'static str, String)>,
}

impl Fields {
    /// No fields yet.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds a field; the value is cleaned, and an empty value is shown as `-`.
    pub fn add(&mut self, name: &'static str, value: impl ToString) -> &mut Fields {
        self.lines.push((name, cell(&value.to_string())));
        self
    }

    /// The fields as text.
    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect()
    }

    /// Prints the fields on stdout.
    pub fn print(&self) -> io::Result<()> {
        print_text(&self.render())
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), crate::error::Failure> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(print_text(&text)?)
}

/// Prints a value as one line of JSON on stdout (for streams).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), crate::error::Failure> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    Ok(print_text(&text)?)
}

/// Writes text to stdout and flushes it.
pub fn print_text(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// A cell or field value: control characters escaped, `-` when empty.
pub fn cell(s: &str) -> String {
    if s.is_empty() {
        return "-".to_owned();
    }
    clean(s)
}

/// Escapes control characters (terminal escapes, newlines) in text from
/// the vault.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A list of strings joined by `, `.
pub fn list(items: &[String]) -> String {
    items.join(", ")
}

/// A map as `K=V` pairs sorted by key, joined by `, `.
pub fn pairs(map: &HashMap<String, String>) -> String {
    let mut items: Vec<_> = map.iter().collect();
    items.sort();
    items
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An owning uid, or empty (shown as `-`) for no owner.
pub fn owner(owner: Option<u32>) -> String {
    owner.map(|uid| uid.to_string()).unwrap_or_default()
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A number, or empty (shown as `-`) when it is zero (unset in proto3).
pub fn nonzero(n: impl Into<u64>) -> String {
    match n.into() {
        0 => String::new(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "NAME", "TYPE"]);
        t.row(vec!["github".into(), "GitHub".into(), "env".into()]);
        t.row(vec!["x".into(), String::new(), "oauth2".into()]);
        assert_eq!(
            t.render(),
            "ID      NAME    TYPE\n\
             github  GitHub  env\n\
             x       -       oauth2\n"
        );
    }

    #[test]
    fn empty_table_has_a_header() {
        assert_eq!(Table::new(&["ID", "NAME"]).render(), "ID  NAME\n");
    }

    #[test]
    fn fields() {
        let mut f = Fields::new();
        f.add("id", "github").add("owner", owner(None)).add("n", 3);
        assert_eq!(f.render(), "id: github\nowner: -\nn: 3\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell(""), "-");
    }

    #[test]
    fn helpers() {
        let map = HashMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]);
        assert_eq!(pairs(&map), "a=1, b=2");
        assert_eq!(list(&["x".into(), "y".into()]), "x, y");
        assert_eq!(owner(Some(1000)), "1000");
        assert_eq!(nonzero(0u32), "");
        assert_eq!(nonzero(5u32), "5");
    }
}
