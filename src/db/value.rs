//! PostgreSQL values ↔ JSON, without losing precision.
//!
//! [`ColumnDecoder`] decodes any binary result column the engine may meet into a
//! `serde_json::Value`: numeric becomes an exact decimal string, int8 beyond 2^53 a
//! string, reg* and oid the numeric oid, enums their label, arrays JSON arrays. A type
//! it cannot decode is an error that names the column type and says to cast it.
//! [`Bind`] sends a JSON value as a text-format parameter, so PostgreSQL parses it
//! with the input function of the type it inferred at prepare time.

use std::error::Error;
use std::fmt::Write as _;

use bytes::BytesMut;
use postgres_types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use serde_json::{Number, Value};

type BoxError = Box<dyn Error + Sync + Send>;

const MAX_SAFE_INT: i64 = 9_007_199_254_740_991;

/// How a column's values become JSON, chosen once per column rather than per value.
#[derive(Clone, Copy)]
pub struct ColumnDecoder(Decoder);

impl ColumnDecoder {
    pub fn new(ty: &Type) -> ColumnDecoder {
        ColumnDecoder(match ty.kind() {
            Kind::Simple => scalar(ty).unwrap_or(decode),
            _ => decode,
        })
    }

    /// `raw` (a column's binary value, `None` for NULL) of type `ty` as JSON.
    pub fn decode(self, ty: &Type, raw: Option<&[u8]>) -> Result<Value, BoxError> {
        match raw {
            None => Ok(Value::Null),
            Some(raw) => (self.0)(ty, raw),
        }
    }
}

/// A column's value as the server sent it, for [`ColumnDecoder`].
pub struct Raw<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Whether [`ColumnDecoder`] can decode values of `ty` (used by `lint --db`).
pub fn decodable(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Enum(_) => true,
        Kind::Domain(base) => decodable(base),
        Kind::Array(elem) => decodable(elem),
        _ => scalar(ty).is_some(),
    }
}

type Decoder = fn(&Type, &[u8]) -> Result<Value, BoxError>;

fn scalar(ty: &Type) -> Option<Decoder> {
    Some(match *ty {
        Type::BOOL => |t, r| Ok(Value::Bool(bool::from_sql(t, r)?)),
        Type::INT2 => |t, r| Ok(Value::from(i16::from_sql(t, r)?)),
        Type::INT4 => |t, r| Ok(Value::from(i32::from_sql(t, r)?)),
        Type::INT8 => |t, r| Ok(big_int(i64::from_sql(t, r)?)),
        Type::CHAR => |t, r| {
            Ok(Value::String(
                ((i8::from_sql(t, r)? as u8) as char).to_string(),
            ))
        },
        Type::OID
        | Type::REGCLASS
        | Type::REGPROC
        | Type::REGPROCEDURE
        | Type::REGTYPE
        | Type::REGNAMESPACE
        | Type::REGROLE
        | Type::REGOPER
        | Type::REGOPERATOR
        | Type::REGCONFIG
        | Type::REGDICTIONARY
        | Type::XID
        | Type::CID => |_, r| Ok(Value::from(u32::from_be_bytes(fixed(r)?))),
        Type::XID8 => |_, r| Ok(big_int(u64::from_be_bytes(fixed(r)?) as i64)),
        Type::PG_LSN => |_, r| {
            let v = u64::from_be_bytes(fixed(r)?);
            Ok(Value::String(format!(
                "{:X}/{:X}",
                v >> 32,
                v & 0xffff_ffff
            )))
        },
        Type::FLOAT4 => |t, r| Ok(float(f32::from_sql(t, r)? as f64)),
        Type::FLOAT8 => |t, r| Ok(float(f64::from_sql(t, r)?)),
        Type::NUMERIC => |_, r| Ok(Value::String(numeric(r)?)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::XML => {
            |_, r| Ok(Value::String(std::str::from_utf8(r)?.to_string()))
        }
        Type::JSON | Type::JSONB => |t, r| Value::from_sql(t, r),
        Type::BYTEA => |_, r| {
            let mut s = String::with_capacity(2 + r.len() * 2);
            s.push_str("\\x");
            for b in r {
                let _ = write!(s, "{b:02x}");
            }
            Ok(Value::String(s))
        },
        Type::TIMESTAMPTZ => |t, r| {
            let v = chrono::DateTime::<chrono::Utc>::from_sql(t, r)?;
            Ok(Value::String(
                v.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ))
        },
        Type::TIMESTAMP => |t, r| {
            Ok(Value::String(
                chrono::NaiveDateTime::from_sql(t, r)?.to_string(),
            ))
        },
        Type::DATE => |t, r| {
            Ok(Value::String(
                chrono::NaiveDate::from_sql(t, r)?.to_string(),
            ))
        },
        Type::TIME => |t, r| {
            Ok(Value::String(
                chrono::NaiveTime::from_sql(t, r)?.to_string(),
            ))
        },
        Type::INTERVAL => |_, r| Ok(Value::String(interval(r)?)),
        Type::UUID => |t, r| Ok(Value::String(uuid::Uuid::from_sql(t, r)?.to_string())),
        Type::INET | Type::CIDR => |_, r| Ok(Value::String(inet(r)?)),
        _ => return None,
    })
}

fn decode(ty: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    match ty.kind() {
        // An enum's binary form is its label.
        Kind::Enum(_) => Ok(Value::String(std::str::from_utf8(raw)?.to_string())),
        Kind::Domain(base) => decode(base, raw),
        Kind::Array(elem) => array(elem, raw),
        _ => match scalar(ty) {
            Some(f) => f(ty, raw),
            None => Err(format!(
                "cannot turn a value of type {} into JSON; cast the column to ::text in the tool's SQL",
                ty.name()
            )
            .into()),
        },
    }
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], BoxError> {
    raw.try_into().map_err(|_| "invalid message length".into())
}

fn big_int(v: i64) -> Value {
    if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&v) {
        Value::from(v)
    } else {
        // JSON readers that use doubles would round it.
        Value::String(v.to_string())
    }
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
}

