//! Text for a terminal. A recording is untrusted input, and the names it carries (the
//! command line, paths, function names, warnings) reach the summary `memprof report` prints:
//! an escape sequence among them would drive the terminal that shows it. Control characters
//! other than newline and tab are written as `?`.

use std::io::{self, Write};

/// A writer that passes text through with its control characters (C0, DEL and C1) replaced
/// by `?`. Call [`Printable::finish`] at the end: a byte that may start a C1 control waits
/// for the next.
pub struct Printable<W: Write> {
    out: W,
    /// The last byte written was 0xc2, the first byte of U+0080..U+00FF in UTF-8.
    after_c2: bool,
}

impl<W: Write> Printable<W> {
    pub fn new(out: W) -> Printable<W> {
        Printable {
            out,
            after_c2: false,
        }
    }

    /// Writes what was held back and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if std::mem::take(&mut self.after_c2) {
            self.out.write_all(&[0xc2])?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for Printable<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut clean = Vec::with_capacity(bytes.len() + 1);
        for &byte in bytes {
            if std::mem::take(&mut self.after_c2) {
                // U+0080..U+009F: the C1 controls (0x9b is an 8-bit CSI on some terminals).
                if (0x80..=0x9f).contains(&byte) {
                    clean.push(b'?');
                    continue;
                }
                clean.push(0xc2);
            }
            match byte {
                b'\n' | b'\t' => clean.push(byte),
                0x00..=0x1f | 0x7f => clean.push(b'?'),
                0xc2 => self.after_c2 = true,
                _ => clean.push(byte),
            }
        }
        self.out.write_all(&clean)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printable(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Printable::new(Vec::new());
        for piece in pieces {
            out.write_all(piece).unwrap();
        }
        out.finish().unwrap()
    }

    #[test]
    fn controls_become_question_marks_and_text_stays() {
        let text = "f\x1b[2J\r\x07(é \u{9b}31m ü)\tend\u{7f}\n";
        assert_eq!(
            printable(&[text.as_bytes()]),
            "f?[2J??(é ?31m ü)\tend?\n".as_bytes()
        );
        // A C1 control split across two writes, and é (0xc3 0xa9) and ¢ (0xc2 0xa2) kept.
        assert_eq!(
            printable(&[b"a\xc2", b"\x9bb \xc2", b"\xa2\xc3\xa9"]),
            "a?b ¢é".as_bytes()
        );
        // A 0xc2 at the very end is written by finish.
        assert_eq!(printable(&[b"x\xc2"]), b"x\xc2");
    }
}
