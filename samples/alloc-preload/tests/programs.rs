//! libmemprof_alloc.so under real programs: C programs written for its edge cases, python3
//! and sqlite3, each compared with its output under glibc; and the release build's footprint.
//!
//! The .so is the one cargo built for this test run (target/<profile>/libmemprof_alloc.so,
//! next to the deps/ directory this test binary runs from).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let so = profile_dir.join("libmemprof_alloc.so");
    assert!(
        so.is_file(),
        "{} is missing: run `cargo build -p memprof-alloc-preload` first",
        so.display()
    );
    so
}

fn compile(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let binary = dir.join(name);
    let out = Command::new("gcc")
        .args(["-O2", "-fno-builtin", "-pthread", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

/// Runs `cmd` with stdin from `input`, with and without the preload.
fn both(program: &str, args: &[&str], input: &[u8]) -> (Output, Output) {
    let run = |preload: bool| {
        use std::io::Write as _;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("MEMPROF_ALLOC_STATS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if preload {
            cmd.env("LD_PRELOAD", library());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    (run(false), run(true))
}

/// The statistics line the preloaded library printed at exit.
fn stats_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .find(|l| l.starts_with("memprof-alloc: "))
        .unwrap_or_else(|| {
            panic!(
                "no statistics line in {:?}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned()
}

fn stat(line: &str, name: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == name).expect(name);
    words[at + 1].parse().unwrap()
}

#[test]
fn c_api_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let api = compile(dir.path(), "api");
    let out = Command::new(&api)
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("api ok\n"),
        "{stdout}\n{out:?}"
    );
}

#[test]
fn double_free_is_counted_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let program = compile(dir.path(), "double_free");
    let (_, ours) = both(program.to_str().unwrap(), &[], b"");
    assert!(ours.status.success(), "{ours:?}");
    assert_eq!(String::from_utf8_lossy(&ours.stdout), "distinct\n");
    assert_eq!(stat(&stats_line(&ours), "invalid_frees"), 1);
}

#[test]
fn python_same_output() {
    let script = r#"
import json, subprocess, threading
d = {str(i): [i, str(i) * 3, {"k": i, "f": i / 7}] for i in range(30000)}
s = json.dumps(d, sort_keys=True)
assert json.loads(s) == d
lists = [list(range(i % 300)) for i in range(20000)]
def work(n, out):
    out.append(sum(len(str(list(range(i % 50)))) for i in range(n)))
results = []
threads = [threading.Thread(target=work, args=(5000, results)) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
child = subprocess.run(["python3", "-c", "print(sum(range(1000)))"], capture_output=True, text=True)
print(len(s), sum(map(len, lists)), sorted(results), child.stdout.strip())
"#;
    let (glibc, ours) = both("python3", &["-c", script], b"");
    assert!(glibc.status.success(), "{glibc:?}");
    assert!(ours.status.success(), "{ours:?}");
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&glibc.stdout)
    );
    let stats = stats_line(&ours);
    assert!(stat(&stats, "allocations") > 1000, "{stats}");
    assert_eq!(stat(&stats, "invalid_frees"), 0, "{stats}");
}

#[test]
fn sqlite_same_output() {
    let sql = b"create table t(a integer, b text);
with recursive c(x) as (select 1 union all select x + 1 from c where x < 10000)
insert into t select x, printf('row-%05d', x) from c;
create index t_b on t(b);
select count(*), sum(a), min(b), max(b), sum(length(b)) from t;
select a % 7, count(*) from t group by a % 7 order by 1;
";
    let (glibc, ours) = both("sqlite3", &[":memory:"], sql);
    assert!(glibc.status.success(), "{glibc:?}");
    assert!(ours.status.success(), "{ours:?}");
    let expected = String::from_utf8_lossy(&glibc.stdout);
    assert!(
        expected.starts_with("10000|50005000|row-00001|row-10000|90000\n"),
        "{expected}"
    );
    assert_eq!(String::from_utf8_lossy(&ours.stdout), expected);
    assert_eq!(stat(&stats_line(&ours), "invalid_frees"), 0);
}

/// Symbols of the standard library's panic and unwinding machinery: one of them in the release
/// library means a panic path crept back in (a bounds check, an `unwrap`), and with it about
/// 290 KiB of code resident in every process the library serves (see build.rs).
const PANIC_MACHINERY: [&str; 5] = [
    "panicking",
    "rust_begin_unwind",
    "rust_eh_personality",
    "backtrace",
    "_Unwind_Resume",
];
/// The release library's code is ~21 KiB; with the panic machinery it was ~310 KiB.
const MAX_TEXT_BYTES: u64 = 64 * 1024;

#[test]
fn release_library_has_no_panic_machinery() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args(["build", "--release", "-p", "memprof-alloc-preload"])
        .output()
        .expect("run cargo build --release");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let so = library()
        .parent()
        .and_then(Path::parent)
        .expect("target/")
        .join("release/libmemprof_alloc.so");
    let data = std::fs::read(&so).unwrap_or_else(|e| panic!("{}: {e}", so.display()));
    let file = object::File::parse(&*data).expect("an ELF file");

    let names: Vec<String> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter_map(|symbol| symbol.name().ok().map(str::to_owned))
        .collect();
    // The symbol table is there to be searched (strip = "debuginfo" keeps it).
    assert!(
        names.iter().any(|n| n == "malloc") && names.len() > 50,
        "{} symbols",
        names.len()
    );
    let panicky: Vec<&String> = names
        .iter()
        .filter(|n| PANIC_MACHINERY.iter().any(|p| n.contains(p)))
        .collect();
    assert!(panicky.is_empty(), "panic machinery linked in: {panicky:?}");

    let text = file.section_by_name(".text").expect("a .text section");
    assert!(
        text.size() < MAX_TEXT_BYTES,
        ".text is {} bytes, more than {MAX_TEXT_BYTES}",
        text.size()
    );
}
