//! Where the target's main-thread stack ends, for the probes' stack copies (DWARF mode).
//!
//! The kernel lays out a new program's stack as `argc`, `argv[]`, `envp[]`, the auxiliary
//! vector, then the strings they point to; `/proc/PID/stat` gives the address of `argc`
//! (`startstack`) and of the first argument string (`arg_start`), which `argv[0]` points to.
//! No frame lives above `argc`, so a copy of the main thread's stack can stop there instead of
//! carrying kilobytes of environment on every allocation.

use std::fs;

/// The main thread's stack top as the probes use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MainStack {
    /// Address of `argc`.
    pub top: u64,
    /// `argv[0]`, the word right after `argc` while the program has not exec'd.
    pub argv0: u64,
}

/// `startstack` and `arg_start`: fields 28 and 48 of `/proc/PID/stat` (proc(5)).
const STARTSTACK_FIELD: usize = 28;
const ARG_START_FIELD: usize = 48;

impl MainStack {
    /// Process `pid`'s, or the default (no bound) when its stat cannot be read or hides the
    /// fields (the kernel shows 0 to readers without ptrace access).
    pub fn of(pid: u32) -> MainStack {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| MainStack::parse(&stat))
            .unwrap_or_default()
    }

    fn parse(stat: &str) -> Option<MainStack> {
        // The command name (field 2) may hold spaces and parentheses: fields are counted
        // after its closing one.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        // `rest` starts at field 3.
        let field = |fields: &mut std::str::SplitWhitespace, skip: usize| -> Option<u64> {
            fields.nth(skip)?.parse().ok()
        };
        let top = field(&mut fields, STARTSTACK_FIELD - 3)?;
        let argv0 = field(&mut fields, ARG_START_FIELD - STARTSTACK_FIELD - 1)?;
        (top != 0 && argv0 != 0).then_some(MainStack { top, argv0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_startstack_and_arg_start_after_an_odd_command_name() {
        // A stat line of 52 fields; the command holds a space and a parenthesis.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[STARTSTACK_FIELD - 3] = "140737488346000".into();
        fields[ARG_START_FIELD - 3] = "140737488347001".into();
        let stat = format!("4242 (a) b) {}\n", fields.join(" "));
        assert_eq!(
            MainStack::parse(&stat),
            Some(MainStack {
                top: 140737488346000,
                argv0: 140737488347001
            })
        );
    }

    #[test]
    fn hidden_fields_give_no_bound() {
        let fields: Vec<String> = (3..=52).map(|_| "0".to_owned()).collect();
        let stat = format!("1 (init) {}", fields.join(" "));
        assert_eq!(MainStack::parse(&stat), None);
        assert_eq!(MainStack::parse("1 (init) S 0"), None);
    }

    /// The layout the probes rely on, checked on this process: the word after `argc` is
    /// `argv[0]`, and `argc` is this program's argument count.
    #[test]
    fn the_word_after_argc_is_argv0_on_this_kernel() {
        let main = MainStack::of(std::process::id());
        assert_ne!(main.top, 0, "startstack unreadable");
        // SAFETY: `top` is on this process's main stack, mapped for its whole life; the
        // kernel wrote argc and argv there.
        let (argc, argv0) = unsafe {
            (
                std::ptr::read_volatile(main.top as *const u64),
                std::ptr::read_volatile((main.top + 8) as *const u64),
            )
        };
        assert_eq!(argc, std::env::args_os().count() as u64);
        assert_eq!(argv0, main.argv0);
    }
}
