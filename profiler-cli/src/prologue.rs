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
//! write, no change to the stack pointer or to an argument register (the probe reads the
//! arguments and, for the return probe, the return address at the top of the stack). When no
//! such instruction is reachable, the probe stays on the entry and is reported as single-step.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// How far into the entry block to look.
const MAX_INSTRUCTIONS: usize = 8;

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

/// Chooses the probe placement for the code at a function's entry (`code` starts at the entry).
pub fn place(code: &[u8]) -> Placement {
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
        if !is_skippable(&instruction, &mut info) {
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

/// Instructions a probe may be placed after without changing what it observes.
fn is_skippable(instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
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
        writes(used.access()) && (full == Register::RSP || ARGUMENT_REGISTERS.contains(&full))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_at_entry_is_probed_in_place() {
        // push %r12; push %rbp (glibc malloc)
        assert_eq!(
            place(&[0x41, 0x54, 0x55]),
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
            place(&code),
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
            place(&code),
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
            place(&code),
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
            place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]),
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
            place(&code),
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
            place(&code),
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
            place(&code),
            Placement {
                offset: 0,
                single_step: true
            }
        );
    }
}
