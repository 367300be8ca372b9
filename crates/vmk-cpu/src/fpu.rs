//! The floating-point unit: every F and D extension compute instruction (everything except
//! FLW/FSW/FLD/FSD), executed bit-exactly as the RISC-V unprivileged spec requires.
//!
//! Arithmetic, conversions and comparisons go through Berkeley SoftFloat 3e built with its
//! RISC-V specialization (`softfloat-sys`, feature `riscv`): canonical NaN outputs
//! (`0x7fc00000` / `0x7ff8000000000000`), RISC-V's saturating float-to-integer results and
//! tininess detected after rounding. What SoftFloat has no function for is written here:
//! NaN-boxing, sign injection, FCLASS, FMIN/FMAX (IEEE 754-2019 minimumNumber/maximumNumber,
//! as RISC-V 2.2+ specifies) and the FMV moves.
//!
//! SoftFloat keeps its rounding mode and exception flags in `_Thread_local` globals, so each
//! call sets them for the current OS thread only; vCPU threads do not interfere.
//! `softfloat_detectTininess` is never written: its per-thread initial value in the RISC-V
//! build is `softfloat_tininess_afterRounding` (checked by a test), which is what RISC-V wants.

use softfloat_sys as sf;
use softfloat_sys::{float32_t, float64_t};

/// One F/D compute instruction (loads/stores are not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FpOp {
    // single precision
    FaddS,
    FsubS,
    FmulS,
    FdivS,
    FsqrtS,
    FminS,
    FmaxS,
    FsgnjS,
    FsgnjnS,
    FsgnjxS,
    FmaddS,
    FmsubS,
    FnmsubS,
    FnmaddS,
    FeqS,
    FltS,
    FleS,
    FclassS,
    FcvtWS,
    FcvtWuS,
    FcvtLS,
    FcvtLuS,
    FcvtSW,
    FcvtSWu,
    FcvtSL,
    FcvtSLu,
    FmvXW,
    FmvWX,
    // double precision
    FaddD,
    FsubD,
    FmulD,
    FdivD,
    FsqrtD,
    FminD,
    FmaxD,
    FsgnjD,
    FsgnjnD,
    FsgnjxD,
    FmaddD,
    FmsubD,
    FnmsubD,
    FnmaddD,
    FeqD,
    FltD,
    FleD,
    FclassD,
    FcvtWD,
    FcvtWuD,
    FcvtLD,
    FcvtLuD,
    FcvtDW,
    FcvtDWu,
    FcvtDL,
    FcvtDLu,
    FmvXD,
    FmvDX,
    FcvtSD,
    FcvtDS,
}

impl FpOp {
    /// true when the destination is an integer register (x), false when it is an f register.
    pub fn writes_int(self) -> bool {
        use FpOp::*;
        matches!(
            self,
            FeqS | FltS
                | FleS
                | FclassS
                | FcvtWS
                | FcvtWuS
                | FcvtLS
                | FcvtLuS
                | FmvXW
                | FeqD
                | FltD
                | FleD
                | FclassD
                | FcvtWD
                | FcvtWuD
                | FcvtLD
                | FcvtLuD
                | FmvXD
        )
    }

    /// true when the first source operand is an integer register (FCVT.S.W..., FMV.W.X, FMV.D.X).
    pub fn int_source(self) -> bool {
        use FpOp::*;
        matches!(
            self,
            FcvtSW
                | FcvtSWu
                | FcvtSL
                | FcvtSLu
                | FmvWX
                | FcvtDW
                | FcvtDWu
                | FcvtDL
                | FcvtDLu
                | FmvDX
        )
    }
}

/// Fflags bits as in fcsr: NV=0x10, DZ=0x08, OF=0x04, UF=0x02, NX=0x01.
pub const FLAG_NV: u8 = 0x10;
/// Divide by zero.
pub const FLAG_DZ: u8 = 0x08;
/// Overflow.
pub const FLAG_OF: u8 = 0x04;
/// Underflow.
pub const FLAG_UF: u8 = 0x02;
/// Inexact.
pub const FLAG_NX: u8 = 0x01;

const ALL_FLAGS: u8 = FLAG_NV | FLAG_DZ | FLAG_OF | FLAG_UF | FLAG_NX;

/// The canonical single-precision NaN.
const CANON_NAN_S: u32 = 0x7fc0_0000;
/// The canonical double-precision NaN.
const CANON_NAN_D: u64 = 0x7ff8_0000_0000_0000;
/// Upper half of a properly NaN-boxed single in a 64-bit f register.
const BOX: u64 = 0xffff_ffff_0000_0000;
const SIGN_S: u32 = 0x8000_0000;
const SIGN_D: u64 = 0x8000_0000_0000_0000;

// SoftFloat's flag bits are fflags' bits, and its rounding-mode numbers are RISC-V's rm
// encodings; nothing is translated at run time.
const _: () = {
    assert!(sf::softfloat_flag_invalid == FLAG_NV);
    assert!(sf::softfloat_flag_infinite == FLAG_DZ);
    assert!(sf::softfloat_flag_overflow == FLAG_OF);
    assert!(sf::softfloat_flag_underflow == FLAG_UF);
    assert!(sf::softfloat_flag_inexact == FLAG_NX);
    assert!(sf::softfloat_round_near_even == 0); // RNE
    assert!(sf::softfloat_round_minMag == 1); // RTZ
    assert!(sf::softfloat_round_min == 2); // RDN
    assert!(sf::softfloat_round_max == 3); // RUP
    assert!(sf::softfloat_round_near_maxMag == 4); // RMM
};

/// Reads a single-precision operand from a 64-bit f register value: anything not properly
/// NaN-boxed (upper 32 bits not all ones) reads as the canonical NaN.
#[inline(always)]
fn unbox(v: u64) -> u32 {
    if v & BOX == BOX {
        v as u32
    } else {
        CANON_NAN_S
    }
}

/// NaN-boxes a single-precision result for an f register.
#[inline(always)]
fn nanbox(v: u32) -> u64 {
    BOX | u64::from(v)
}

/// Sign-extends a 32-bit value for an x register.
#[inline(always)]
fn sext32(v: u32) -> u64 {
    v as i32 as i64 as u64
}

#[inline(always)]
fn s(v: u64) -> float32_t {
    float32_t { v: unbox(v) }
}

#[inline(always)]
fn d(v: u64) -> float64_t {
    float64_t { v }
}

/// Runs `f` (which calls SoftFloat) with SoftFloat's rounding mode set to `rm` and its
/// exception flags cleared, and returns `f`'s value with the fflags it raised.
#[inline(always)]
fn softfloat<T>(rm: u8, f: impl FnOnce() -> T) -> (T, u8) {
    // SAFETY: the helper only stores to the calling thread's `_Thread_local`
    // `softfloat_roundingMode`; it takes a plain integer, touches no memory of ours and cannot
    // race with other threads. Any `rm` byte is a valid input (SoftFloat treats unknown modes
    // like round-toward-zero; the caller only passes 0..=4).
    unsafe { sf::softfloat_roundingMode_write_helper(rm) };
    flags_of(f)
}

/// Runs `f` (which calls SoftFloat and does not depend on the global rounding mode) with
/// SoftFloat's exception flags cleared, and returns `f`'s value with the fflags it raised.
#[inline(always)]
fn flags_of<T>(f: impl FnOnce() -> T) -> (T, u8) {
    // SAFETY: stores to the calling thread's `_Thread_local` `softfloat_exceptionFlags`; plain
    // integer argument, no memory of ours, no shared state.
    unsafe { sf::softfloat_exceptionFlags_write_helper(0) };
    let value = f();
    // SAFETY: reads this thread's `softfloat_exceptionFlags`; no arguments, no shared state.
    let flags = unsafe { sf::softfloat_exceptionFlags_read_helper() };
    (value, flags & ALL_FLAGS)
}

type Bin32 = unsafe extern "C" fn(float32_t, float32_t) -> float32_t;
type Bin64 = unsafe extern "C" fn(float64_t, float64_t) -> float64_t;
type Cmp32 = unsafe extern "C" fn(float32_t, float32_t) -> bool;
type Cmp64 = unsafe extern "C" fn(float64_t, float64_t) -> bool;

#[inline(always)]
fn bin_s(f: Bin32, a: u64, b: u64, rm: u8) -> (u64, u8) {
    // SAFETY: `f` is a SoftFloat arithmetic function: it takes and returns plain values and
    // only touches this thread's SoftFloat globals.
    let (r, fl) = softfloat(rm, || unsafe { f(s(a), s(b)) });
    (nanbox(r.v), fl)
}

#[inline(always)]
fn bin_d(f: Bin64, a: u64, b: u64, rm: u8) -> (u64, u8) {
    // SAFETY: as in `bin_s`.
    let (r, fl) = softfloat(rm, || unsafe { f(d(a), d(b)) });
    (r.v, fl)
}

#[inline(always)]
fn cmp_s(f: Cmp32, a: u64, b: u64) -> (u64, u8) {
    // SAFETY: `f` is a SoftFloat comparison: plain values in, bool out, flags in this
    // thread's SoftFloat globals. Comparisons do not round.
    let (r, fl) = flags_of(|| unsafe { f(s(a), s(b)) });
    (u64::from(r), fl)
}

#[inline(always)]
fn cmp_d(f: Cmp64, a: u64, b: u64) -> (u64, u8) {
    // SAFETY: as in `cmp_s`.
    let (r, fl) = flags_of(|| unsafe { f(d(a), d(b)) });
    (u64::from(r), fl)
}

