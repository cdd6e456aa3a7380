//! Byte sizes as users write them: `100G`, `1M`, `64KiB`, `4096`.
//!
//! Suffixes are binary (K = 1024), as `truncate`, `fio` and `qemu-img` read
//! them. A size is parsed once, at the edge, into a [`ByteSize`].

use std::fmt;
use std::str::FromStr;

/// A number of bytes, parsed from `N[K|M|G|T|P][i][B]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a size string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a size: {reason} (write it like 4096, 64K, 1M, 100G or 2T)")]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;
    pub const TIB: u64 = 1 << 40;

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| SizeError {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, suffix) = trimmed.split_at(digits_end);
        if digits.is_empty() {
            return Err(error("it does not start with a number"));
        }
        let number: u64 = digits
            .parse()
            .map_err(|_| error("the number is too large"))?;
        let multiplier = match suffix.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => Self::KIB,
            "M" | "MB" | "MIB" => Self::MIB,
            "G" | "GB" | "GIB" => Self::GIB,
            "T" | "TB" | "TIB" => Self::TIB,
            "P" | "PB" | "PIB" => Self::TIB << 10,
            _ => return Err(error("the unit is not one of K, M, G, T, P")),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| error("it does not fit in 64 bits"))
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact form: `100G`, `1536K`, `4097`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (ByteSize::TIB, "T"),
            (ByteSize::GIB, "G"),
            (ByteSize::MIB, "M"),
            (ByteSize::KIB, "K"),
        ];
        for (unit, suffix) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{}", self.0 / unit, suffix);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A size for humans, rounded: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("64K".parse(), Ok(ByteSize(64 << 10)));
        assert_eq!("1MiB".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("100g".parse(), Ok(ByteSize(100 << 30)));
        assert_eq!("2T".parse(), Ok(ByteSize(2 << 40)));
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        let error = "ten".parse::<ByteSize>().unwrap_err();
        assert!(error.to_string().contains("100G"), "{error}");
        assert!("10X".parse::<ByteSize>().is_err());
        assert!("99999999999P".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_exactly() {
        assert_eq!(ByteSize(100 << 30).to_string(), "100G");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536K");
        assert_eq!(ByteSize(4097).to_string(), "4097");
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
