//! Hosts other than x86-64 Linux have no block compiler: every block is interpreted.

use crate::{Block, Hart};

pub(crate) type JitFn = unsafe extern "C" fn(hart: *mut Hart, vpc: u64) -> u64;

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