/// Fused multiply-add `(±a)·b + (±c)` with one rounding. `neg_prod`/`neg_c` are XORed into
/// the sign bits of `a`/`c` after unboxing; negation is exact, so this is the same as
/// negating the product or the addend. A negated NaN is still a NaN of the same kind, and
/// the RISC-V specialization returns the canonical NaN for any NaN anyway.
#[inline(always)]
fn fma_s(a: u64, b: u64, c: u64, rm: u8, neg_prod: bool, neg_c: bool) -> (u64, u8) {
    let a = float32_t {
        v: unbox(a) ^ if neg_prod { SIGN_S } else { 0 },
    };
    let c = float32_t {
        v: unbox(c) ^ if neg_c { SIGN_S } else { 0 },
    };
    let b = s(b);
    // SAFETY: `f32_mulAdd` takes and returns plain values; state as in `bin_s`.
    let (r, fl) = softfloat(rm, || unsafe { sf::f32_mulAdd(a, b, c) });
    (nanbox(r.v), fl)
}

#[inline(always)]
fn fma_d(a: u64, b: u64, c: u64, rm: u8, neg_prod: bool, neg_c: bool) -> (u64, u8) {
    let a = float64_t {
        v: a ^ if neg_prod { SIGN_D } else { 0 },
    };
    let c = float64_t {
        v: c ^ if neg_c { SIGN_D } else { 0 },
    };
    let b = d(b);
    // SAFETY: as in `fma_s`.
    let (r, fl) = softfloat(rm, || unsafe { sf::f64_mulAdd(a, b, c) });
    (r.v, fl)
}

/// Sign injection on raw bits: no canonicalization, no flags.
#[derive(Clone, Copy)]
enum Sgnj {
    Copy,
    Neg,
    Xor,
}

#[inline(always)]
fn sgnj_s(a: u64, b: u64, kind: Sgnj) -> (u64, u8) {
    let (a, b) = (unbox(a), unbox(b));
    let sign = match kind {
        Sgnj::Copy => b & SIGN_S,
        Sgnj::Neg => !b & SIGN_S,
        Sgnj::Xor => (a ^ b) & SIGN_S,
    };
    (nanbox((a & !SIGN_S) | sign), 0)
}

#[inline(always)]
fn sgnj_d(a: u64, b: u64, kind: Sgnj) -> (u64, u8) {
    let sign = match kind {
        Sgnj::Copy => b & SIGN_D,
        Sgnj::Neg => !b & SIGN_D,
        Sgnj::Xor => (a ^ b) & SIGN_D,
    };
    ((a & !SIGN_D) | sign, 0)
}

/// FCLASS from the decomposed fields: `exp_max` means the exponent is all ones, `quiet` is
/// the most significant fraction bit.
#[inline(always)]
fn classify(sign: bool, exp: u64, exp_max: u64, frac: u64, quiet: bool) -> u64 {
    let bit = if exp == exp_max {
        if frac == 0 {
            if sign {
                0 // -inf
            } else {
                7 // +inf
            }
        } else if quiet {
            9 // quiet NaN
        } else {
            8 // signaling NaN
        }
    } else if exp == 0 {
        match (frac == 0, sign) {
            (true, true) => 3,   // -0
            (true, false) => 4,  // +0
            (false, true) => 2,  // negative subnormal
            (false, false) => 5, // positive subnormal
        }
    } else if sign {
        1 // negative normal
    } else {
        6 // positive normal
    };
    1 << bit
}

#[inline(always)]
fn class_s(a: u64) -> u64 {
    let v = unbox(a);
    classify(
        v & SIGN_S != 0,
        u64::from((v >> 23) & 0xff),
        0xff,
        u64::from(v & 0x007f_ffff),
        v & 0x0040_0000 != 0,
    )
}

#[inline(always)]
fn class_d(v: u64) -> u64 {
    classify(
        v & SIGN_D != 0,
        (v >> 52) & 0x7ff,
        0x7ff,
        v & 0x000f_ffff_ffff_ffff,
        v & 0x0008_0000_0000_0000 != 0,
    )
}

#[inline(always)]
fn is_nan_s(v: u32) -> bool {
    v & 0x7fff_ffff > 0x7f80_0000
}

#[inline(always)]
fn is_snan_s(v: u32) -> bool {
    is_nan_s(v) && v & 0x0040_0000 == 0
}

#[inline(always)]
fn is_nan_d(v: u64) -> bool {
    v & !SIGN_D > 0x7ff0_0000_0000_0000
}

#[inline(always)]
fn is_snan_d(v: u64) -> bool {
    is_nan_d(v) && v & 0x0008_0000_0000_0000 == 0
}

/// Maps non-NaN float bits to an unsigned key whose order is the numeric order with
/// -0 < +0 (negative values reversed below all positive ones).
#[inline(always)]
fn order_key_s(v: u32) -> u32 {
    if v & SIGN_S != 0 {
        !v
    } else {
        v | SIGN_S
    }
}

#[inline(always)]
fn order_key_d(v: u64) -> u64 {
    if v & SIGN_D != 0 {
        !v
    } else {
        v | SIGN_D
    }
}

/// FMIN.S/FMAX.S (RISC-V 2.2+: IEEE 754-2019 minimumNumber/maximumNumber): one NaN operand
/// yields the other operand, two yield the canonical NaN, a signaling NaN raises NV, and
/// -0.0 is less than +0.0.
#[inline(always)]
fn minmax_s(a: u64, b: u64, max: bool) -> (u64, u8) {
    let (a, b) = (unbox(a), unbox(b));
    let flags = if is_snan_s(a) || is_snan_s(b) {
        FLAG_NV
    } else {
        0
    };
    let r = match (is_nan_s(a), is_nan_s(b)) {
        (true, true) => CANON_NAN_S,
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if (order_key_s(a) < order_key_s(b)) != max {
                a
            } else {
                b
            }
        }
    };
    (nanbox(r), flags)
}

#[inline(always)]
fn minmax_d(a: u64, b: u64, max: bool) -> (u64, u8) {
    let flags = if is_snan_d(a) || is_snan_d(b) {
        FLAG_NV
    } else {
        0
    };
    let r = match (is_nan_d(a), is_nan_d(b)) {
        (true, true) => CANON_NAN_D,
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if (order_key_d(a) < order_key_d(b)) != max {
                a
            } else {
                b
            }
        }
    };
    (r, flags)
}

/// A SoftFloat function of one float (sqrt, format conversions) rounded with `rm`.
#[inline(always)]
fn unary<A, R>(f: unsafe extern "C" fn(A) -> R, x: A, rm: u8) -> (R, u8) {
    // SAFETY: every `f` passed here is a SoftFloat function (`f32_sqrt`, `f64_to_f32`, ...)
    // that takes and returns plain values and only touches this thread's SoftFloat globals.
    softfloat(rm, || unsafe { f(x) })
}

/// A SoftFloat float-to-integer conversion, rounding with `rm` (passed as an argument) and
/// `exact = true` so an inexact conversion raises NX. The RISC-V specialization returns the
/// spec's saturated values with NV: NaN and +overflow give the maximum, -overflow the minimum
/// (0 for unsigned; negative values that round to 0 only raise NX).
#[inline(always)]
fn to_int<A, R>(f: unsafe extern "C" fn(A, u8, bool) -> R, x: A, rm: u8) -> (R, u8) {
    // SAFETY: every `f` passed here is a SoftFloat `*_to_[u]i{32,64}` conversion: plain
    // values in and out, flags in this thread's SoftFloat globals; any `rm` byte is accepted.
    // They take the rounding mode as an argument and do not read the global one.
    flags_of(|| unsafe { f(x, rm, true) })
}

/// A SoftFloat integer-to-float conversion, rounded with `rm`.
#[inline(always)]
fn from_int<A, R>(f: unsafe extern "C" fn(A) -> R, x: A, rm: u8) -> (R, u8) {
    // SAFETY: every `f` passed here is a SoftFloat `[u]i{32,64}_to_f{32,64}` conversion:
    // plain values in and out, state only in this thread's SoftFloat globals.
    softfloat(rm, || unsafe { f(x) })
}

