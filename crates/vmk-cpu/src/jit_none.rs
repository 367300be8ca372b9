//! Hosts other than x86-64 Linux have no block compiler: every block is interpreted.

use crate::decode::Op;
use crate::{Hart, TlbEntry};

pub(crate) type JitFn = unsafe extern "C" fn(
    hart: *mut Hart,
    vpc: u64,
    tlb_read: *const TlbEntry,
    tlb_write: *const TlbEntry,
    dtag: u64,
) -> u64;

pub(crate) const HOT_THRESHOLD: u32 = u32::MAX;

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

pub(crate) fn compile(_: &mut CodeArena, _: &[Op], _: i64) -> Result<JitFn, NoCode> {
    Err(NoCode::Unsupported)
}
