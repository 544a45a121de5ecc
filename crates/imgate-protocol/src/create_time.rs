//! WeChat's `CreateTime`: unix seconds, or — in the seed's test — `YYYY-MM-DD HH:MM:SS`.

use time::{PrimitiveDateTime, UtcOffset, macros::format_description};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("CreateTime {0:?} is neither unix seconds nor \"YYYY-MM-DD HH:MM:SS\", from 1970 to the year 9999")]
pub struct CreateTimeError(pub String);

/// The latest `CreateTime` taken: 9999-12-31 23:59:59 UTC. Frames carry `send_time` to
/// clients that read it as a date (JavaScript's `Date` ends at ±8.64e15 ms).
pub const MAX_CREATE_TIME: i64 = 253_402_300_799;

/// Unix seconds from a `CreateTime`, from 1970 to the year 9999. A date-time without a
/// zone is read in `zone` (China's UTC+8 unless configured otherwise).
pub fn parse_create_time(raw: &str, zone: UtcOffset) -> Result<i64, CreateTimeError> {
    let s = raw.trim();
    let refused = || CreateTimeError(crate::send::shown(raw));
    let t = match s.parse::<i64>() {
        Ok(n) => n,
        Err(_) => {
            let long = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            let iso = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            PrimitiveDateTime::parse(s, long)
                .or_else(|_| PrimitiveDateTime::parse(s, iso))
                .map(|t| t.assume_offset(zone).unix_timestamp())
                .map_err(|_| refused())?
        }
    };
    if (0..=MAX_CREATE_TIME).contains(&t) { Ok(t) } else { Err(refused()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, zone_h: i8, want: Option<i64>) {
        let zone = UtcOffset::from_hms(zone_h, 0, 0).unwrap();
        assert_eq!(parse_create_time(input, zone).ok(), want, "input {input:?}");
    }

    #[test]
    fn create_time_forms() {
        check("1348831860", 8, Some(1348831860));
        check(" 1348831860\n", 8, Some(1348831860));
        // The seed's value, read as Beijing time.
        check("1976-04-10 12:21:47", 8, Some(197958107));
        check("1976-04-10 12:21:47", 0, Some(197986907));
        check("1976-04-10T12:21:47", 8, Some(197958107));
        check("yesterday", 8, None);
        check("", 8, None);
        check("1976-13-10 12:21:47", 8, None);
        check("1000000000000000000", 8, None);
        check("-1000000000000000000", 8, None);
        check("-1", 8, None);
        check("253402300799", 0, Some(253402300799));
        check("253402300800", 0, None);
        check("1969-12-31 23:59:59", 0, None);
    }
}