/// Executes `op`. `a`, `b`, `c` are the raw 64-bit values of rs1, rs2, rs3 (f registers hold
/// raw bits; single-precision operands must be NaN-boxed — an improperly boxed single reads as
/// the canonical NaN, per the spec). For int-source ops `a` is the x register value.
/// `rm` is the already-resolved rounding mode 0..=4 (RNE, RTZ, RDN, RUP, RMM); the caller
/// handles the dynamic mode and raises illegal-instruction for reserved modes, so rm is always
/// valid here (for ops that ignore rm, any value is passed).
/// Returns (result, fflags raised). For f destinations, single results are NaN-boxed
/// (upper 32 bits all ones). For x destinations the value is what goes into rd: 32-bit results
/// (`FCVT.W[U].*`, FMV.X.W, FEQ/FLT/FLE, FCLASS) sign-extended to 64 bits as the spec says
/// (note FCVT.WU.* sign-extends its 32-bit result too).
pub fn execute(op: FpOp, a: u64, b: u64, c: u64, rm: u8) -> (u64, u8) {
    use FpOp::*;
    // SoftFloat's 32-bit conversions return `int_fast32_t`/`uint_fast32_t` (64-bit on x86_64
    // Linux) holding a value that always fits in 32 bits, so `as i32`/`as u32` is lossless.
    match op {
        // ---- single precision ----
        FaddS => bin_s(sf::f32_add, a, b, rm),
        FsubS => bin_s(sf::f32_sub, a, b, rm),
        FmulS => bin_s(sf::f32_mul, a, b, rm),
        FdivS => bin_s(sf::f32_div, a, b, rm),
        FsqrtS => boxed(unary(sf::f32_sqrt, s(a), rm)),
        FminS => minmax_s(a, b, false),
        FmaxS => minmax_s(a, b, true),
        FsgnjS => sgnj_s(a, b, Sgnj::Copy),
        FsgnjnS => sgnj_s(a, b, Sgnj::Neg),
        FsgnjxS => sgnj_s(a, b, Sgnj::Xor),
        FmaddS => fma_s(a, b, c, rm, false, false),
        FmsubS => fma_s(a, b, c, rm, false, true),
        FnmsubS => fma_s(a, b, c, rm, true, false),
        FnmaddS => fma_s(a, b, c, rm, true, true),
        FeqS => cmp_s(sf::f32_eq, a, b),
        FltS => cmp_s(sf::f32_lt, a, b),
        FleS => cmp_s(sf::f32_le, a, b),
        FclassS => (class_s(a), 0),
        FcvtWS => {
            let (r, fl) = to_int(sf::f32_to_i32, s(a), rm);
            (r as i32 as i64 as u64, fl)
        }
        FcvtWuS => {
            let (r, fl) = to_int(sf::f32_to_ui32, s(a), rm);
            (sext32(r as u32), fl)
        }
        FcvtLS => {
            let (r, fl) = to_int(sf::f32_to_i64, s(a), rm);
            (r as u64, fl)
        }
        FcvtLuS => to_int(sf::f32_to_ui64, s(a), rm),
        FcvtSW => boxed(from_int(sf::i32_to_f32, a as i32, rm)),
        FcvtSWu => boxed(from_int(sf::ui32_to_f32, a as u32, rm)),
        FcvtSL => boxed(from_int(sf::i64_to_f32, a as i64, rm)),
        FcvtSLu => boxed(from_int(sf::ui64_to_f32, a, rm)),
        FmvXW => (sext32(a as u32), 0),
        FmvWX => (nanbox(a as u32), 0),

        // ---- double precision ----
        FaddD => bin_d(sf::f64_add, a, b, rm),
        FsubD => bin_d(sf::f64_sub, a, b, rm),
        FmulD => bin_d(sf::f64_mul, a, b, rm),
        FdivD => bin_d(sf::f64_div, a, b, rm),
        FsqrtD => raw(unary(sf::f64_sqrt, d(a), rm)),
        FminD => minmax_d(a, b, false),
        FmaxD => minmax_d(a, b, true),
        FsgnjD => sgnj_d(a, b, Sgnj::Copy),
        FsgnjnD => sgnj_d(a, b, Sgnj::Neg),
        FsgnjxD => sgnj_d(a, b, Sgnj::Xor),
        FmaddD => fma_d(a, b, c, rm, false, false),
        FmsubD => fma_d(a, b, c, rm, false, true),
        FnmsubD => fma_d(a, b, c, rm, true, false),
        FnmaddD => fma_d(a, b, c, rm, true, true),
        FeqD => cmp_d(sf::f64_eq, a, b),
        FltD => cmp_d(sf::f64_lt, a, b),
        FleD => cmp_d(sf::f64_le, a, b),
        FclassD => (class_d(a), 0),
        FcvtWD => {
            let (r, fl) = to_int(sf::f64_to_i32, d(a), rm);
            (r as i32 as i64 as u64, fl)
        }
        FcvtWuD => {
            let (r, fl) = to_int(sf::f64_to_ui32, d(a), rm);
            (sext32(r as u32), fl)
        }
        FcvtLD => {
            let (r, fl) = to_int(sf::f64_to_i64, d(a), rm);
            (r as u64, fl)
        }
        FcvtLuD => to_int(sf::f64_to_ui64, d(a), rm),
        FcvtDW => raw(from_int(sf::i32_to_f64, a as i32, rm)),
        FcvtDWu => raw(from_int(sf::ui32_to_f64, a as u32, rm)),
        FcvtDL => raw(from_int(sf::i64_to_f64, a as i64, rm)),
        FcvtDLu => raw(from_int(sf::ui64_to_f64, a, rm)),
        FmvXD | FmvDX => (a, 0),
        // NaN inputs give the canonical NaN of the other format (NV if signaling).
        FcvtSD => boxed(unary(sf::f64_to_f32, d(a), rm)),
        FcvtDS => raw(unary(sf::f32_to_f64, s(a), rm)),
    }
}

/// NaN-boxes a single-precision SoftFloat result.
#[inline(always)]
fn boxed((r, fl): (float32_t, u8)) -> (u64, u8) {
    (nanbox(r.v), fl)
}

/// Unwraps a double-precision SoftFloat result.
#[inline(always)]
fn raw((r, fl): (float64_t, u8)) -> (u64, u8) {
    (r.v, fl)
}

// Expected values below are derived from the RISC-V unprivileged spec (F/D chapters) and
// IEEE 754 by hand (bit patterns worked out from the formats), not taken from this code.
#[cfg(test)]
mod tests {
    use super::FpOp::*;
    use super::*;

    const RNE: u8 = 0;
    const RTZ: u8 = 1;
    const RDN: u8 = 2;
    const RUP: u8 = 3;
    const RMM: u8 = 4;
    const ALL_RM: [u8; 5] = [RNE, RTZ, RDN, RUP, RMM];

    const NV: u8 = FLAG_NV;
    const DZ: u8 = FLAG_DZ;
    const OF: u8 = FLAG_OF;
    const UF: u8 = FLAG_UF;
    const NX: u8 = FLAG_NX;

    /// NaN-boxed single from raw bits.
    fn bs(bits: u32) -> u64 {
        0xffff_ffff_0000_0000 | u64::from(bits)
    }
    /// NaN-boxed single from a value (to_bits is exact).
    fn fs(v: f32) -> u64 {
        bs(v.to_bits())
    }
    fn fd(v: f64) -> u64 {
        v.to_bits()
    }

    const QNAN_S: u64 = 0xffff_ffff_7fc0_0000;
    const QNAN_D: u64 = 0x7ff8_0000_0000_0000;
    const SNAN_S: u64 = 0xffff_ffff_7f80_0001;
    const SNAN_D: u64 = 0x7ff0_0000_0000_0001;
    /// A quiet NaN with a payload and the sign set: results must still be canonical.
    const QNAN_PAYLOAD_S: u64 = 0xffff_ffff_ffc1_2345;
    const QNAN_PAYLOAD_D: u64 = 0xfff8_0000_dead_beef;
    /// 1.0f32 without the NaN box: reads as the canonical NaN.
    const UNBOXED_ONE: u64 = 0x0000_0000_3f80_0000;
    const INF_S: u64 = 0xffff_ffff_7f80_0000;
    const NINF_S: u64 = 0xffff_ffff_ff80_0000;
    const INF_D: u64 = 0x7ff0_0000_0000_0000;
    const NINF_D: u64 = 0xfff0_0000_0000_0000;
    const MAX_S: u64 = 0xffff_ffff_7f7f_ffff;
    const MAX_D: u64 = 0x7fef_ffff_ffff_ffff;

    fn ex(op: FpOp, a: u64, b: u64, rm: u8) -> (u64, u8) {
        execute(op, a, b, 0, rm)
    }

    #[track_caller]
    fn ck3(op: FpOp, a: u64, b: u64, c: u64, rm: u8, want: u64, want_flags: u8) {
        let got = execute(op, a, b, c, rm);
        assert_eq!(
            got,
            (want, want_flags),
            "{op:?}(a={a:#x}, b={b:#x}, c={c:#x}, rm={rm}): got ({:#x}, {:#04x}), want ({want:#x}, {want_flags:#04x})",
            got.0,
            got.1
        );
    }

    #[track_caller]
    fn ck(op: FpOp, a: u64, b: u64, rm: u8, want: u64, want_flags: u8) {
        ck3(op, a, b, 0, rm, want, want_flags);
    }

    #[test]
    fn operand_kinds() {
        let int_dest = [
            FeqS, FltS, FleS, FclassS, FcvtWS, FcvtWuS, FcvtLS, FcvtLuS, FmvXW, FeqD, FltD, FleD,
            FclassD, FcvtWD, FcvtWuD, FcvtLD, FcvtLuD, FmvXD,
        ];
        let int_src = [
            FcvtSW, FcvtSWu, FcvtSL, FcvtSLu, FmvWX, FcvtDW, FcvtDWu, FcvtDL, FcvtDLu, FmvDX,
        ];
        let all = [
            FaddS, FsubS, FmulS, FdivS, FsqrtS, FminS, FmaxS, FsgnjS, FsgnjnS, FsgnjxS, FmaddS,
            FmsubS, FnmsubS, FnmaddS, FeqS, FltS, FleS, FclassS, FcvtWS, FcvtWuS, FcvtLS, FcvtLuS,
            FcvtSW, FcvtSWu, FcvtSL, FcvtSLu, FmvXW, FmvWX, FaddD, FsubD, FmulD, FdivD, FsqrtD,
            FminD, FmaxD, FsgnjD, FsgnjnD, FsgnjxD, FmaddD, FmsubD, FnmsubD, FnmaddD, FeqD, FltD,
            FleD, FclassD, FcvtWD, FcvtWuD, FcvtLD, FcvtLuD, FcvtDW, FcvtDWu, FcvtDL, FcvtDLu,
            FmvXD, FmvDX, FcvtSD, FcvtDS,
        ];
        assert_eq!(all.len(), 58);
        for op in all {
            assert_eq!(op.writes_int(), int_dest.contains(&op), "{op:?}");
            assert_eq!(op.int_source(), int_src.contains(&op), "{op:?}");
        }
    }

    #[test]
    fn tininess_default_is_after_rounding() {
        // Checked on a fresh thread, where SoftFloat's thread-local holds its initial value.
        let t = std::thread::spawn(|| {
            // SAFETY: reads this thread's SoftFloat global; no arguments.
            unsafe { sf::softfloat_detectTininess_read_helper() }
        })
        .join()
        .expect("thread");
        assert_eq!(t, sf::softfloat_tininess_afterRounding);
    }

    // ---------------------------------------------------------------- add/sub/mul/div

    #[test]
    fn basic_arith() {
        ck(FaddS, fs(1.5), fs(2.25), RNE, fs(3.75), 0);
        ck(FsubS, fs(1.5), fs(2.25), RNE, fs(-0.75), 0);
        ck(FmulS, fs(1.5), fs(-4.0), RNE, fs(-6.0), 0);
        ck(FdivS, fs(1.0), fs(8.0), RNE, fs(0.125), 0);
        ck(FaddD, fd(1.5), fd(2.25), RNE, fd(3.75), 0);
        ck(FsubD, fd(1.5), fd(2.25), RNE, fd(-0.75), 0);
        ck(FmulD, fd(1.5), fd(-4.0), RNE, fd(-6.0), 0);
        ck(FdivD, fd(1.0), fd(8.0), RNE, fd(0.125), 0);
    }

