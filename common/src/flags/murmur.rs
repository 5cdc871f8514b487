//! MurmurHash3 x86 32-bit over the concatenation of several byte slices, so
//! `flagKey + targetingKey` is hashed without building the string.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline]
fn mix_k(mut k: u32) -> u32 {
    k = k.wrapping_mul(C1);
    k = k.rotate_left(15);
    k.wrapping_mul(C2)
}

/// MurmurHash3_x86_32 of `parts` concatenated, with the given seed.
pub(crate) fn murmur3_32(parts: &[&[u8]], seed: u32) -> u32 {
    let mut h = seed;
    let mut block = [0u8; 4];
    let mut fill = 0usize;
    let mut len: u32 = 0;
    for part in parts {
        let mut p: &[u8] = part;
        len = len.wrapping_add(p.len() as u32);
        // Complete a block left partial by the previous part.
        while fill > 0 && fill < 4 && !p.is_empty() {
            block[fill] = p[0];
            fill += 1;
            p = &p[1..];
        }
        if fill == 4 {
            h ^= mix_k(u32::from_le_bytes(block));
            h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
            fill = 0;
        }
        let mut chunks = p.chunks_exact(4);
        for c in &mut chunks {
            h ^= mix_k(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        }
        for &b in chunks.remainder() {
            block[fill] = b;
            fill += 1;
        }
    }
    if fill > 0 {
        let mut k: u32 = 0;
        for i in (0..fill).rev() {
            k = (k << 8) | u32::from(block[i]);
        }
        h ^= mix_k(k);
    }
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_crate_for_any_split() {
        let inputs = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "headerColoruser@example.com",
            "flag-keyuser-1234567",
            "ünïcödé✓",
        ];
        for s in inputs {
            let want = murmur3::murmur3_32(&mut s.as_bytes(), 0).unwrap();
            assert_eq!(murmur3_32(&[s.as_bytes()], 0), want, "{s:?}");
            for cut in 0..=s.len() {
                let (a, b) = s.as_bytes().split_at(cut);
                assert_eq!(murmur3_32(&[a, b], 0), want, "{s:?} cut {cut}");
                for cut2 in cut..=s.len() {
                    let (b1, b2) = b.split_at(cut2 - cut);
                    assert_eq!(murmur3_32(&[a, b1, b2], 0), want);
                }
            }
        }
    }

    #[test]
    fn known_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3_32(&[b""], 0), 0);
        assert_eq!(murmur3_32(&[b""], 1), 0x514E_28B7);
        assert_eq!(murmur3_32(&[b"Hello, world!"], 1234), 0xFAF6_CDB3);
        assert_eq!(
            murmur3_32(
                &[b"The quick brown fox jumps over the lazy dog"],
                0x9747_b28c
            ),
            0x2FA8_26CD
        );
    }
}
