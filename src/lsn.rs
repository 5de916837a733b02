//! Log sequence numbers: a position in PostgreSQL's write-ahead log, and its `X/Y` text form.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered like the log itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Lsn {
    fn from(position: u64) -> Self {
        Lsn(position)
    }
}

/// PostgreSQL's text form: the high and low 32 bits in uppercase hex, e.g. `0/16B3748`.
impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand rather than with `{:X}`: every event's `x-commit-lsn` header is
        // this text, and the formatting machinery cost more than the rest of that header.
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut text = [0u8; 17];
        let mut len = 0;
        for (index, half) in [(self.0 >> 32) as u32, self.0 as u32]
            .into_iter()
            .enumerate()
        {
            if index == 1 {
                text[len] = b'/';
                len += 1;
            }
            let digits = (8 - half.leading_zeros() as usize / 4).max(1);
            for shift in (0..digits).rev() {
                text[len] = DIGITS[((half >> (shift * 4)) & 0xF) as usize];
                len += 1;
            }
        }
        f.pad(std::str::from_utf8(&text[..len]).expect("hex digits are ASCII"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not an LSN: expected two hexadecimal numbers of up to 8 digits separated by a slash, e.g. 0/16B3748"
)]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(invalid)?;
        let half = |digits: &str| {
            if digits.is_empty()
                || digits.len() > 8
                || !digits.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid());
            }
            u32::from_str_radix(digits, 16).map_err(|_| invalid())
        };
        Ok(Lsn(u64::from(half(high)?) << 32 | u64::from(half(low)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_matches_postgres() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert_eq!("0/16b3748".parse(), Ok(Lsn(0x16B3748)));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse(), Ok(Lsn(u64::MAX)));
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "0/G",
            "123456789/0",
            "0/+1",
            "0/1/2",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(position in any::<u64>()) {
            prop_assert_eq!(Lsn(position).to_string().parse::<Lsn>(), Ok(Lsn(position)));
        }
    }
}