    #[test]
    fn div_one_third_all_modes() {
        // 1/3 = 1.0101...b x 2^-2: the bits after the 23-bit fraction are 1010..., above half.
        let want_pos = [
            0x3eaa_aaab,
            0x3eaa_aaaa,
            0x3eaa_aaaa,
            0x3eaa_aaab,
            0x3eaa_aaab,
        ];
        let want_neg = [
            0xbeaa_aaab,
            0xbeaa_aaaa,
            0xbeaa_aaab,
            0xbeaa_aaaa,
            0xbeaa_aaab,
        ];
        for rm in ALL_RM {
            ck(FdivS, fs(1.0), fs(3.0), rm, bs(want_pos[rm as usize]), NX);
            ck(FdivS, fs(-1.0), fs(3.0), rm, bs(want_neg[rm as usize]), NX);
        }
        // Double: the bits after the 52-bit fraction are 0101..., below half.
        let want_pos: [u64; 5] = [
            0x3fd5_5555_5555_5555,
            0x3fd5_5555_5555_5555,
            0x3fd5_5555_5555_5555,
            0x3fd5_5555_5555_5556,
            0x3fd5_5555_5555_5555,
        ];
        for rm in ALL_RM {
            ck(FdivD, fd(1.0), fd(3.0), rm, want_pos[rm as usize], NX);
            ck(
                FdivD,
                fd(-1.0),
                fd(3.0),
                rm,
                want_pos[[RNE, RTZ, RUP, RDN, RMM][rm as usize] as usize] | SIGN_D,
                NX,
            );
        }
    }

    #[test]
    fn add_tie_all_modes() {
        // 1 + 2^-24 is exactly halfway between 1.0 and 1.0 + 2^-23 (0x3f800001):
        // RNE goes to the even 1.0, RMM away from zero.
        let want = [
            0x3f80_0000,
            0x3f80_0000,
            0x3f80_0000,
            0x3f80_0001,
            0x3f80_0001,
        ];
        for rm in ALL_RM {
            ck(
                FaddS,
                fs(1.0),
                bs(0x3380_0000),
                rm,
                bs(want[rm as usize]),
                NX,
            );
        }
        // 1 + 2^-53 likewise for double.
        let want: [u64; 5] = [
            0x3ff0_0000_0000_0000,
            0x3ff0_0000_0000_0000,
            0x3ff0_0000_0000_0000,
            0x3ff0_0000_0000_0001,
            0x3ff0_0000_0000_0001,
        ];
        for rm in ALL_RM {
            ck(
                FaddD,
                fd(1.0),
                0x3ca0_0000_0000_0000,
                rm,
                want[rm as usize],
                NX,
            );
        }
    }

    #[test]
    fn exact_zero_sign_depends_on_rounding() {
        // x - x is +0 in every mode except RDN, where it is -0.
        for rm in ALL_RM {
            let want = if rm == RDN { 0x8000_0000 } else { 0 };
            ck(FsubS, fs(1.0), fs(1.0), rm, bs(want), 0);
            ck(FaddD, fd(1.0), fd(-1.0), rm, u64::from(want) << 32, 0);
        }
        ck(FaddS, fs(-0.0), fs(-0.0), RNE, fs(-0.0), 0);
    }

    #[test]
    fn div_by_zero() {
        ck(FdivS, fs(1.0), fs(0.0), RNE, INF_S, DZ);
        ck(FdivS, fs(-1.0), fs(0.0), RNE, NINF_S, DZ);
        ck(FdivS, fs(1.0), fs(-0.0), RNE, NINF_S, DZ);
        ck(FdivD, fd(1.0), fd(0.0), RNE, INF_D, DZ);
        ck(FdivD, fd(-3.0), fd(-0.0), RNE, INF_D, DZ);
        // 0/0 is invalid, not a division by zero; inf/0 is exact infinity.
        ck(FdivS, fs(0.0), fs(0.0), RNE, QNAN_S, NV);
        ck(FdivD, fd(0.0), fd(-0.0), RNE, QNAN_D, NV);
        ck(FdivS, INF_S, fs(0.0), RNE, INF_S, 0);
        ck(FdivD, INF_D, fd(0.0), RNE, INF_D, 0);
        ck(FdivS, INF_S, INF_S, RNE, QNAN_S, NV);
    }

    #[test]
    fn overflow_depends_on_rounding() {
        // MAX * 2: to infinity in the modes that round away in that direction, else to MAX.
        for rm in ALL_RM {
            let to_inf_pos = matches!(rm, RNE | RUP | RMM);
            let to_inf_neg = matches!(rm, RNE | RDN | RMM);
            ck(
                FmulS,
                MAX_S,
                fs(2.0),
                rm,
                if to_inf_pos { INF_S } else { MAX_S },
                OF | NX,
            );
            ck(
                FmulS,
                MAX_S,
                fs(-2.0),
                rm,
                if to_inf_neg {
                    NINF_S
                } else {
                    MAX_S | u64::from(SIGN_S)
                },
                OF | NX,
            );
            ck(
                FmulD,
                MAX_D,
                fd(2.0),
                rm,
                if to_inf_pos { INF_D } else { MAX_D },
                OF | NX,
            );
            ck(
                FaddD,
                MAX_D | SIGN_D,
                MAX_D | SIGN_D,
                rm,
                if to_inf_neg { NINF_D } else { MAX_D | SIGN_D },
                OF | NX,
            );
        }
    }

    #[test]
    fn underflow() {
        // 2^-126 * 2^-126 = 2^-252: far below the smallest subnormal.
        let min_norm_s = bs(0x0080_0000);
        ck(FmulS, min_norm_s, min_norm_s, RNE, fs(0.0), UF | NX);
        ck(FmulS, min_norm_s, min_norm_s, RUP, bs(0x0000_0001), UF | NX);
        ck(
            FmulS,
            min_norm_s,
            min_norm_s | u64::from(SIGN_S),
            RDN,
            bs(0x8000_0001),
            UF | NX,
        );
        let min_norm_d = 0x0010_0000_0000_0000;
        ck(FmulD, min_norm_d, min_norm_d, RNE, 0, UF | NX);
        ck(FmulD, min_norm_d, min_norm_d, RUP, 1, UF | NX);
        // An exact subnormal result is not an underflow: 2^-126 * 2^-10 = 2^-136.
        ck(FmulS, min_norm_s, bs(0x3a80_0000), RNE, bs(0x0000_2000), 0);
        ck(FmulD, min_norm_d, fd(0.5), RNE, 0x0008_0000_0000_0000, 0);
        // Inexact subnormal result: 1.5 * 2^-149 rounds (RNE) to 2^-148.
        ck(
            FmulS,
            bs(0x0000_0003),
            fs(0.5),
            RNE,
            bs(0x0000_0002),
            UF | NX,
        );
    }

    #[test]
    fn tininess_detected_after_rounding() {
        // a*b = (2^25 - 1) * 2^-151 = 2^-126 * (1 - 2^-25), just below the smallest normal.
        // Rounded to 24 bits with unbounded exponent it is exactly halfway and goes to the
        // even 2^-126, so (after-rounding tininess) it is not tiny: NX only, no UF.
        let a = bs(0x37f8_0000); // 31 * 2^-20
        let b = bs(0x0804_2108); // 1082401 * 2^-131 (31 * 1082401 = 2^25 - 1)
        ck(FmulS, a, b, RNE, bs(0x0080_0000), NX);
        // Toward zero it stays below 2^-126: tiny and inexact.
        ck(FmulS, a, b, RTZ, bs(0x007f_ffff), UF | NX);
    }

    #[test]
    fn nan_propagation_is_canonical() {
        for op in [FaddS, FsubS, FmulS, FdivS] {
            ck(op, QNAN_PAYLOAD_S, fs(1.0), RNE, QNAN_S, 0);
            ck(op, fs(1.0), QNAN_PAYLOAD_S, RNE, QNAN_S, 0);
            ck(op, SNAN_S, fs(1.0), RNE, QNAN_S, NV);
            ck(op, fs(1.0), bs(0xff80_0001), RNE, QNAN_S, NV);
            ck(op, UNBOXED_ONE, fs(1.0), RNE, QNAN_S, 0);
            ck(op, fs(1.0), 0x7fff_ffff_3f80_0000, RNE, QNAN_S, 0);
        }
        for op in [FaddD, FsubD, FmulD, FdivD] {
            ck(op, QNAN_PAYLOAD_D, fd(1.0), RNE, QNAN_D, 0);
            ck(op, fd(1.0), QNAN_PAYLOAD_D, RNE, QNAN_D, 0);
            ck(op, SNAN_D, fd(1.0), RNE, QNAN_D, NV);
            ck(op, fd(1.0), 0xfff4_0000_0000_0000, RNE, QNAN_D, NV);
        }
        ck(FaddS, INF_S, NINF_S, RNE, QNAN_S, NV);
        ck(FsubD, INF_D, INF_D, RNE, QNAN_D, NV);
        ck(FmulS, INF_S, fs(0.0), RNE, QNAN_S, NV);
        ck(FmulD, fd(-0.0), NINF_D, RNE, QNAN_D, NV);
        // A single-precision add of two boxed values whose upper bits are wrong in another way.
        ck(FaddS, 0xffff_fffe_3f80_0000, fs(1.0), RNE, QNAN_S, 0);
    }

    // ---------------------------------------------------------------- sqrt

