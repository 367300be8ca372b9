//! Hosts other than x86-64 Linux have no block compiler: every block is interpreted.

use crate::{Block, Hart, JcEntry, TlbEntry};
use std::sync::atomic::AtomicU32;

pub(crate) type JitFn = unsafe extern "C" fn(hart: *mut Hart, vpc: u64) -> u64;

#[allow(dead_code)]
pub(crate) struct JitCtx {
    pub tlb_read: *const TlbEntry,
    pub tlb_write: *const TlbEntry,
    pub jc: *const JcEntry,
    pub attention: *const AtomicU32,
    pub jc_tag: u64,
    pub stopped: *const Block,
}

impl Default for JitCtx {
    fn default() -> Self {
        JitCtx {
            tlb_read: std::ptr::null(),
            tlb_write: std::ptr::null(),
            jc: std::ptr::null(),
            attention: std::ptr::null(),
            jc_tag: 0,
            stopped: std::ptr::null(),
        }
    }
}

pub(crate) struct CodeArena;

impl CodeArena {
    pub(crate) fn new() -> std::io::Result<CodeArena> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn reset(&mut self) {}
}

pub(crate) enum NoCode {
    Unsupported,
    #[allow(dead_code)]
    ArenaFull,
}

pub(crate) fn compile(_: &mut CodeArena, _: &Block) -> Result<JitFn, NoCode> {
    Err(NoCode::Unsupported)
}
