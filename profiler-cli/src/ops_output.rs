//! The operation count a program prints: its last `ops: N` line on stdout (the sample load
//! generator's convention, which `memprof compare` reads too). With `run --ops-from-output`,
//! memprof passes the target's stdout through, line by line, and keeps that count for the
//! per-operation figures.
use std::io::{BufRead, BufReader, Read, Write};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the output may stay open after the target exited (a child it started may still
/// hold it).
const AFTER_EXIT: Duration = Duration::from_secs(1);

/// N of a line `ops: N` (surrounding blanks allowed).
pub fn ops_in(line: &str) -> Option<u64> {
    line.trim().strip_prefix("ops:")?.trim().parse().ok()
}

/// Copies `output` to `to` (memprof's stdout) line by line as it comes; the thread returns the
/// last count seen once `output` ends.
pub fn pass_through(
    output: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> JoinHandle<Option<u64>> {
    thread::spawn(move || {
        let mut ops = None;
        let mut reader = BufReader::new(output);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            // A closed stdout must not stop the target: keep reading, stop writing.
            let _ = to.write_all(&line).and_then(|()| to.flush());
            if let Some(count) = ops_in(&String::from_utf8_lossy(&line)) {
                ops = Some(count);
            }
            line.clear();
        }
        ops
    })
}

/// The count `pass_through` found, once the output has ended; a warning instead when no count
/// was printed or the output is still open [`AFTER_EXIT`] after the target's exit.
pub fn printed_count(watcher: JoinHandle<Option<u64>>) -> Result<u64, String> {
    let deadline = Instant::now() + AFTER_EXIT;
    while !watcher.is_finished() {
        if Instant::now() >= deadline {
            return Err(
                "--ops-from-output: the target's stdout was still open a second after it exited \
                 (a process it started holds it); no operation count"
                    .to_owned(),
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    match watcher.join() {
        Ok(Some(ops)) => Ok(ops),
        _ => Err("--ops-from-output: the target printed no `ops: N` line".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_count_line() {
        assert_eq!(ops_in("ops: 1200"), Some(1200));
        assert_eq!(ops_in("  ops:42  \n"), Some(42));
        assert_eq!(ops_in("ops/s: 345.5"), None);
        assert_eq!(ops_in("x ops: 9"), None);
        assert_eq!(ops_in("ops: many"), None);
        let output: &[u8] = b"noise\nops: 10\nops/s: 3.5\nops: 1200\ntail without newline";
        assert_eq!(
            pass_through(output, std::io::sink()).join().unwrap(),
            Some(1200)
        );
        let silent: &[u8] = b"no count";
        assert_eq!(pass_through(silent, std::io::sink()).join().unwrap(), None);
        let counted: &[u8] = b"ops: 7\n";
        assert_eq!(printed_count(pass_through(counted, std::io::sink())), Ok(7));
        let err = printed_count(pass_through(silent, std::io::sink())).unwrap_err();
        assert!(err.contains("printed no `ops: N` line"), "{err}");
    }
}