    #[test]
    fn sqrt() {
        ck(FsqrtS, fs(4.0), 0, RNE, fs(2.0), 0);
        // sqrt(2) = 1.41421356237...; 0x3fb504f3 = 1.41421353816... is below it.
        ck(FsqrtS, fs(2.0), 0, RNE, bs(0x3fb5_04f3), NX);
        ck(FsqrtS, fs(2.0), 0, RTZ, bs(0x3fb5_04f3), NX);
        ck(FsqrtS, fs(2.0), 0, RUP, bs(0x3fb5_04f4), NX);
        ck(FsqrtS, fs(-1.0), 0, RNE, QNAN_S, NV);
        ck(FsqrtS, NINF_S, 0, RNE, QNAN_S, NV);
        ck(FsqrtS, fs(-0.0), 0, RNE, fs(-0.0), 0);
        ck(FsqrtS, INF_S, 0, RNE, INF_S, 0);
        ck(FsqrtS, QNAN_PAYLOAD_S, 0, RNE, QNAN_S, 0);
        ck(FsqrtS, SNAN_S, 0, RNE, QNAN_S, NV);
        ck(FsqrtS, UNBOXED_ONE, 0, RNE, QNAN_S, 0);
        ck(FsqrtD, fd(2.0), 0, RNE, 0x3ff6_a09e_667f_3bcd, NX);
        ck(FsqrtD, fd(-2.0), 0, RNE, QNAN_D, NV);
        ck(FsqrtD, fd(-0.0), 0, RNE, fd(-0.0), 0);
        ck(FsqrtD, SNAN_D, 0, RNE, QNAN_D, NV);
        ck(FsqrtD, fd(0.25), 0, RNE, fd(0.5), 0);
    }

    // ---------------------------------------------------------------- fused multiply-add

    #[test]
    fn fma_variants() {
        let (a, b, c) = (fs(2.0), fs(3.0), fs(1.0));
        ck3(FmaddS, a, b, c, RNE, fs(7.0), 0); // a*b + c
        ck3(FmsubS, a, b, c, RNE, fs(5.0), 0); // a*b - c
        ck3(FnmsubS, a, b, c, RNE, fs(-5.0), 0); // -(a*b) + c
        ck3(FnmaddS, a, b, c, RNE, fs(-7.0), 0); // -(a*b) - c
        let (a, b, c) = (fd(2.0), fd(3.0), fd(1.0));
        ck3(FmaddD, a, b, c, RNE, fd(7.0), 0);
        ck3(FmsubD, a, b, c, RNE, fd(5.0), 0);
        ck3(FnmsubD, a, b, c, RNE, fd(-5.0), 0);
        ck3(FnmaddD, a, b, c, RNE, fd(-7.0), 0);
    }

    #[test]
    fn fma_single_rounding() {
        // (1 + 2^-23)(1 - 2^-23) = 1 - 2^-46: rounding the product first would give 1.0.
        let a = bs(0x3f80_0001);
        let b = bs(0x3f7f_fffe);
        let neg_2m46 = bs(0xa880_0000); // -2^-46
        let pos_2m46 = bs(0x2880_0000);
        ck3(FmaddS, a, b, fs(-1.0), RNE, neg_2m46, 0);
        ck3(FmsubS, a, b, fs(1.0), RNE, neg_2m46, 0);
        ck3(FnmsubS, a, b, fs(1.0), RNE, pos_2m46, 0);
        ck3(FnmaddS, a, b, fs(-1.0), RNE, pos_2m46, 0);
        // Double: (1 + 2^-52)(1 - 2^-52) - 1 = -2^-104.
        let a = 0x3ff0_0000_0000_0001;
        let b = 0x3fef_ffff_ffff_fffe;
        ck3(FmaddD, a, b, fd(-1.0), RNE, 0xb970_0000_0000_0000, 0);
        ck3(FnmaddD, a, b, fd(-1.0), RNE, 0x3970_0000_0000_0000, 0);
        // Rounding mode applies to the single rounding: 1/3-ish product plus 0.
        ck3(
            FmaddS,
            fs(1.0),
            bs(0x3eaa_aaab),
            fs(0.0),
            RTZ,
            bs(0x3eaa_aaab),
            0,
        );
    }

    #[test]
    fn fma_zero_signs() {
        // -(+0 * 1) - (+0) = -0 - 0 = -0.
        ck3(FnmaddS, fs(0.0), fs(1.0), fs(0.0), RNE, fs(-0.0), 0);
        // +0 * 1 + -0 = +0 except in RDN.
        ck3(FmaddS, fs(0.0), fs(1.0), fs(-0.0), RNE, fs(0.0), 0);
        ck3(FmaddS, fs(0.0), fs(1.0), fs(-0.0), RDN, fs(-0.0), 0);
        ck3(FmsubD, fd(0.0), fd(1.0), fd(0.0), RNE, fd(0.0), 0);
        ck3(FmsubD, fd(0.0), fd(1.0), fd(0.0), RDN, fd(-0.0), 0);
        ck3(FnmsubD, fd(0.0), fd(1.0), fd(0.0), RNE, fd(0.0), 0);
    }

    #[test]
    fn fma_nan_and_invalid() {
        for op in [FmaddS, FmsubS, FnmsubS, FnmaddS] {
            // inf * 0 + qNaN raises NV (the spec requires it for RISC-V).
            ck3(op, INF_S, fs(0.0), QNAN_S, RNE, QNAN_S, NV);
            ck3(op, fs(0.0), NINF_S, QNAN_PAYLOAD_S, RNE, QNAN_S, NV);
            ck3(op, QNAN_PAYLOAD_S, fs(1.0), fs(1.0), RNE, QNAN_S, 0);
            ck3(op, fs(1.0), fs(1.0), QNAN_PAYLOAD_S, RNE, QNAN_S, 0);
            ck3(op, fs(1.0), fs(1.0), SNAN_S, RNE, QNAN_S, NV);
            ck3(op, SNAN_S, fs(1.0), fs(1.0), RNE, QNAN_S, NV);
            ck3(op, fs(1.0), fs(1.0), UNBOXED_ONE, RNE, QNAN_S, 0);
            ck3(op, UNBOXED_ONE, fs(1.0), fs(1.0), RNE, QNAN_S, 0);
        }
        for op in [FmaddD, FmsubD, FnmsubD, FnmaddD] {
            ck3(op, INF_D, fd(0.0), QNAN_D, RNE, QNAN_D, NV);
            ck3(op, QNAN_PAYLOAD_D, fd(1.0), fd(1.0), RNE, QNAN_D, 0);
            ck3(op, fd(1.0), fd(1.0), SNAN_D, RNE, QNAN_D, NV);
        }
        // inf * 1 + (-inf) is invalid; the variants that subtract c are exact infinities.
        ck3(FmaddS, INF_S, fs(1.0), NINF_S, RNE, QNAN_S, NV);
        ck3(FmsubS, INF_S, fs(1.0), NINF_S, RNE, INF_S, 0);
        ck3(FnmaddS, INF_S, fs(1.0), NINF_S, RNE, QNAN_S, NV);
        ck3(FnmsubS, INF_S, fs(1.0), NINF_S, RNE, NINF_S, 0);
        ck3(FnmaddD, INF_D, fd(1.0), INF_D, RNE, NINF_D, 0);
        // Overflow through an FMA.
        ck3(FmaddS, MAX_S, fs(2.0), fs(0.0), RTZ, MAX_S, OF | NX);
    }

    // ---------------------------------------------------------------- compare

    #[test]
    fn compares() {
        let cases_s: [(FpOp, u64, u64, u64, u8); 18] = [
            (FeqS, fs(1.0), fs(1.0), 1, 0),
            (FeqS, fs(1.0), fs(2.0), 0, 0),
            (FeqS, fs(0.0), fs(-0.0), 1, 0),
            (FeqS, QNAN_S, fs(1.0), 0, 0),
            (FeqS, QNAN_S, QNAN_S, 0, 0),
            (FeqS, SNAN_S, fs(1.0), 0, NV),
            (FeqS, UNBOXED_ONE, UNBOXED_ONE, 0, 0),
            (FltS, fs(1.0), fs(2.0), 1, 0),
            (FltS, fs(2.0), fs(1.0), 0, 0),
            (FltS, fs(-0.0), fs(0.0), 0, 0),
            (FltS, QNAN_S, fs(1.0), 0, NV),
            (FltS, NINF_S, fs(-1.0), 1, 0),
            (FleS, fs(-0.0), fs(0.0), 1, 0),
            (FleS, fs(1.0), fs(1.0), 1, 0),
            (FleS, fs(2.0), fs(1.0), 0, 0),
            (FleS, fs(1.0), QNAN_S, 0, NV),
            (FleS, fs(1.0), SNAN_S, 0, NV),
            (FleS, UNBOXED_ONE, fs(1.0), 0, NV),
        ];
        for (op, a, b, want, fl) in cases_s {
            ck(op, a, b, RNE, want, fl);
        }
        let cases_d: [(FpOp, u64, u64, u64, u8); 12] = [
            (FeqD, fd(1.0), fd(1.0), 1, 0),
            (FeqD, fd(0.0), fd(-0.0), 1, 0),
            (FeqD, QNAN_D, QNAN_D, 0, 0),
            (FeqD, fd(1.0), SNAN_D, 0, NV),
            (FltD, fd(-1.0), fd(1.0), 1, 0),
            (FltD, fd(1.0), fd(1.0), 0, 0),
            (FltD, fd(1.0), QNAN_D, 0, NV),
            (FltD, fd(-0.0), fd(0.0), 0, 0),
            (FleD, fd(1.0), fd(1.0), 1, 0),
            (FleD, fd(-0.0), fd(0.0), 1, 0),
            (FleD, QNAN_D, fd(1.0), 0, NV),
            (FleD, fd(3.0), fd(2.0), 0, 0),
        ];
        for (op, a, b, want, fl) in cases_d {
            ck(op, a, b, RNE, want, fl);
        }
    }

    // ---------------------------------------------------------------- min/max

