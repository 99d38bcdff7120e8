//! Where on a function a probe goes.
//!
//! A uprobe replaces one instruction with a breakpoint. When it fires, the kernel must execute
//! the displaced instruction: a few kinds it emulates (push of a register, nop, relative
//! jmp/call/jcc), every other one it single-steps out of line, which costs about 10x more in a
//! VM (glibc's free starts with `test %rdi,%rdi`: 13 us per hit there, 1.2 us on the `je` two
//! bytes later). A 5-byte nop is cheaper still on 6.18+, where the kernel turns it into a call.
//!
//! The rule: walk the entry block, and put the probe on the first emulated instruction,
//! provided every instruction before it is harmless to skip over: no control flow, no memory
//! write, no change to the stack pointer or to an argument register the probe reads (each
//! probe reads its function's first N arguments and, for the return probe, the return address
//! at the top of the stack; jemalloc's `free` copies `%rdi` into `%rcx` and computes for ten
//! instructions before its first branch, harmless to a probe that reads `%rdi` only). When no
//! such instruction is reachable, the probe stays on the entry and is reported as single-step.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// How far into the entry block to look.
const MAX_INSTRUCTIONS: usize = 16;

/// The integer argument registers of the SysV x86-64 ABI, which the probes read.
const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// Where a function's probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes from the function's entry.
    pub offset: u64,
    /// The kernel will single-step the probed instruction (the slow path).
    pub single_step: bool,
}

/// Chooses the probe placement for the code at a function's entry (`code` starts at the entry)
/// whose probe reads the first `arguments` integer arguments.
pub fn place(code: &[u8], arguments: usize) -> Placement {
    let read = &ARGUMENT_REGISTERS[..arguments.min(ARGUMENT_REGISTERS.len())];
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        if is_emulated(&instruction) {
            return Placement {
                offset: instruction.ip(),
                single_step: false,
            };
        }
        if !is_skippable(&instruction, &mut info, read) {
            break;
        }
    }
    Placement {
        offset: 0,
        single_step: true,
    }
}

/// Instructions the x86 uprobe code emulates instead of single-stepping.
fn is_emulated(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        // push %reg (0x50-0x57, with REX.B for r8-r15); not push imm/mem, not 16-bit push.
        Mnemonic::Push => {
            instruction.op0_kind() == OpKind::Register
                && instruction.op0_register().is_gpr64()
                && instruction.len() <= 2
        }
        // Relative near jmp/call and conditional jumps.
        Mnemonic::Jmp | Mnemonic::Call => matches!(
            instruction.op0_kind(),
            OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
        ),
        _ if instruction.is_jcc_short_or_near() => true,
        // The one-byte nop, and the 5-byte nop the kernel optimizes into a call.
        Mnemonic::Nop => {
            instruction.len() == 1 || instruction.code() == Code::Nop_rm32 && instruction.len() == 5
        }
        _ => false,
    }
}

/// Instructions a probe that reads the registers `read` may be placed after without changing
/// what it observes.
fn is_skippable(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
    read: &[Register],
) -> bool {
    if instruction.code() == Code::Endbr64 || instruction.mnemonic() == Mnemonic::Nop {
        return true;
    }
    if instruction.flow_control() != FlowControl::Next
        || matches!(
            instruction.mnemonic(),
            Mnemonic::Syscall | Mnemonic::Sysenter | Mnemonic::Int
        )
    {
        return false;
    }
    let info = info.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    if info
        .used_memory()
        .iter()
        .any(|memory| writes(memory.access()))
    {
        return false;
    }
    !info.used_registers().iter().any(|used| {
        let full = used.register().full_register();
        writes(used.access()) && (full == Register::RSP || read.contains(&full))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_at_entry_is_probed_in_place() {
        // push %r12; push %rbp (glibc malloc)
        assert_eq!(
            place(&[0x41, 0x54, 0x55], 1),
            Placement {
                offset: 0,
                single_step: false
            }
        );
    }

    #[test]
    fn test_then_je_probes_the_je() {
        // test %rdi,%rdi; je +0xbf (glibc free)
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00];
        assert_eq!(
            place(&code, 1),
            Placement {
                offset: 3,
                single_step: false
            }
        );
    }

    #[test]
    fn flag_only_compare_of_memory_is_skipped() {
        // cmpb $0,0x140201(%rip); push %r12 (glibc posix_memalign)
        let code = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        assert_eq!(
            place(&code, 3),
            Placement {
                offset: 7,
                single_step: false
            }
        );
    }

    #[test]
    fn scratch_register_moves_are_skipped() {
        // mov %ecx,%r10d; test $0xfff,%r9d; jne (glibc mmap)
        let code = [
            0x41, 0x89, 0xca, 0x41, 0xf7, 0xc1, 0xff, 0x0f, 0x00, 0x00, 0x75, 0x14,
        ];
        assert_eq!(
            place(&code, 4),
            Placement {
                offset: 10,
                single_step: false
            }
        );
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        assert_eq!(
            place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 1),
            Placement {
                offset: 4,
                single_step: false
            }
        );
    }

    #[test]
    fn stack_pointer_change_keeps_the_entry() {
        // sub $0x58,%rsp; ... (glibc mremap)
        let code = [0x48, 0x83, 0xec, 0x58, 0x55];
        assert_eq!(
            place(&code, 3),
            Placement {
                offset: 0,
                single_step: true
            }
        );
    }

    #[test]
    fn argument_register_write_keeps_the_entry() {
        // mov %rsi,%rdi; push %rbp: the probe would read a clobbered first argument.
        let code = [0x48, 0x89, 0xf7, 0x55];
        assert_eq!(
            place(&code, 1),
            Placement {
                offset: 0,
                single_step: true
            }
        );
    }

    #[test]
    fn syscall_is_never_crossed() {
        // mov $0xb,%eax; syscall; ... (glibc munmap)
        let code = [0xb8, 0x0b, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x90];
        assert_eq!(
            place(&code, 2),
            Placement {
                offset: 0,
                single_step: true
            }
        );
    }

    #[test]
    fn only_the_arguments_the_probe_reads_are_protected() {
        // mov %rdi,%rcx; jne: a probe reading %rdi alone may sit on the jne; one that reads
        // the fourth argument (%rcx) may not.
        let code = [0x48, 0x89, 0xf9, 0x75, 0x10];
        assert_eq!(
            place(&code, 1),
            Placement {
                offset: 3,
                single_step: false
            }
        );
        assert_eq!(
            place(&code, 4),
            Placement {
                offset: 0,
                single_step: true
            }
        );
    }

    #[test]
    fn jemallocs_free_is_probed_on_its_first_branch() {
        // libjemalloc.so.2 (Debian 5.3) free: ten instructions of address arithmetic that read
        // %rdi and write %rax, %rdx, %rcx, then cmp and jne.
        let code = [
            0x48, 0x89, 0xf8, // mov %rdi,%rax
            0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, // mov 0xa530e(%rip),%rdx
            0x48, 0x89, 0xf9, // mov %rdi,%rcx
            0x48, 0xc1, 0xe8, 0x1a, // shr $0x1a,%rax
            0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, // and $0xffffffffc0000000,%rcx
            0x25, 0xf0, 0x00, 0x00, 0x00, // and $0xf0,%eax
            0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, // add %fs:0x0,%rax
            0x48, 0x01, 0xd0, // add %rdx,%rax
            0x48, 0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, // cmp 0x1b0(%rax),%rcx
            0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00, // jne
        ];
        assert_eq!(
            place(&code, 1),
            Placement {
                offset: 0x30,
                single_step: false
            }
        );
    }
}
