use super::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

/// A directory whose file `victim` must never be written through a planted name.
struct Planted {
    root: tempfile::TempDir,
}

impl Planted {
    fn new() -> Planted {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("victim"), b"precious").unwrap();
        fs::create_dir(root.path().join("out")).unwrap();
        Planted { root }
    }

    fn out(&self) -> PathBuf {
        self.root.path().join("out")
    }

    /// `out/NAME` -> `victim`.
    fn plant(&self, name: &str) {
        symlink(self.root.path().join("victim"), self.out().join(name)).unwrap();
    }

    fn victim(&self) -> Vec<u8> {
        fs::read(self.root.path().join("victim")).unwrap()
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_planted_symlink_is_replaced_not_written_through() {
    let planted = Planted::new();
    planted.plant("report.json");
    let dir = OutputDir::open(&planted.out()).unwrap();
    let path = dir
        .write_atomically("report.json", |out| out.write_all(b"{}"))
        .unwrap();
    assert_eq!(planted.victim(), b"precious");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(fs::read(&path).unwrap(), b"{}");
}

#[test]
fn a_streamed_file_replaces_a_planted_symlink() {
    let planted = Planted::new();
    planted.plant("recording.mprof");
    let dir = OutputDir::open(&planted.out()).unwrap();
    let mut file = dir.create_new("recording.mprof").unwrap();
    file.write_all(b"events").unwrap();
    assert_eq!(planted.victim(), b"precious");
    let path = planted.out().join("recording.mprof");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(fs::read(&path).unwrap(), b"events");
}

#[test]
fn files_are_readable_by_their_owner_only_and_no_temporary_is_left() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("fresh");
    let dir = OutputDir::open(&out).unwrap();
    assert_eq!(mode(&out), 0o700);
    dir.write_atomically("a.svg", |out| out.write_all(b"<svg/>"))
        .unwrap();
    dir.create_new("recording.mprof").unwrap();
    assert_eq!(mode(&out.join("a.svg")), 0o600);
    assert_eq!(mode(&out.join("recording.mprof")), 0o600);
    let mut names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.svg", "recording.mprof"]);
}

#[test]
fn a_failed_render_leaves_neither_file_nor_temporary() {
    let root = tempfile::tempdir().unwrap();
    let dir = OutputDir::open(root.path()).unwrap();
    let err = dir
        .write_atomically("report.json", |_| Err(io::Error::other("disk full")))
        .unwrap_err();
    assert!(err.to_string().ends_with("report.json"), "{err}");
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn a_symlinked_output_directory_is_refused() {
    let planted = Planted::new();
    let link = planted.root.path().join("link");
    symlink(planted.out(), &link).unwrap();
    let err = OutputDir::open(&link).unwrap_err();
    assert!(matches!(err, OutputError::SymlinkDir { .. }), "{err}");
    // Pointing at a file instead of a directory changes nothing.
    let to_file = planted.root.path().join("to-file");
    symlink(planted.root.path().join("victim"), &to_file).unwrap();
    let err = OutputDir::open(&to_file).unwrap_err();
    assert!(matches!(err, OutputError::SymlinkDir { .. }), "{err}");
    assert_eq!(planted.victim(), b"precious");
}

#[test]
fn a_directory_others_can_write_is_refused_unless_sticky_and_ours() {
    let root = tempfile::tempdir().unwrap();
    let open = root.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = OutputDir::open(&open).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "output directory {} can be written by other users (mode 777); use a directory \
             only you can write",
            open.display()
        )
    );
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    OutputDir::open(&open).unwrap();
}

#[test]
fn ownership_and_modes_decide_safety() {
    let me = rustix::process::Uid::from_raw(1000);
    assert_eq!(unsafe_because(1000, 0o40755, me), None);
    assert_eq!(unsafe_because(0, 0o40755, me), None);
    assert_eq!(unsafe_because(1000, 0o41777, me), None);
    assert_eq!(
        unsafe_because(1001, 0o40700, me).as_deref(),
        Some("it belongs to user 1001")
    );
    // Root's /tmp is sticky but not ours: others could have planted the names we use.
    assert_eq!(unsafe_because(0, 0o41777, me).as_deref(), Some("mode 1777"));
    assert_eq!(
        unsafe_because(1000, 0o40775, me).as_deref(),
        Some("mode 775")
    );
}

#[test]
fn subdirectories_are_checked_like_the_directory() {
    let planted = Planted::new();
    let dir = OutputDir::open(&planted.out()).unwrap();
    let sub = dir.subdir("glibc").unwrap();
    assert_eq!(sub.path(), planted.out().join("glibc"));
    symlink(planted.root.path(), planted.out().join("jemalloc")).unwrap();
    assert!(matches!(
        dir.subdir("jemalloc").unwrap_err(),
        OutputError::SymlinkDir { .. }
    ));
}