    #[test]
    fn min_max_single() {
        ck(FminS, fs(1.0), fs(2.0), RNE, fs(1.0), 0);
        ck(FmaxS, fs(1.0), fs(2.0), RNE, fs(2.0), 0);
        ck(FminS, fs(-1.0), fs(-2.0), RNE, fs(-2.0), 0);
        ck(FmaxS, fs(-1.0), fs(-2.0), RNE, fs(-1.0), 0);
        ck(FminS, NINF_S, MAX_S, RNE, NINF_S, 0);
        // -0 < +0 in either operand order.
        ck(FminS, fs(0.0), fs(-0.0), RNE, fs(-0.0), 0);
        ck(FminS, fs(-0.0), fs(0.0), RNE, fs(-0.0), 0);
        ck(FmaxS, fs(0.0), fs(-0.0), RNE, fs(0.0), 0);
        ck(FmaxS, fs(-0.0), fs(0.0), RNE, fs(0.0), 0);
        // One NaN: the other operand; signaling raises NV.
        ck(FminS, QNAN_PAYLOAD_S, fs(1.0), RNE, fs(1.0), 0);
        ck(FmaxS, fs(1.0), QNAN_S, RNE, fs(1.0), 0);
        ck(FminS, SNAN_S, fs(-3.0), RNE, fs(-3.0), NV);
        ck(FmaxS, fs(-3.0), SNAN_S, RNE, fs(-3.0), NV);
        // Two NaNs: canonical NaN.
        ck(FminS, QNAN_PAYLOAD_S, QNAN_PAYLOAD_S, RNE, QNAN_S, 0);
        ck(FmaxS, SNAN_S, QNAN_PAYLOAD_S, RNE, QNAN_S, NV);
        // Improperly boxed = canonical (quiet) NaN.
        ck(FminS, UNBOXED_ONE, fs(5.0), RNE, fs(5.0), 0);
        ck(FmaxS, fs(5.0), UNBOXED_ONE, RNE, fs(5.0), 0);
        ck(FmaxS, UNBOXED_ONE, UNBOXED_ONE, RNE, QNAN_S, 0);
        // Subnormals order correctly.
        ck(
            FminS,
            bs(0x0000_0002),
            bs(0x0000_0001),
            RNE,
            bs(0x0000_0001),
            0,
        );
        ck(
            FmaxS,
            bs(0x8000_0002),
            bs(0x8000_0001),
            RNE,
            bs(0x8000_0001),
            0,
        );
    }

    #[test]
    fn min_max_double() {
        ck(FminD, fd(1.0), fd(2.0), RNE, fd(1.0), 0);
        ck(FmaxD, fd(1.0), fd(2.0), RNE, fd(2.0), 0);
        ck(FminD, fd(-1.0), fd(-2.0), RNE, fd(-2.0), 0);
        ck(FminD, fd(0.0), fd(-0.0), RNE, fd(-0.0), 0);
        ck(FmaxD, fd(-0.0), fd(0.0), RNE, fd(0.0), 0);
        ck(FmaxD, fd(0.0), fd(-0.0), RNE, fd(0.0), 0);
        ck(FminD, QNAN_PAYLOAD_D, fd(7.0), RNE, fd(7.0), 0);
        ck(FmaxD, fd(7.0), SNAN_D, RNE, fd(7.0), NV);
        ck(FminD, QNAN_PAYLOAD_D, QNAN_PAYLOAD_D, RNE, QNAN_D, 0);
        ck(FmaxD, SNAN_D, SNAN_D, RNE, QNAN_D, NV);
        ck(FmaxD, INF_D, MAX_D, RNE, INF_D, 0);
    }

    // ---------------------------------------------------------------- sign injection

    #[test]
    fn sign_injection() {
        ck(FsgnjS, fs(1.0), fs(-2.0), RNE, fs(-1.0), 0);
        ck(FsgnjS, fs(-1.0), fs(2.0), RNE, fs(1.0), 0);
        ck(FsgnjnS, fs(1.0), fs(-2.0), RNE, fs(1.0), 0);
        ck(FsgnjnS, fs(1.0), fs(1.0), RNE, fs(-1.0), 0); // fneg
        ck(FsgnjxS, fs(-1.0), fs(-2.0), RNE, fs(1.0), 0);
        ck(FsgnjxS, fs(-1.0), fs(2.0), RNE, fs(-1.0), 0); // fabs would be x,x
        ck(FsgnjxS, fs(-1.0), fs(-1.0), RNE, fs(1.0), 0); // fabs

        // NaN payloads pass through untouched, no flags even for sNaN.
        ck(FsgnjS, SNAN_S, fs(-1.0), RNE, bs(0xff80_0001), 0);
        ck(FsgnjnS, QNAN_PAYLOAD_S, fs(-1.0), RNE, bs(0x7fc1_2345), 0);
        // Improperly boxed inputs read as the canonical NaN 0x7fc00000 (sign 0).
        ck(FsgnjS, UNBOXED_ONE, fs(-1.0), RNE, bs(0xffc0_0000), 0);
        ck(FsgnjS, fs(-1.0), UNBOXED_ONE, RNE, fs(1.0), 0);
        ck(FsgnjnS, fs(1.0), UNBOXED_ONE, RNE, fs(-1.0), 0);
        ck(FsgnjxS, fs(-1.0), 0x8000_0000_bf80_0000, RNE, fs(-1.0), 0);

        ck(FsgnjD, fd(1.0), fd(-2.0), RNE, fd(-1.0), 0);
        ck(FsgnjnD, fd(1.0), fd(-2.0), RNE, fd(1.0), 0);
        ck(FsgnjnD, fd(3.0), fd(3.0), RNE, fd(-3.0), 0);
        ck(FsgnjxD, fd(-1.0), fd(-2.0), RNE, fd(1.0), 0);
        ck(FsgnjxD, fd(-1.0), fd(2.0), RNE, fd(-1.0), 0);
        ck(FsgnjD, SNAN_D, fd(-1.0), RNE, 0xfff0_0000_0000_0001, 0);
        // D ops use all 64 bits; a boxed single is just a (negative quiet) NaN pattern.
        ck(FsgnjD, fs(1.0), fd(1.0), RNE, 0x7fff_ffff_3f80_0000, 0);
    }

    // ---------------------------------------------------------------- classify

    #[test]
    fn classify_single() {
        let cases: [(u32, u64); 14] = [
            (0xff80_0000, 1 << 0), // -inf
            (0xbf80_0000, 1 << 1), // -1.0
            (0xff7f_ffff, 1 << 1), // -max
            (0x8000_0001, 1 << 2), // -min subnormal
            (0x807f_ffff, 1 << 2), // -max subnormal
            (0x8000_0000, 1 << 3), // -0
            (0x0000_0000, 1 << 4), // +0
            (0x0000_0001, 1 << 5), // +subnormal
            (0x0080_0000, 1 << 6), // +min normal
            (0x3f80_0000, 1 << 6), // +1.0
            (0x7f80_0000, 1 << 7), // +inf
            (0x7f80_0001, 1 << 8), // sNaN
            (0xffbf_ffff, 1 << 8), // negative sNaN
            (0x7fc0_0000, 1 << 9), // qNaN
        ];
        for (bits, want) in cases {
            ck(FclassS, bs(bits), 0, RNE, want, 0);
        }
        ck(FclassS, bs(0xffc0_0001), 0, RNE, 0x200, 0);
        // Improperly boxed: the canonical NaN, i.e. quiet NaN.
        ck(FclassS, UNBOXED_ONE, 0, RNE, 0x200, 0);
        ck(FclassS, 0x0000_0000_7f80_0001, 0, RNE, 0x200, 0);
    }

    #[test]
    fn classify_double() {
        let cases: [(u64, u64); 12] = [
            (0xfff0_0000_0000_0000, 1 << 0),
            (0xbff0_0000_0000_0000, 1 << 1),
            (0x8000_0000_0000_0001, 1 << 2),
            (0x800f_ffff_ffff_ffff, 1 << 2),
            (0x8000_0000_0000_0000, 1 << 3),
            (0x0000_0000_0000_0000, 1 << 4),
            (0x000f_ffff_ffff_ffff, 1 << 5),
            (0x0010_0000_0000_0000, 1 << 6),
            (0x7ff0_0000_0000_0000, 1 << 7),
            (0x7ff0_0000_0000_0001, 1 << 8),
            (0x7ff7_ffff_ffff_ffff, 1 << 8),
            (0x7ff8_0000_0000_0000, 1 << 9),
        ];
        for (bits, want) in cases {
            ck(FclassD, bits, 0, RNE, want, 0);
        }
        // A NaN-boxed single viewed as a double is a negative quiet NaN.
        ck(FclassD, fs(1.0), 0, RNE, 0x200, 0);
    }

    // ---------------------------------------------------------------- float -> int

    #[test]
    fn fcvt_w_s_rounding() {
        // value, then the result for RNE, RTZ, RDN, RUP, RMM.
        let cases: [(f32, [i32; 5]); 6] = [
            (2.5, [2, 2, 2, 3, 3]),
            (-2.5, [-2, -2, -3, -2, -3]),
            (3.5, [4, 3, 3, 4, 4]),
            (-3.5, [-4, -3, -4, -3, -4]),
            (2.75, [3, 2, 2, 3, 3]),
            (-0.25, [0, 0, -1, 0, 0]),
        ];
        for (v, wants) in cases {
            for rm in ALL_RM {
                let want = wants[rm as usize] as i64 as u64;
                ck(FcvtWS, fs(v), 0, rm, want, NX);
                ck(FcvtLS, fs(v), 0, rm, want, NX);
                ck(FcvtWD, fd(f64::from(v)), 0, rm, want, NX);
                ck(FcvtLD, fd(f64::from(v)), 0, rm, want, NX);
            }
        }
        ck(FcvtWS, fs(-7.0), 0, RNE, (-7i64) as u64, 0);
        ck(FcvtWS, fs(-0.0), 0, RNE, 0, 0);
        ck(FcvtWD, fd(123456789.0), 0, RTZ, 123456789, 0);
    }