fn array(elem: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    use postgres_protocol::types::array_from_sql;
    let arr = array_from_sql(raw)?;
    let mut values = Vec::new();
    let mut it = arr.values();
    while let Some(v) = fallible_iterator::FallibleIterator::next(&mut it)? {
        values.push(match v {
            None => Value::Null,
            Some(bytes) => decode(elem, bytes)?,
        });
    }
    let mut dims = Vec::new();
    let mut d = arr.dimensions();
    while let Some(dim) = fallible_iterator::FallibleIterator::next(&mut d)? {
        dims.push(dim.len as usize);
    }
    // Multi-dimensional arrays nest, innermost dimension last.
    for &len in dims.iter().skip(1).rev() {
        if len == 0 {
            break;
        }
        values = values
            .chunks(len)
            .map(|c| Value::Array(c.to_vec()))
            .collect();
    }
    Ok(Value::Array(values))
}

/// NUMERIC's binary form → its exact decimal text (NaN and ±Infinity included).
fn numeric(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<i16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "short numeric".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i32;
    let sign = word(2)? as u16;
    let dscale = word(3)? as u16 as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: base-10000 groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for g in 0..=weight {
            let d = digits.get(g as usize).copied().unwrap_or(0);
            if g == 0 {
                let _ = write!(out, "{d}");
            } else {
                let _ = write!(out, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut g = weight + 1;
        while frac.len() < dscale {
            let d = if g < 0 {
                0
            } else {
                digits.get(g as usize).copied().unwrap_or(0)
            };
            let _ = write!(frac, "{d:04}");
            g += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

/// INTERVAL's binary form → PostgreSQL's own text style, e.g. `1 year 2 mons 3 days 04:05:06.5`.
fn interval(raw: &[u8]) -> Result<String, BoxError> {
    let b: [u8; 16] = fixed(raw)?;
    let micros = i64::from_be_bytes(b[0..8].try_into()?);
    let days = i32::from_be_bytes(b[8..12].try_into()?);
    let months = i32::from_be_bytes(b[12..16].try_into()?);
    let mut parts = Vec::new();
    let plural =
        |n: i64, one: &str, many: &str| format!("{n} {}", if n.abs() == 1 { one } else { many });
    let (years, mons) = (months / 12, months % 12);
    if years != 0 {
        parts.push(plural(years.into(), "year", "years"));
    }
    if mons != 0 {
        parts.push(plural(mons.into(), "mon", "mons"));
    }
    if days != 0 {
        parts.push(plural(days.into(), "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let neg = micros < 0;
        let m = micros.unsigned_abs();
        let (h, rest) = (m / 3_600_000_000, m % 3_600_000_000);
        let (min, rest) = (rest / 60_000_000, rest % 60_000_000);
        let (s, us) = (rest / 1_000_000, rest % 1_000_000);
        let mut t = format!("{}{h:02}:{min:02}:{s:02}", if neg { "-" } else { "" });
        if us != 0 {
            let frac = format!("{us:06}");
            let _ = write!(t, ".{}", frac.trim_end_matches('0'));
        }
        parts.push(t);
    }
    Ok(parts.join(" "))
}

fn inet(raw: &[u8]) -> Result<String, BoxError> {
    let (family, bits, is_cidr, len) = (raw.first(), raw.get(1), raw.get(2), raw.get(3));
    let (Some(&family), Some(&bits), Some(&is_cidr), Some(&len)) = (family, bits, is_cidr, len)
    else {
        return Err("short inet".into());
    };
    let addr = &raw[4..];
    if addr.len() != len as usize {
        return Err("invalid inet length".into());
    }
    let (ip, full): (std::net::IpAddr, u8) = match family {
        2 => (
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(addr)?).into(),
            32,
        ),
        _ => (
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr)?).into(),
            128,
        ),
    };
    Ok(if bits == full && is_cidr == 0 {
        ip.to_string()
    } else {
        format!("{ip}/{bits}")
    })
}

/// A JSON value sent as a text-format bind parameter.
#[derive(Debug)]
pub struct Bind<'a>(pub &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self.0 {
            Value::Null => return Ok(IsNull::Yes),
            // A json/jsonb parameter takes JSON text, whatever the value's JSON type.
            v if matches!(*ty, Type::JSON | Type::JSONB) => {
                out.extend_from_slice(v.to_string().as_bytes())
            }
            Value::String(s) => out.extend_from_slice(s.as_bytes()),
            Value::Array(items) => out.extend_from_slice(array_literal(items).as_bytes()),
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> postgres_types::Format {
        postgres_types::Format::Text
    }

    to_sql_checked!();
}

/// A JSON array as a PostgreSQL array literal: `{"a","b\"c",NULL,{1,2}}`.
fn array_literal(items: &[Value]) -> String {
    let mut s = String::from("{");
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match v {
            Value::Null => s.push_str("NULL"),
            Value::Array(inner) => s.push_str(&array_literal(inner)),
            Value::String(text) => quote_element(&mut s, text),
            Value::Object(_) => quote_element(&mut s, &v.to_string()),
            other => s.push_str(&other.to_string()),
        }
    }
    s.push('}');
    s
}

fn quote_element(s: &mut String, text: &str) {
    s.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(words: &[i16]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn numeric_decodes_exactly() {
        // 12345678.9012 = groups [1234, 5678, 9012], weight 1, dscale 4
        let raw = numeric_bytes(&[3, 1, 0, 4, 1234, 5678, 9012]);
        assert_eq!(numeric(&raw).unwrap(), "12345678.9012");
        // -0.00012 with dscale 5 = groups [0001, 2000] from weight -1
        let raw = numeric_bytes(&[2, -1, 0x4000, 5, 1, 2000]);
        assert_eq!(numeric(&raw).unwrap(), "-0.00012");
        assert_eq!(
            numeric(&numeric_bytes(&[0, 0, 0xC000u16 as i16, 0])).unwrap(),
            "NaN"
        );
        assert_eq!(numeric(&numeric_bytes(&[0, 0, 0, 2])).unwrap(), "0.00");
        // 1.50 keeps its scale
        assert_eq!(
            numeric(&numeric_bytes(&[2, 0, 0, 2, 1, 5000])).unwrap(),
            "1.50"
        );
    }

    #[test]
    fn intervals_read_like_postgres() {
        let raw = |us: i64, d: i32, m: i32| {
            [
                us.to_be_bytes().to_vec(),
                d.to_be_bytes().to_vec(),
                m.to_be_bytes().to_vec(),
            ]
            .concat()
        };
        assert_eq!(
            interval(&raw(3_723_500_000, 1, 14)).unwrap(),
            "1 year 2 mons 1 day 01:02:03.5"
        );
        assert_eq!(interval(&raw(0, 0, 0)).unwrap(), "00:00:00");
        assert_eq!(interval(&raw(-1_000_000, 0, 0)).unwrap(), "-00:00:01");
    }

    #[test]
    fn big_ints_become_strings() {
        assert_eq!(big_int(42), Value::from(42));
        assert_eq!(
            big_int(9_007_199_254_740_993),
            Value::from("9007199254740993")
        );
    }

    #[test]
    fn arrays_become_literals_with_escaping() {
        let v = serde_json::json!(["a", "b\"c", null, ["x\\y"], 3]);
        assert_eq!(
            array_literal(v.as_array().unwrap()),
            r#"{"a","b\"c",NULL,{"x\\y"},3}"#
        );
    }
}
