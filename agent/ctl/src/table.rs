//! The plain-text table every renderer prints, and the small cell helpers they share.

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|&h| h.to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count() + 2;
                    text.push_str(cell);
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let mut table = Table::new(&["A", "LONGER", "LAST"]);
        table.row(vec!["wide cell".into(), "x".into(), "end".into()]);
        table.row(vec!["y".into(), "".into(), "".into()]);
        assert_eq!(
            table.render(),
            "A          LONGER  LAST\nwide cell  x       end\ny\n"
        );
    }

    #[test]
    fn cell_helpers() {
        for (got, expected) in [
            (or_dash(None::<u32>), "-"),
            (or_dash(Some(7)), "7"),
            (count(0, "entry", "entries"), "0 entries"),
            (count(1, "entry", "entries"), "1 entry"),
            (count(2, "entry", "entries"), "2 entries"),
            (yes_no(true), "yes"),
            (yes_no(false), "no"),
        ] {
            assert_eq!(got, expected);
        }
    }
}