    #[test]
    fn fcvt_w_saturation() {
        const I32_MAX: u64 = 0x7fff_ffff;
        const I32_MIN: u64 = 0xffff_ffff_8000_0000; // sign-extended
        for op_nan in [QNAN_S, SNAN_S, QNAN_PAYLOAD_S, bs(0xffc0_0000), UNBOXED_ONE] {
            ck(FcvtWS, op_nan, 0, RNE, I32_MAX, NV);
        }
        ck(FcvtWS, INF_S, 0, RNE, I32_MAX, NV);
        ck(FcvtWS, NINF_S, 0, RNE, I32_MIN, NV);
        ck(FcvtWS, fs(2147483648.0), 0, RNE, I32_MAX, NV); // 2^31
        ck(FcvtWS, fs(-2147483648.0), 0, RNE, I32_MIN, 0); // -2^31 fits
        ck(FcvtWS, fs(3e9), 0, RNE, I32_MAX, NV);
        ck(FcvtWS, fs(-3e9), 0, RNE, I32_MIN, NV);
        ck(FcvtWS, MAX_S, 0, RTZ, I32_MAX, NV);

        ck(FcvtWD, QNAN_D, 0, RNE, I32_MAX, NV);
        ck(FcvtWD, 0xfff8_0000_0000_0001, 0, RNE, I32_MAX, NV); // negative NaN
        ck(FcvtWD, SNAN_D, 0, RNE, I32_MAX, NV);
        ck(FcvtWD, INF_D, 0, RNE, I32_MAX, NV);
        ck(FcvtWD, NINF_D, 0, RNE, I32_MIN, NV);
        // 2^31 - 0.5: RTZ fits (inexact), RNE rounds to 2^31 which overflows.
        ck(FcvtWD, fd(2147483647.5), 0, RTZ, I32_MAX, NX);
        ck(FcvtWD, fd(2147483647.5), 0, RNE, I32_MAX, NV);
        ck(FcvtWD, fd(2147483647.5), 0, RDN, I32_MAX, NX);
        // -2^31 - 0.5: RTZ/RNE(tie to even -2^31) fit, RDN/RMM give -2^31-1: overflow.
        ck(FcvtWD, fd(-2147483648.5), 0, RTZ, I32_MIN, NX);
        ck(FcvtWD, fd(-2147483648.5), 0, RNE, I32_MIN, NX);
        ck(FcvtWD, fd(-2147483648.5), 0, RDN, I32_MIN, NV);
        ck(FcvtWD, fd(-2147483648.5), 0, RMM, I32_MIN, NV);
    }

    #[test]
    fn fcvt_wu() {
        const U32_MAX: u64 = u64::MAX; // 0xffffffff sign-extended
        for nan in [QNAN_S, SNAN_S, QNAN_PAYLOAD_S, UNBOXED_ONE] {
            ck(FcvtWuS, nan, 0, RNE, U32_MAX, NV);
        }
        ck(FcvtWuS, INF_S, 0, RNE, U32_MAX, NV);
        ck(FcvtWuS, NINF_S, 0, RNE, 0, NV);
        ck(FcvtWuS, fs(-1.0), 0, RNE, 0, NV);
        ck(FcvtWuS, fs(-3e9), 0, RTZ, 0, NV);
        ck(FcvtWuS, fs(4294967296.0), 0, RNE, U32_MAX, NV); // 2^32

        // Results >= 2^31 are sign-extended into rd.
        ck(FcvtWuS, fs(2147483648.0), 0, RNE, 0xffff_ffff_8000_0000, 0);
        ck(FcvtWuS, fs(3e9), 0, RNE, 0xffff_ffff_b2d0_5e00, 0); // 3e9 = 0xb2d05e00
        ck(FcvtWuS, fs(7.0), 0, RNE, 7, 0);
        ck(FcvtWuS, fs(-0.0), 0, RNE, 0, 0);
        ck(FcvtWuS, fs(2.5), 0, RMM, 3, NX);
        // (-1, 0): rounds to 0 -> only NX; rounds to -1 -> NV and 0.
        let m05 = fs(-0.5);
        ck(FcvtWuS, m05, 0, RTZ, 0, NX);
        ck(FcvtWuS, m05, 0, RNE, 0, NX); // tie to even 0
        ck(FcvtWuS, m05, 0, RUP, 0, NX);
        ck(FcvtWuS, m05, 0, RDN, 0, NV);
        ck(FcvtWuS, m05, 0, RMM, 0, NV);
        ck(FcvtWuS, fs(-0.75), 0, RNE, 0, NV);
        ck(FcvtWuS, fs(-0.75), 0, RTZ, 0, NX);
        ck(FcvtWuS, bs(0x8000_0001), 0, RNE, 0, NX); // -min subnormal

        ck(FcvtWuD, QNAN_D, 0, RNE, U32_MAX, NV);
        ck(FcvtWuD, NINF_D, 0, RNE, 0, NV);
        ck(FcvtWuD, INF_D, 0, RNE, U32_MAX, NV);
        ck(FcvtWuD, fd(4294967295.0), 0, RNE, U32_MAX, 0);
        ck(FcvtWuD, fd(4294967295.5), 0, RTZ, U32_MAX, NX);
        ck(FcvtWuD, fd(4294967295.5), 0, RUP, U32_MAX, NV);
        ck(FcvtWuD, fd(2147483648.0), 0, RNE, 0xffff_ffff_8000_0000, 0);
        ck(FcvtWuD, fd(2147483647.0), 0, RNE, 0x7fff_ffff, 0);
        ck(FcvtWuD, fd(-0.5), 0, RTZ, 0, NX);
        ck(FcvtWuD, fd(-0.5), 0, RDN, 0, NV);
        ck(FcvtWuD, fd(-2.0), 0, RNE, 0, NV);
    }

    #[test]
    fn fcvt_l_and_lu() {
        const I64_MAX: u64 = 0x7fff_ffff_ffff_ffff;
        const I64_MIN: u64 = 0x8000_0000_0000_0000;
        let two63_s = fs(9223372036854775808.0);
        let two64_s = fs(18446744073709551616.0);
        ck(FcvtLS, QNAN_S, 0, RNE, I64_MAX, NV);
        ck(FcvtLS, bs(0xff80_0001), 0, RNE, I64_MAX, NV); // negative sNaN
        ck(FcvtLS, INF_S, 0, RNE, I64_MAX, NV);
        ck(FcvtLS, NINF_S, 0, RNE, I64_MIN, NV);
        ck(FcvtLS, two63_s, 0, RNE, I64_MAX, NV);
        ck(FcvtLS, two63_s | u64::from(SIGN_S), 0, RNE, I64_MIN, 0); // -2^63 fits
        ck(FcvtLS, fs(3e9), 0, RNE, 3_000_000_000, 0);
        ck(FcvtLS, fs(-3e9), 0, RNE, (-3_000_000_000i64) as u64, 0);
        ck(FcvtLuS, QNAN_S, 0, RNE, u64::MAX, NV);
        ck(FcvtLuS, INF_S, 0, RNE, u64::MAX, NV);
        ck(FcvtLuS, NINF_S, 0, RNE, 0, NV);
        ck(FcvtLuS, two64_s, 0, RNE, u64::MAX, NV);
        ck(FcvtLuS, two63_s, 0, RNE, I64_MIN, 0); // 2^63 fits unsigned
        ck(FcvtLuS, fs(-1.0), 0, RNE, 0, NV);
        ck(FcvtLuS, fs(-0.5), 0, RTZ, 0, NX);
        ck(FcvtLuS, fs(-0.5), 0, RDN, 0, NV);
        ck(FcvtLuS, fs(-0.75), 0, RNE, 0, NV);

        ck(FcvtLD, QNAN_D, 0, RNE, I64_MAX, NV);
        ck(FcvtLD, INF_D, 0, RNE, I64_MAX, NV);
        ck(FcvtLD, NINF_D, 0, RNE, I64_MIN, NV);
        ck(FcvtLD, 0x43e0_0000_0000_0000, 0, RNE, I64_MAX, NV); // 2^63
        ck(FcvtLD, 0xc3e0_0000_0000_0000, 0, RNE, I64_MIN, 0); // -2^63
        ck(FcvtLD, 0xc3e0_0000_0000_0001, 0, RNE, I64_MIN, NV); // just below -2^63

        // 2^63 - 1024, the largest double below 2^63.
        ck(
            FcvtLD,
            0x43df_ffff_ffff_ffff,
            0,
            RNE,
            0x7fff_ffff_ffff_fc00,
            0,
        );
        ck(FcvtLuD, QNAN_D, 0, RNE, u64::MAX, NV);
        ck(FcvtLuD, NINF_D, 0, RNE, 0, NV);
        ck(FcvtLuD, 0x43f0_0000_0000_0000, 0, RNE, u64::MAX, NV); // 2^64

        // 2^64 - 2048, the largest double below 2^64.
        ck(
            FcvtLuD,
            0x43ef_ffff_ffff_ffff,
            0,
            RNE,
            0xffff_ffff_ffff_f800,
            0,
        );
        ck(FcvtLuD, fd(-0.5), 0, RUP, 0, NX);
        ck(FcvtLuD, fd(-0.5), 0, RMM, 0, NV);
        ck(FcvtLuD, fd(-1.0), 0, RTZ, 0, NV);
        ck(FcvtLuD, fd(-0.0), 0, RNE, 0, 0);
        ck(FcvtLuD, fd(2.5), 0, RNE, 2, NX);
    }

    // ---------------------------------------------------------------- int -> float

