//! CRC32C combination: the CRC of `a ++ b` from `crc(a)`, `crc(b)` and the length of `b`,
//! without reading either again.
//!
//! Appending `n` bytes multiplies a CRC by x^(8n) modulo the (reflected) Castagnoli polynomial,
//! then adds the CRC of those bytes; x^(8n) is put together from a table of x^(2^k) in
//! O(log n) carry-less multiplications of 32 steps each (the method of zlib's
//! `crc32_combine`). The `crc32c` crate's own `crc32c_combine` squares 32×32 bit matrices
//! instead: for the store's ~300 KiB batches it costs more instructions than computing the CRC
//! again with the CPU's CRC32 instruction, where this costs a few thousand.

/// The Castagnoli polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the polynomial (reflected: bit 31 is x^0). `a` must not be zero.
const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `POWERS[k]` = x^(2^k) modulo the polynomial.
const POWERS: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 32 {
        t[k] = p;
        p = multiply(p, p);
        k += 1;
    }
    t
};

/// x^(n * 2^k) modulo the polynomial; never zero.
fn x_pow(mut n: u64, mut k: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multiply(POWERS[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of `a ++ b`, given `crc1` = CRC32C of `a`, `crc2` = CRC32C of `b` and
/// `len2` = the length of `b` in bytes.
pub fn crc32c_combine(crc1: u32, crc2: u32, len2: usize) -> u32 {
    // x^(8 * len2) = x^(len2 * 2^3).
    multiply(x_pow(len2 as u64, 3), crc1) ^ crc2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges() {
        let a = b"ferry carries logs";
        assert_eq!(crc32c_combine(crc32c::crc32c(a), 0, 0), crc32c::crc32c(a));
        let big = vec![0xA5u8; 1 << 20];
        assert_eq!(
            crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(&big), big.len()),
            crc32c::crc32c_append(crc32c::crc32c(a), &big)
        );
    }

    proptest! {
        #[test]
        fn equals_the_crc_of_the_concatenation(
            a in prop::collection::vec(any::<u8>(), 0..300),
            b in prop::collection::vec(any::<u8>(), 0..3000),
        ) {
            let whole = crc32c::crc32c_append(crc32c::crc32c(&a), &b);
            prop_assert_eq!(crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()), whole);
            prop_assert_eq!(crc32c::crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()), whole);
        }
    }
}
