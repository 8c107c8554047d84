//! A tiny classic-BPF assembler for seccomp programs whose outcome is more than one action
//! (seccompiler gives each filter one action for matches and one for the rest, so the
//! sandbox's policy took two filters, each compiled and run on every system call).

use seccompiler::{BpfProgram, sock_filter};

use crate::error::NativeError;

// Instruction classes and modes (`linux/bpf_common.h`).
const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
pub(crate) const DATA_NR: u32 = 0;
pub(crate) const DATA_ARCH: u32 = 4;
/// The low 32 bits of argument `index` (little-endian).
pub(crate) const fn data_arg_low(index: u32) -> u32 {
    16 + 8 * index
}

/// Where a conditional jump goes: the next instruction or a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Next,
    Label(usize),
}

#[derive(Debug, Clone, Copy)]
enum Insn {
    Load(u32),
    Jump {
        op: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Return(u32),
    Label(usize),
}

/// A program under construction: labels are placed with [`Assembler::label`] and
/// resolved by [`Assembler::finish`] (classic BPF jumps only forward, at most 255).
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    insns: Vec<Insn>,
    labels: usize,
}

impl Assembler {
    pub(crate) fn new_label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    pub(crate) fn label(&mut self, label: usize) {
        self.insns.push(Insn::Label(label));
    }

    /// Loads the 32-bit word at `offset` of `struct seccomp_data` into the accumulator.
    pub(crate) fn load(&mut self, offset: u32) {
        self.insns.push(Insn::Load(offset));
    }

    pub(crate) fn jump_eq(&mut self, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn::Jump {
            op: BPF_JEQ,
            k,
            jt,
            jf,
        });
    }

    /// Unsigned `accumulator >= k`.
    pub(crate) fn jump_ge(&mut self, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn::Jump {
            op: BPF_JGE,
            k,
            jt,
            jf,
        });
    }

    /// `accumulator & k != 0`.
    pub(crate) fn jump_set(&mut self, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn::Jump {
            op: BPF_JSET,
            k,
            jt,
            jf,
        });
    }

    pub(crate) fn ret(&mut self, action: u32) {
        self.insns.push(Insn::Return(action));
    }

    pub(crate) fn finish(self) -> Result<BpfProgram, NativeError> {
        let mut at = vec![None; self.labels];
        let mut index = 0usize;
        for insn in &self.insns {
            match insn {
                Insn::Label(label) => at[*label] = Some(index),
                _ => index += 1,
            }
        }
        let mut program = Vec::with_capacity(index);
        for insn in &self.insns {
            let here = program.len();
            let offset = |target: Target| -> Result<u8, NativeError> {
                let to = match target {
                    Target::Next => return Ok(0),
                    Target::Label(label) => at[label]
                        .ok_or_else(|| NativeError::Seccomp(format!("label {label} unplaced")))?,
                };
                to.checked_sub(here + 1)
                    .and_then(|distance| u8::try_from(distance).ok())
                    .ok_or_else(|| {
                        NativeError::Seccomp(format!("jump {here} -> {to} out of range"))
                    })
            };
            program.push(match *insn {
                Insn::Label(_) => continue,
                Insn::Load(offset) => statement(BPF_LD | BPF_W | BPF_ABS, offset),
                Insn::Jump { op, k, jt, jf } => sock_filter {
                    code: BPF_JMP | op | BPF_K,
                    jt: offset(jt)?,
                    jf: offset(jf)?,
                    k,
                },
                Insn::Return(action) => statement(BPF_RET | BPF_K, action),
            });
        }
        // BPF_MAXINSNS: the kernel refuses longer classic programs.
        if program.len() > 4096 {
            return Err(NativeError::Seccomp(
                "program longer than 4096 instructions".into(),
            ));
        }
        Ok(program)
    }
}

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Runs `program` on one system call as the kernel would (the subset the assembler emits),
/// so that tests can check a policy's every outcome without installing it.
#[cfg(test)]
pub(crate) fn evaluate(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let word = |offset: u32| match offset {
        DATA_NR => nr,
        DATA_ARCH => arch,
        _ => {
            let index = ((offset - 16) / 8) as usize;
            let value = args[index];
            if (offset - 16).is_multiple_of(8) {
                value as u32
            } else {
                (value >> 32) as u32
            }
        }
    };
    let mut accumulator = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = &program[pc];
        pc += 1;
        match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => accumulator = word(insn.k),
            c if c == BPF_RET | BPF_K => return insn.k,
            c => {
                let taken = match c & !BPF_JMP {
                    BPF_JEQ => accumulator == insn.k,
                    BPF_JGE => accumulator >= insn.k,
                    BPF_JSET => accumulator & insn.k != 0,
                    other => panic!("instruction {other:#x} not emitted by the assembler"),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_to_forward_offsets() {
        let mut asm = Assembler::default();
        let yes = asm.new_label();
        asm.load(DATA_NR);
        asm.jump_eq(7, Target::Label(yes), Target::Next);
        asm.ret(1);
        asm.label(yes);
        asm.ret(2);
        let program = asm.finish().unwrap();
        assert_eq!(program.len(), 4);
        assert_eq!(program[1].jt, 1);
        assert_eq!(evaluate(&program, 0, 7, [0; 6]), 2);
        assert_eq!(evaluate(&program, 0, 8, [0; 6]), 1);
    }

    #[test]
    fn backward_and_unplaced_labels_are_errors() {
        let mut asm = Assembler::default();
        let back = asm.new_label();
        asm.label(back);
        asm.load(DATA_NR);
        asm.jump_eq(1, Target::Label(back), Target::Next);
        asm.ret(0);
        assert!(asm.finish().is_err());

        let mut asm = Assembler::default();
        let nowhere = asm.new_label();
        asm.jump_eq(1, Target::Label(nowhere), Target::Next);
        asm.ret(0);
        assert!(asm.finish().is_err());
    }
}
