//! Strings stored once each and named by their position: the string table of a pprof
//! profile and that of a recording's symbols.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct StringTable {
    list: Vec<String>,
    positions: HashMap<String, usize>,
}

impl StringTable {
    /// The position of `text`, which is added at the end when new.
    pub(crate) fn position(&mut self, text: &str) -> usize {
        if let Some(&position) = self.positions.get(text) {
            return position;
        }
        let position = self.list.len();
        self.list.push(text.to_owned());
        self.positions.insert(text.to_owned(), position);
        position
    }

    /// The strings, by position.
    pub(crate) fn into_list(self) -> Vec<String> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_string_is_stored_once_in_first_use_order() {
        let mut table = StringTable::default();
        let positions: Vec<usize> = ["", "main", "a.c", "main", ""]
            .iter()
            .map(|text| table.position(text))
            .collect();
        assert_eq!(positions, [0, 1, 2, 1, 0]);
        assert_eq!(table.into_list(), ["", "main", "a.c"]);
    }
}
