//! The one table printer of every list verb: left-aligned columns of fixed
//! minimum width, one space apart, the last column unpadded.

/// A table being printed: the header at once (if any), then each row.
pub struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// Prints the header of `columns` (title, minimum width; the last
    /// column's width is not used).
    pub fn new(columns: &[(&str, usize)]) -> Table {
        let t = Table::headless(&columns.iter().map(|c| c.1).collect::<Vec<_>>());
        t.row(columns.iter().map(|c| c.0.to_string()));
        t
    }

    /// A table without a header line.
    pub fn headless(widths: &[usize]) -> Table {
        Table {
            widths: widths.to_vec(),
        }
    }

    /// Prints one row; cells beyond the columns are ignored.
    pub fn row(&self, cells: impl IntoIterator<Item = String>) {
        println!("{}", self.line(cells));
    }

    fn line(&self, cells: impl IntoIterator<Item = String>) -> String {
        let last = self.widths.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.into_iter().zip(&self.widths).enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<width$} "));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_every_column_but_the_last() {
        let t = Table::headless(&[4, 3, 0]);
        let cells = ["a", "∞/1", "long last"].map(String::from);
        assert_eq!(t.line(cells), "a    ∞/1 long last");
        let cells = ["toolong", "b", "c"].map(String::from);
        assert_eq!(t.line(cells), "toolong b   c");
    }
}
