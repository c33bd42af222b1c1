//! A fixed-capacity string for plain-old-data structs that live in shared
//! memory (no pointers, no heap).

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct FixedStr<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        FixedStr {
            len: 0,
            bytes: [0; N],
        }
    }
}

impl<const N: usize> FixedStr<N> {
    /// Stores `s`, cut at a character boundary if it does not fit.
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut f = FixedStr::default();
        f.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        f.len = end as u16;
        f
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from a &str cut at a character boundary.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `None` when empty, as SQL NULL.
    pub fn to_option(&self) -> Option<String> {
        if self.is_empty() {
            None
        } else {
            Some(self.as_str().to_string())
        }
    }
}

impl<const N: usize> std::fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_truncates_at_char_boundary() {
        assert_eq!(FixedStr::<8>::new("abc").as_str(), "abc");
        assert_eq!(FixedStr::<4>::new("abcdef").as_str(), "abcd");
        assert_eq!(FixedStr::<4>::new("abcé").as_str(), "abc");
        assert_eq!(FixedStr::<4>::new("").to_option(), None);
    }
}