    #[test]
    fn fcvt_from_int_rounding() {
        // 2^24 + 3 is halfway between 2^24+2 (0x4b800001) and 2^24+4 (0x4b800002).
        let want = [
            0x4b80_0002,
            0x4b80_0001,
            0x4b80_0001,
            0x4b80_0002,
            0x4b80_0002,
        ];
        // -(2^24 + 1) is halfway between -2^24 (0xcb800000) and -(2^24+2) (0xcb800001).
        let want_neg = [
            0xcb80_0000,
            0xcb80_0000,
            0xcb80_0001,
            0xcb80_0000,
            0xcb80_0001,
        ];
        for rm in ALL_RM {
            let w = bs(want[rm as usize]);
            ck(FcvtSL, 16_777_219, 0, rm, w, NX);
            ck(FcvtSLu, 16_777_219, 0, rm, w, NX);
            ck(FcvtSW, 16_777_219, 0, rm, w, NX);
            ck(FcvtSWu, 16_777_219, 0, rm, w, NX);
            let wn = bs(want_neg[rm as usize]);
            ck(FcvtSL, (-16_777_217i64) as u64, 0, rm, wn, NX);
            ck(FcvtSW, (-16_777_217i64) as u64, 0, rm, wn, NX);
        }
        // 2^24 + 1 (tie): RNE to even 2^24, RMM/RUP away.
        ck(FcvtSL, 16_777_217, 0, RNE, bs(0x4b80_0000), NX);
        ck(FcvtSL, 16_777_217, 0, RMM, bs(0x4b80_0001), NX);
        // 2^53 + 1 to double: tie between 2^53 and 2^53 + 2.
        let want: [u64; 5] = [
            0x4340_0000_0000_0000,
            0x4340_0000_0000_0000,
            0x4340_0000_0000_0000,
            0x4340_0000_0000_0001,
            0x4340_0000_0000_0001,
        ];
        for rm in ALL_RM {
            ck(FcvtDL, (1u64 << 53) + 1, 0, rm, want[rm as usize], NX);
            ck(FcvtDLu, (1u64 << 53) + 1, 0, rm, want[rm as usize], NX);
        }
    }

    #[test]
    fn fcvt_from_int_values() {
        // W/WU take the low 32 bits of rs1 and ignore the upper half.
        ck(FcvtSW, 0x1234_5678_0000_0001, 0, RNE, fs(1.0), 0);
        ck(FcvtSW, 0x0000_0000_ffff_ffff, 0, RNE, fs(-1.0), 0);
        ck(FcvtSW, 0xffff_ffff_8000_0000, 0, RNE, bs(0xcf00_0000), 0); // -2^31
        ck(FcvtSWu, 0x0000_0000_ffff_ffff, 0, RNE, bs(0x4f80_0000), NX); // -> 2^32
        ck(FcvtSWu, 0x0000_0000_ffff_ffff, 0, RTZ, bs(0x4f7f_ffff), NX);
        ck(FcvtSWu, 0xffff_ffff_0000_0000, 0, RNE, fs(0.0), 0);
        ck(FcvtSL, u64::MAX, 0, RNE, fs(-1.0), 0);
        ck(FcvtSL, 0x8000_0000_0000_0000, 0, RNE, bs(0xdf00_0000), 0); // -2^63
        ck(FcvtSLu, u64::MAX, 0, RNE, bs(0x5f80_0000), NX); // 2^64
        ck(FcvtSLu, u64::MAX, 0, RTZ, bs(0x5f7f_ffff), NX);
        ck(FcvtSLu, 0, 0, RNE, fs(0.0), 0);
        // Zero converts to +0 even when rounding down.
        ck(FcvtSL, 0, 0, RDN, fs(0.0), 0);

        ck(
            FcvtDW,
            0xffff_ffff_8000_0000,
            0,
            RNE,
            0xc1e0_0000_0000_0000,
            0,
        );
        ck(FcvtDW, 0xdead_beef_0000_0007, 0, RNE, fd(7.0), 0);
        ck(
            FcvtDWu,
            0x0000_0000_ffff_ffff,
            0,
            RNE,
            0x41ef_ffff_ffe0_0000,
            0,
        );
        ck(
            FcvtDWu,
            0xffff_ffff_ffff_ffff,
            0,
            RDN,
            0x41ef_ffff_ffe0_0000,
            0,
        );
        ck(FcvtDL, u64::MAX, 0, RNE, fd(-1.0), 0);
        ck(
            FcvtDL,
            0x8000_0000_0000_0000,
            0,
            RNE,
            0xc3e0_0000_0000_0000,
            0,
        );
        ck(
            FcvtDL,
            0x7fff_ffff_ffff_ffff,
            0,
            RNE,
            0x43e0_0000_0000_0000,
            NX,
        );
        ck(
            FcvtDL,
            0x7fff_ffff_ffff_ffff,
            0,
            RTZ,
            0x43df_ffff_ffff_ffff,
            NX,
        );
        ck(FcvtDLu, u64::MAX, 0, RNE, 0x43f0_0000_0000_0000, NX);
        ck(FcvtDLu, u64::MAX, 0, RTZ, 0x43ef_ffff_ffff_ffff, NX);
    }

    // ---------------------------------------------------------------- float <-> float

    #[test]
    fn fcvt_s_d_and_d_s() {
        ck(FcvtSD, fd(1.5), 0, RNE, fs(1.5), 0);
        ck(FcvtSD, fd(-0.0), 0, RNE, fs(-0.0), 0);
        ck(FcvtSD, INF_D, 0, RNE, INF_S, 0);
        ck(FcvtSD, NINF_D, 0, RNE, NINF_S, 0);
        // 1/3 in double, rounded to single: the dropped bits are 1010... (above half).
        ck(FcvtSD, 0x3fd5_5555_5555_5555, 0, RNE, bs(0x3eaa_aaab), NX);
        ck(FcvtSD, 0x3fd5_5555_5555_5555, 0, RTZ, bs(0x3eaa_aaaa), NX);
        // NaNs become the canonical single NaN; NV only for signaling.
        ck(FcvtSD, QNAN_PAYLOAD_D, 0, RNE, QNAN_S, 0);
        ck(FcvtSD, SNAN_D, 0, RNE, QNAN_S, NV);
        ck(FcvtSD, 0xfff0_0000_0000_0001, 0, RNE, QNAN_S, NV);
        // 1e300 overflows single; 1e-300 underflows.
        let big = 0x7e37_e43c_8800_759c;
        let tiny = 0x01a5_6e1f_c2f8_f359;
        ck(FcvtSD, big, 0, RNE, INF_S, OF | NX);
        ck(FcvtSD, big, 0, RTZ, MAX_S, OF | NX);
        ck(FcvtSD, big, 0, RDN, MAX_S, OF | NX);
        ck(FcvtSD, big, 0, RUP, INF_S, OF | NX);
        ck(
            FcvtSD,
            big | SIGN_D,
            0,
            RUP,
            MAX_S | u64::from(SIGN_S),
            OF | NX,
        );
        ck(FcvtSD, tiny, 0, RNE, fs(0.0), UF | NX);
        ck(FcvtSD, tiny, 0, RUP, bs(0x0000_0001), UF | NX);
        // 2^-149 exactly is the smallest subnormal: exact, no flags.
        ck(FcvtSD, 0x36a0_0000_0000_0000, 0, RNE, bs(0x0000_0001), 0);

        ck(FcvtDS, fs(1.0), 0, RNE, 0x3ff0_0000_0000_0000, 0);
        ck(FcvtDS, fs(-0.0), 0, RNE, SIGN_D, 0);
        ck(FcvtDS, bs(0x0000_0001), 0, RNE, 0x36a0_0000_0000_0000, 0);
        ck(FcvtDS, NINF_S, 0, RNE, NINF_D, 0);
        ck(FcvtDS, QNAN_PAYLOAD_S, 0, RNE, QNAN_D, 0);
        ck(FcvtDS, SNAN_S, 0, RNE, QNAN_D, NV);
        ck(FcvtDS, UNBOXED_ONE, 0, RNE, QNAN_D, 0);
    }

    // ---------------------------------------------------------------- moves

    #[test]
    fn moves() {
        // FMV.X.W: low 32 bits sign-extended, no NaN-box ck3.
        ck(
            FmvXW,
            0xffff_ffff_8000_0000,
            0,
            RNE,
            0xffff_ffff_8000_0000,
            0,
        );
        ck(FmvXW, 0x0000_0000_7fff_ffff, 0, RNE, 0x7fff_ffff, 0);
        ck(
            FmvXW,
            0x1234_5678_8765_4321,
            0,
            RNE,
            0xffff_ffff_8765_4321,
            0,
        );
        ck(FmvXW, SNAN_S, 0, RNE, 0x7f80_0001, 0);
        // FMV.W.X: low 32 bits of x, NaN-boxed.
        ck(
            FmvWX,
            0x1234_5678_8765_4321,
            0,
            RNE,
            0xffff_ffff_8765_4321,
            0,
        );
        ck(FmvWX, 0x0000_0000_7f80_0001, 0, RNE, SNAN_S, 0);
        // 64-bit moves are bit-exact.
        ck(FmvXD, SNAN_D, 0, RNE, SNAN_D, 0);
        ck(
            FmvXD,
            0x0000_0000_3f80_0000,
            0,
            RNE,
            0x0000_0000_3f80_0000,
            0,
        );
        ck(
            FmvDX,
            0xfff4_0000_dead_beef,
            0,
            RNE,
            0xfff4_0000_dead_beef,
            0,
        );
    }

    #[test]
    fn results_are_nan_boxed() {
        // Every single-precision f destination is boxed, including zero results.
        for (op, a, b) in [
            (FaddS, fs(0.0), fs(0.0)),
            (FsqrtS, fs(0.0), 0),
            (FminS, fs(0.0), fs(0.0)),
            (FsgnjS, fs(0.0), fs(0.0)),
            (FcvtSW, 0, 0),
            (FcvtSD, 0, 0),
            (FmvWX, 0, 0),
        ] {
            let (r, _) = ex(op, a, b, RNE);
            assert_eq!(r, 0xffff_ffff_0000_0000, "{op:?}");
        }
    }

    #[test]
    fn flags_and_rounding_are_per_thread() {
        // Two threads hammer different rounding modes: a shared rounding mode or flag word
        // would make some results or flags wrong.
        let run = |rm: u8, want: u64, want_fl: u8| {
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let (r, fl) = execute(FdivS, fs(1.0), fs(3.0), 0, rm);
                    assert_eq!((r, fl), (bs(want as u32), want_fl), "iteration {i}");
                    // An exact op in between must report no flags.
                    assert_eq!(execute(FaddD, fd(1.0), fd(2.0), 0, rm), (fd(3.0), 0));
                }
            })
        };
        let t1 = run(RUP, 0x3eaa_aaab, NX);
        let t2 = run(RTZ, 0x3eaa_aaaa, NX);
        t1.join().expect("thread 1");
        t2.join().expect("thread 2");
    }
}
